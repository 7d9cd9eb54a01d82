from modelsurgeon.cli.main import entry

entry()
