"""The one output module: what a command prints and where.

- stdout carries the result and nothing else: a Rich table for people, or exactly one JSON object with
  ``--json`` (``render``);
- stderr carries progress (``RichProgress``, the CLI's side of ``ops.core.progress``), notes and
  warnings (``note``, ``warn``);
- numbers are formatted the same way in every command (``fmt_*``, from ``ops/core/units.py``, which the
  ops' own messages use too).

Nothing here imports torch, so ``surgeon --help`` stays fast.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable

from modelsurgeon.ops.core.units import (  # noqa: F401 (re-exported: one format per quantity, ops/core/units.py)
    REL_L2,
    fmt_bytes,
    fmt_count,
    fmt_float,
    fmt_pct,
    fmt_rel_l2,
    fmt_seconds,
    fmt_sqnr,
)


class Settings:
    """How tables print, set once by a command from its flags. ``wide``: every column and whole names,
    whatever the width. ``console``: a console to print to instead of stdout's (the width tests)."""

    wide: bool = False
    top: int | None = None  # prune, quantize: list only the N largest tensors in the table
    console = None

    def reset(self) -> None:
        """Back to the defaults (main() calls it before each command; the console override stays)."""
        self.wide, self.top = False, None


settings = Settings()

MIN_NAME = 24  # narrowest tensor-name column before numeric columns are dropped
PIPE_WIDTH = 200  # tables piped to a file or another program: whole names, columns never dropped


def err_console():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True, highlight=False)


def out_console():
    """stdout's console (or the one ``settings.console`` names). A table fits the width of a terminal;
    piped, it keeps whole names (``COLUMNS=N`` fits it to N columns anyway)."""
    import os

    from rich.console import Console

    if settings.console is not None:
        return settings.console
    console = Console(highlight=False)
    if not console.is_terminal:
        columns = os.environ.get("COLUMNS", "")
        console = Console(width=int(columns) if columns.isdigit() else PIPE_WIDTH, highlight=False)
    return console


def _fit_width(console) -> int | None:
    """The width a table must fit, or None when it prints whole (--wide, or piped without COLUMNS)."""
    import os

    if settings.wide:
        return None
    if settings.console is None and not console.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
        return None
    return console.width


def status(ok: bool | None, yes: str = "ok", no: str = "FAILED"):
    """ok in green, FAILED in red on a terminal; plain text when piped or with NO_COLOR."""
    from rich.text import Text

    if ok is None:
        return Text("-")
    return Text(yes, style="green") if ok else Text(no, style="bold red")


def render(result, as_json: bool, table: Callable[[dict], None]) -> None:
    """Print a command's result: one JSON object (``--json``), or its table. ``result`` is a dict or an
    object with ``to_dict()`` (every ops result)."""
    data = result.to_dict() if hasattr(result, "to_dict") else result
    if as_json:
        emit_json(data)
    else:
        table(data)


def note(msg: str, quiet: bool = False) -> None:
    """A line of information or a warning for the user, on stderr (a warning's prefix in yellow on a terminal)."""
    if msg.startswith("warning:"):
        warn(msg[len("warning:") :].lstrip())
    elif not quiet:
        print(msg, file=sys.stderr)


def warn(msg: str) -> None:
    """``warning: msg`` on stderr, whatever --quiet says."""
    err_console().print(_stderr_line("warning:", "yellow", msg))


def error_line(msg: str) -> None:
    """``error: msg`` on stderr (the prefix red on a terminal): how main() reports every failure."""
    err_console().print(_stderr_line("error:", "bold red", msg))


def _stderr_line(prefix: str, style: str, msg: str):
    from rich.text import Text

    return Text.assemble((prefix, style), " ", msg)


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


def _bars_off(quiet: bool) -> bool:
    """No bar with --quiet, nor when stderr is not a terminal (a log file gets no bar and no blank line)."""
    return quiet or not err_console().is_terminal


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
        if _bars_off(self.quiet):
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

    def update(self, description: str | None = None, total: float | None = None) -> None:
        """The running phase with a new label or total; what is done (and so the speed) stays."""
        if self._bar is not None:
            changes = {k: v for k, v in (("description", description), ("total", total)) if v is not None}
            self._bar.update(self._task, **changes)

    def note(self, message: str) -> None:
        if self.quiet and not message.startswith("warning"):
            return
        if message.startswith("warning:"):
            line = _stderr_line("warning:", "yellow", message[len("warning:") :].lstrip())
            (self._bar.console if self._bar is not None else err_console()).print(line)
        elif self._bar is not None:
            self._bar.console.print(message, highlight=False, markup=False, emoji=False, soft_wrap=True)
        else:
            print(message, file=sys.stderr)


# --------------------------------------------------------------------------------------------
# tables that fit: the name column is never dropped or wrapped; names shorten in the middle; numeric
# columns drop first, in the order each command states; --wide (or a pipe) prints everything


class Col:
    """A table column. ``drop``: 0 = always shown; otherwise columns go highest ``drop`` first when the
    names would get narrower than MIN_NAME."""

    def __init__(self, header: str, justify: str = "right", drop: int = 0):
        self.header, self.justify, self.drop = header, justify, drop


def top_rows(rows: list[dict], key: str = "numel") -> list[dict]:
    """The table's rows: all, or with ``--top N`` the N largest (by ``key``), largest first."""
    if not settings.top:
        return rows
    return sorted(rows, key=lambda r: -(r.get(key) or math.prod(r.get("shape") or [0])))[: settings.top]


def top_title(title: str, shown: int, total: int) -> str:
    return title + (f"  (top {shown} of {total} by size)" if settings.top and shown < total else "")


