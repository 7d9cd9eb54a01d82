"""`surgeon`: wires the commands together and turns exceptions into one-line errors and exit codes.

Exit codes: 0 ok, 1 a failure the user can fix (or a failed --require), 2 bad usage,
130 interrupted. A traceback appears only with SURGEON_DEBUG=1, or for a bug.
"""

from __future__ import annotations

import os
import sys

import typer

from . import dequantize, expand, intrinsic_dim, merge, prune, quantize, report

app = typer.Typer(
    name="surgeon",
    help="Streaming model surgery on safetensors checkpoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("report", epilog=report.EPILOG)(report.report)
app.command("prune", epilog=prune.EPILOG)(prune.prune)
app.command("quantize", epilog=quantize.EPILOG)(quantize.quantize)
app.command("merge", epilog=merge.EPILOG)(merge.merge)
app.command("dequantize", epilog=dequantize.EPILOG)(dequantize.dequantize)
app.command("intrinsic-dim", epilog=intrinsic_dim.EPILOG)(intrinsic_dim.intrinsic_dim)
app.command("expand-subspace", epilog=expand.EPILOG)(expand.expand_subspace)


def _print_version(value: bool) -> None:
    if value:
        from modelsurgeon import __version__

        print(f"modelsurgeon {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True, callback=_print_version),
) -> None:
    """Streaming model surgery on safetensors checkpoints."""


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (tests call this directly)."""
    from modelsurgeon.ops.core.errors import SurgeonError

    debug = os.environ.get("SURGEON_DEBUG", "") not in ("", "0")
    try:
        rv = app(args=argv, prog_name="surgeon", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except SurgeonError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    except BrokenPipeError:
        sys.stderr.close()  # `surgeon report m | head`: the reader left, nothing to say
        return 1
    except Exception as e:
        # Typer's usage errors (unknown option, bad value) carry an exit code and a message;
        # print them on one line instead of Rich's boxed panel.
        if hasattr(e, "format_message") and isinstance(getattr(e, "exit_code", None), int):
            ctx = getattr(e, "ctx", None)
            where = ctx.command_path if ctx is not None else "surgeon"
            print(f"error: {e.format_message()} (see '{where} --help')", file=sys.stderr)
            return e.exit_code
        if type(e).__name__ == "Abort":
            print("aborted", file=sys.stderr)
            return 130
        raise


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
