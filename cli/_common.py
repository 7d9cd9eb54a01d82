"""What every command shares: output streams, the options they all take, progress, JSON.

Nothing here imports torch, so `surgeon --help` stays fast; commands import ops/ inside their
function bodies, after their flags are checked.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from contextlib import contextmanager
from typing import Annotated, Iterator

import typer

# --- options shared by commands (one definition, so help texts and defaults cannot drift)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of a table.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or notes on stderr.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace the output if it exists.")]
RevisionOpt = Annotated[str | None, typer.Option("--revision", help="Hub revision (branch, tag or commit) of MODEL.")]
MaxShardOpt = Annotated[
    str, typer.Option("--max-shard-size", help="Largest output shard, e.g. 5GB, 500MB, 2GiB.")
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="Where the math runs: auto (CUDA when present), cpu, cuda, cuda:N.")
]
OutputOpt = Annotated[str, typer.Option("--output", "-o", help="Output folder (written atomically).")]
DEFAULT_MAX_SHARD = "5GB"


def command_line() -> str:
    """The command as the user typed it, for provenance."""
    return " ".join(["surgeon", *map(shlex.quote, sys.argv[1:])])


def err_console():
    from rich.console import Console

    return Console(stderr=True)


def out_console():
    """stdout; when it is a pipe or a file, wide enough that tables are not folded."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    return console


def note(msg: str, quiet: bool = False) -> None:
    """A line of information or a warning for the user, on stderr."""
    if not quiet:
        print(msg, file=sys.stderr)


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def emit_json(obj) -> None:
    """Exactly one JSON object on stdout."""
    sys.stdout.write(json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()


def _jsonable(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


@contextmanager
def progress(total: float, description: str, quiet: bool = False, unit: str = "bytes") -> Iterator:
    """A Rich progress bar on stderr; yields ``advance(n)``. Silent with --quiet."""
    if quiet:
        yield lambda n=1, description=None: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    cols = [TextColumn("{task.description}"), BarColumn()]
    cols += [DownloadColumn(), TransferSpeedColumn()] if unit == "bytes" else [MofNCompleteColumn()]
    cols += [TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*cols, console=err_console(), transient=True) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: float = 1, description: str | None = None) -> None:
            bar.update(task, advance=n, **({"description": description} if description else {}))

        yield advance


def _scaled(n: int | float, units: tuple[str, ...], sep: str) -> str:
    """n in steps of 1000 with the first unit that keeps it under 1000 (whole numbers unscaled)."""
    n = float(n)
    for i, unit in enumerate(units):
        if abs(n) < 1000 or i == len(units) - 1:
            return f"{n:.0f}{sep}{unit}" if i == 0 else f"{n:.2f}{sep}{unit}"
        n /= 1000
    raise AssertionError("unreachable")


def fmt_count(n: int | float) -> str:
    return _scaled(n, ("", "K", "M", "B", "T", "P"), "")


def fmt_bytes(n: int | float) -> str:
    return _scaled(n, ("B", "KB", "MB", "GB", "TB", "PB"), " ")


def fmt_float(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"
