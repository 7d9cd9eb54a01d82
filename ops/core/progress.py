"""Progress events: how a long operation tells whoever watches what it is doing.

Ops take a ``progress`` argument and call three methods on it; they never print. The CLI passes a
Rich bar on stderr (``cli/_output.py``); a library caller passes nothing (``SILENT``) or its own
object with these methods (a logger, a notebook widget)::

    progress.start("prune", total=n_bytes, unit="bytes")   # a phase begins (replaces the previous one)
    progress.advance(nbytes)                                # work done in that phase
    progress.note("warning: ...")                           # a line for the user (warnings start so)

``unit`` names what ``total`` counts (``bytes``, ``tensors``, ``layers``, ``runs``): the ETA is only as
honest as the unit is even, so ops count the unit that dominates their time (tensors for quantize, whose
per-tensor work dwarfs copying bytes; decoder layers for the calibrated methods and ``eval``; training
runs for intrinsic-dim). ``advance`` may take fractions of a unit (an epoch of a run).

An object may also have ``update(description=None, total=None)``: the phase goes on with a new label or a
new total (a search that learns how many runs it needs). It is optional: ops call it through
``update(progress, ...)``, which skips an object without it.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, description: str, total: float | None = None, unit: str = "items") -> None: ...

    def advance(self, n: float = 1) -> None: ...

    def note(self, message: str) -> None: ...


class Silent:
    """Progress that goes nowhere (the default for library callers); notes are kept for the result."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def start(self, description: str, total: float | None = None, unit: str = "items") -> None:
        pass

    def advance(self, n: float = 1) -> None:
        pass

    def note(self, message: str) -> None:
        self.notes.append(message)

    def update(self, description: str | None = None, total: float | None = None) -> None:
        pass


SILENT = Silent()


def silent() -> Silent:
    """A fresh silent progress (its ``notes`` start empty)."""
    return Silent()


def update(progress, description: str | None = None, total: float | None = None) -> None:
    """Give the running phase a new description or total without restarting it (what is done stays done);
    nothing for a progress object without ``update``."""
    fn = getattr(progress, "update", None)
    if fn is not None:
        fn(description=description, total=total)
