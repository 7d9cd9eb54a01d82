"""`surgeon`: wires the commands together and turns exceptions into one-line errors and exit codes.

Exit codes: 0 ok, 1 a failure the user can fix (or a failed --require), 2 bad usage,
130 interrupted (Ctrl-C), 143 SIGTERM, 129 SIGHUP. A traceback appears only with SURGEON_DEBUG=1, or for a bug.

Signals: ``entry`` installs its handlers before anything heavy is imported, so Ctrl-C, SIGTERM and SIGHUP
work from the first instant: while the imports run nothing can have been written, and the process exits
at once with one line. Once the commands are loaded, Ctrl-C raises KeyboardInterrupt and SIGTERM/SIGHUP
raise ``Interrupted``, which unwind like any error (an output's temporary folder is removed on the way)
before ``main`` prints one line and returns 128 + the signal. This module imports nothing heavy at its top.
"""

from __future__ import annotations

import os
import signal
import sys

_NAMES = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated (SIGTERM)", signal.SIGHUP: "hung up (SIGHUP)"}


def _exit_now(signum, frame) -> None:  # while starting up: nothing was written yet
    os.write(2, f"{_NAMES.get(signum, 'interrupted')}; nothing was written\n".encode())
    os._exit(128 + signum)


def _raise_interrupted(signum, frame) -> None:
    from modelsurgeon.ops.core.errors import Interrupted

    raise Interrupted(signum, _NAMES.get(signum, f"signal {signum}"))


def _app():
    import typer

    from . import dequantize, expand, intrinsic_dim, merge, prune, quantize, report, run

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
    app.command("run", epilog=run.EPILOG)(run.run)

    def _print_version(value: bool) -> None:
        if value:
            from modelsurgeon import __version__

            print(f"modelsurgeon {__version__}")
            raise typer.Exit(0)

    @app.callback()
    def _root(
        version: bool = typer.Option(
            False, "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
        ),
    ) -> None:
        """Streaming model surgery on safetensors checkpoints."""

    return app


_APP = None


def __getattr__(name: str):
    if name == "app":  # built on first use, so importing this module stays light
        global _APP
        if _APP is None:
            _APP = _app()
        return _APP
    raise AttributeError(name)


def _show_notes():
    """Print SurgeonNote warnings as one ``note:`` line each (other warnings as Python prints them)."""
    import warnings

    from modelsurgeon.ops.core.errors import SurgeonNote

    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, SurgeonNote):
            print(f"note: {message}", file=sys.stderr)
        else:
            original(message, category, filename, lineno, file, line)

    return original, show


def _written() -> str:
    """What an interrupted run has already put in place (normally nothing)."""
    output = sys.modules.get("modelsurgeon.ops.io.output")  # not imported: nothing can have been written
    done = [str(p) for p in output.COMMITTED] if output is not None else []
    return f"{', '.join(done)} had been written" if done else "nothing was written"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (tests call this directly)."""
    import warnings

    debug = os.environ.get("SURGEON_DEBUG", "") not in ("", "0")
    handlers = {}
    try:
        app = __getattr__("app")  # the imports: under entry's handlers a signal still exits at once
        from modelsurgeon.ops.core.errors import Interrupted, SurgeonError, write_error

        if _in_main_thread():  # from here on a signal unwinds, removing any temporary output
            if signal.getsignal(signal.SIGINT) is _exit_now:
                handlers[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
            for sig in (signal.SIGTERM, signal.SIGHUP):
                handlers[sig] = signal.signal(sig, _raise_interrupted)
        if "modelsurgeon.ops.io.output" in sys.modules:
            sys.modules["modelsurgeon.ops.io.output"].COMMITTED.clear()
        original, show = _show_notes()
        warnings.showwarning = show
        try:
            rv = app(args=argv, prog_name="surgeon", standalone_mode=False)
            if rv == 130:  # typer turns a KeyboardInterrupt into a silent 130 (the output was cleaned up on the way)
                print(f"interrupted; {_written()}", file=sys.stderr)
            return rv if isinstance(rv, int) else 0
        except SurgeonError as e:
            if debug:
                raise
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
        except KeyboardInterrupt:
            print(f"interrupted; {_written()}", file=sys.stderr)
            return 130
        except Interrupted as e:
            print(f"{e.name}; {_written()}", file=sys.stderr)
            return 128 + e.signum
        except BrokenPipeError:
            sys.stderr.close()  # `surgeon report m | head`: the reader left, nothing to say
            return 1
        except OSError as e:  # a full disk or a read-only place that no output check caught first
            err = write_error(e, e.filename or "the output")
            if err is None or debug:
                raise
            print(f"error: {err}", file=sys.stderr)
            return 1
        except MemoryError:
            if debug:
                raise
            print("error: out of memory: the command needs more memory than this machine has free", file=sys.stderr)
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
                print(f"interrupted; {_written()}", file=sys.stderr)
                return 130
            raise
        finally:
            warnings.showwarning = original
    except KeyboardInterrupt:  # while loading the commands
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def entry() -> None:
    # First thing, before the commands (typer, rich, torch later) are imported: a signal now exits at once.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_now)
    rc = main()
    if rc in (128 + signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGHUP):
        # interrupted: a worker thread may still be inside a torch op (core.interrupt), and the interpreter's
        # shutdown would then abort the process; everything was cleaned up on the way here, so leave now
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":
    entry()
