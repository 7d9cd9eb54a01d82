"""The one output module: what a command prints and where.

- stdout carries the result and nothing else: a Rich table for people, or exactly one JSON object with
  ``--json`` (``render``);
- stderr carries progress (``RichProgress``, the CLI's side of ``ops.core.progress``), notes and
  warnings (``note``, ``warn``);
- numbers are formatted the same way in every command (``fmt_*``).

Nothing here imports torch, so ``surgeon --help`` stays fast.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


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


def render(result, as_json: bool, table: Callable[[dict], None]) -> None:
    """Print a command's result: one JSON object (``--json``), or its table. ``result`` is a dict or an
    object with ``to_dict()`` (every ops result)."""
    data = result.to_dict() if hasattr(result, "to_dict") else result
    if as_json:
        emit_json(data)
    else:
        table(data)


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


class RichProgress:
    """``ops.core.progress.Progress`` as a Rich bar on stderr; notes print above it. Silent with --quiet
    (warnings still print: they start with "warning")."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self._bar = None
        self._task = None
        self._unit = None

    def __enter__(self) -> RichProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None

    def start(self, description: str, total: float | None = None, unit: str = "items") -> None:
        if self.quiet:
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

        if self._bar is not None and unit == self._unit:  # a phase like the last one: the same bar, reset
            self._bar.reset(self._task, total=total, description=description)
            return
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
        self._unit = unit
        cols = [TextColumn("{task.description}"), BarColumn()]
        if unit == "bytes":
            cols += [DownloadColumn(), TransferSpeedColumn()]
        else:
            cols += [MofNCompleteColumn(), TextColumn(unit)]
        cols += [TimeElapsedColumn(), TimeRemainingColumn()]
        self._bar = Progress(*cols, console=err_console(), transient=True)
        self._bar.__enter__()
        self._task = self._bar.add_task(description, total=total)

    def advance(self, n: float = 1) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=n)

    def note(self, message: str) -> None:
        if self.quiet and not message.startswith("warning"):
            return
        if self._bar is not None:
            self._bar.console.print(message, highlight=False, markup=False, soft_wrap=True)
        else:
            print(message, file=sys.stderr)


def calibration_lines(c: dict) -> list[str]:
    """A calibrated method's plan in a few lines (prune, quantize and their --dry-run)."""
    cal, mem = c["calibration"], c["memory"]
    lines = [
        f"{c['method']}: {c['architecture']}, {c['layers']} layers x {c['linears_per_layer']} linears "
        f"({', '.join(c['linears'])}), one layer at a time on {c['device']}",
        f"calibration: {cal['samples']} x {cal['seqlen']} tokens from {cal['source']} (seed {cal['seed']})",
        f"memory: layer {fmt_bytes(mem['layer'])} + statistics {fmt_bytes(mem['statistics'])} + activations "
        f"{fmt_bytes(mem['activations'])} (on {c['activations_on']}) = {fmt_bytes(mem['total'])}",
    ]
    if c.get("owl"):
        ls = c["owl"]["layer_sparsity"]
        lines.append(f"owl: layer sparsities {min(ls):.3f} .. {max(ls):.3f}")
    return lines + [f"note: {n}" for n in c.get("notes", [])]
