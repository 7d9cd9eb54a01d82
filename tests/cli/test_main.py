"""The entry point: help is fast and imports no torch; version; python -m."""

from __future__ import annotations

import subprocess
import sys

from helpers import run


def test_help_lists_commands_without_importing_torch():
    code = (
        "import sys\n"
        "from modelsurgeon.cli.main import main\n"
        "rc = main(['--help'])\n"
        "assert rc == 0\n"
        "heavy = [m for m in ('torch', 'triton', 'transformers', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for cmd in ("report",):
        assert cmd in r.stdout


def test_every_command_help_is_light():
    from modelsurgeon.cli.main import app

    names = [c.name for c in app.registered_commands]
    code = (
        "import sys\n"
        "from modelsurgeon.cli.main import main\n"
        f"for n in {names!r}:\n"
        "    assert main([n, '--help']) == 0\n"
        "assert 'torch' not in sys.modules\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_python_m_and_version():
    r = subprocess.run([sys.executable, "-m", "modelsurgeon", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("modelsurgeon ")


def test_unknown_command(capsys):
    code, out, err = run(capsys, "transmogrify")
    assert code == 2 and "transmogrify" in err and len(err.strip().splitlines()) == 1
