"""docs/cli.md, the CLI reference, generated from the Typer app so it cannot drift from `--help`.

python -m modelsurgeon.cli._docs > docs/cli.md      # regenerate; tests/test_cli_docs.py checks it
"""

from __future__ import annotations

import textwrap


def _value(param) -> str:
    """How an option's value is written: its metavar in capitals (no value for a flag)."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    try:
        kind = param.bare_type()
    except Exception:  # another Typer's parameter objects: name the value plainly
        kind = "str"
    return {"int": "N", "float": "X"}.get(kind, "TEXT")


def _default(param) -> str:
    d = param.default
    if d is None or d is False or d == () or d == [] or getattr(param, "required", False):
        return ""
    if callable(d):
        return ""
    return f"`{d}`" if not isinstance(d, bool) else "on"


def _cell(text: str) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def command_markdown(name: str, command) -> str:
    args = [p for p in command.params if p.param_type_name == "argument"]
    opts = [p for p in command.params if p.param_type_name == "option"]
    usage = " ".join(
        ["surgeon", name, "[OPTIONS]"]
        + [(p.name.upper() if p.required else f"[{p.name.upper()}]") for p in args]
        + (["..."] if any(p.nargs == -1 for p in args) else [])
    )
    out = [f"## `surgeon {name}`", "", _cell(command.help), "", "```text", usage, "```", ""]
    if args:
        out += ["| argument | meaning |", "|---|---|"]
        out += [f"| `{p.name.upper()}` | {_cell(getattr(p, 'help', ''))} |" for p in args]
        out.append("")
    out += ["| option | meaning | default |", "|---|---|---|"]
    for p in opts:
        flags = ", ".join(f"`{o}{' ' + _value(p) if _value(p) else ''}`" for o in p.opts)
        extra = " (required)" if p.required else ""
        out.append(f"| {flags} | {_cell(p.help)}{extra} | {_default(p)} |")
    out.append("| `-h`, `--help` | Show the help and exit. | |")
    if command.epilog:
        out += ["", "```bash", textwrap.dedent(command.epilog.split("Examples:", 1)[-1]).strip("\n"), "```"]
    return "\n".join(out) + "\n"


def cli_markdown() -> str:
    import typer

    from .main import app

    group = typer.main.get_command(app)
    names = list(group.commands)
    head = [
        "# CLI reference",
        "",
        "Generated from the Typer app by `python -m modelsurgeon.cli._docs > docs/cli.md`; a test fails when it",
        "differs from `surgeon COMMAND --help`. The README explains each command; this page lists every option.",
        "",
        "```text",
        "surgeon [--version] [--install-completion] [--show-completion] COMMAND [OPTIONS] ...",
        "```",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    head += [f"| [`{n}`](#surgeon-{n}) | {_cell(group.commands[n].help)} |" for n in names]
    body = [command_markdown(n, group.commands[n]) for n in names]
    return "\n".join(head) + "\n\n" + "\n".join(body)


if __name__ == "__main__":
    print(cli_markdown(), end="")