def shorten_middle(name: str, width: int) -> str:
    """``name`` in at most ``width`` characters, cut in the middle and marked with "…": whole dotted parts
    go first (the leading prefix, then those after the layer index), so the layer index and the leaf stay:
    ``model.layers.12.self_attn.q_proj.weight`` -> ``…layers.12.…q_proj.weight``."""
    if len(name) <= width:
        return name
    parts = name.split(".")
    last = len(parts) - 1
    index = next((i for i, p in enumerate(parts) if p.isdigit()), None)
    # the parts to drop, in order: the prefix before the layer's container, the parts between the layer index
    # and the leaf's owner, then the container; the index and the last two parts stay
    if index is None:
        order = list(range(0, last - 1))
    else:
        order = list(range(0, index - 1)) + list(range(index + 1, last - 1)) + [index - 1]
    order = list(dict.fromkeys(i for i in order if 0 <= i < last - 1 and i != index))
    dropped: set[int] = set()

    def joined() -> str:
        out: list[str] = []
        for k, p in enumerate(parts):
            if k not in dropped:
                out.append(p)
            elif not out or out[-1] != "…":
                out.append("…")
        return ".".join(out).replace("….", "…")

    for k in order:
        dropped.add(k)
        text = joined()
        if len(text) <= width:
            return text
    # still too long (long parts): keep a third from the start and the rest from the end, where the leaf is
    if width <= 1:
        return "…"[:width]
    head = (width - 1) // 3
    tail = width - 1 - head
    return name[:head] + "…" + name[len(name) - tail :]


def shorten_path(name: str, width: int) -> str:
    """A model path or Hub id in at most ``width`` characters: the leading folders go first
    (``…/models/llama-3-8b``), so the last part, the model's own name, stays whole as long as it fits (and is
    cut in its middle when it does not)."""
    if len(name) <= width:
        return name
    parts = name.split("/")
    kept = parts[-1]
    if len(parts) == 1 or width < 8:
        return shorten_middle(name, width)
    if len(kept) + 2 > width:
        return "…/" + shorten_middle(kept, width - 2)
    for p in reversed(parts[1:-1]):
        if len(p) + 1 + len(kept) + 2 > width:
            break
        kept = f"{p}/{kept}"
    return "…/" + kept


def _table_width(cols: list[Col], widths: list[int]) -> int:
    """What Rich's SIMPLE_HEAD table with pad_edge=False needs: the cells, one space of padding either side
    between columns, a divider between columns and an edge on either side."""
    n = len(widths)
    return sum(widths) + 2 * (n - 1) + (n - 1) + 2 if n else 0


def fit_columns(
    cols: list[Col], rows: list[list[str]], width: int | None, shorten: Callable[[str, int], str] = shorten_middle
) -> tuple[list[int], list[list[str]]]:
    """Which columns to show (their indices) and the rows with names shortened, so the table fits in ``width``
    (None: everything, whole). The name is column 0."""
    shown = list(range(len(cols)))
    if width is None or not rows:
        return shown, rows

    def natural(i: int) -> int:
        return max([len(cols[i].header)] + [len(str(r[i])) for r in rows])

    drop_order = sorted((i for i, c in enumerate(cols) if c.drop), key=lambda i: -cols[i].drop)
    names = [str(r[0]) for r in rows]
    longest = natural(0)
    while True:
        others = [natural(i) for i in shown[1:]]
        room = max(width - _table_width(cols, [0, *others]), len(cols[0].header), 8)
        short = names if room >= longest else [shorten(n, room) for n in names]
        # enough room, and no two names shortened alike (else the rows could not be told apart)
        if (room >= min(longest, MIN_NAME) and len(set(short)) == len(set(names))) or not drop_order:
            break
        shown.remove(drop_order.pop(0))
    return shown, [[n, *r[1:]] for n, r in zip(short, rows)]


def print_table(
    cols: list[Col],
    rows: list[list],
    title: str | None = None,
    console=None,
    legend: str | None = None,
    shorten: Callable[[str, int], str] = shorten_middle,
) -> None:
    """A table of one row per tensor (the name first; ``shorten=shorten_path`` for model paths) that fits the
    terminal: see ``fit_columns``. Cells are strings or Rich Text (coloured status)."""
    from rich import box
    from rich.table import Table

    console = console or out_console()
    width = _fit_width(console)
    plain = [[c.plain if hasattr(c, "plain") else str(c) for c in r] for r in rows]
    shown, fitted = fit_columns(cols, plain, width, shorten)
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, title_style="")
    for i in shown:
        t.add_column(cols[i].header, justify=cols[i].justify, no_wrap=True, overflow="ellipsis")
    for raw, row in zip(rows, fitted):
        t.add_row(row[0], *(raw[i] if hasattr(raw[i], "plain") else row[i] for i in shown[1:]))
    natural = _table_width(cols, [max([len(cols[i].header)] + [len(r[i]) for r in fitted]) for i in shown])
    if width is None and natural > console.width:  # whole: as wide as it takes (Rich clamps print(width=) to the console's)
        saved = console.width
        console.width = natural
        try:
            console.print(t)
        finally:
            console.width = saved
    else:
        console.print(t)
    hidden = [cols[i].header for i in range(len(cols)) if i not in shown]
    if hidden:
        console.print(f"(not shown at this width: {', '.join(hidden)}; --wide shows every column)", style="dim")
    if legend:
        console.print(legend, style="dim", highlight=False)


def print_lines(lines: list, console=None) -> None:
    """Summary lines under a table: plain text (or Rich Text), never folded, never read as markup."""
    console = console or out_console()
    for line in lines:
        console.print(line, highlight=False, markup=False, emoji=False, soft_wrap=True)


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
        lines.append(f"owl: layer sparsities {fmt_pct(min(ls))} .. {fmt_pct(max(ls))}")
    return lines + [f"note: {n}" for n in c.get("notes", [])]
