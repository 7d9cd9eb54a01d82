"""The one registry shape every family of algorithms uses (pruning criteria, quantization schemes, merge
methods, projections, tasks): a name -> entry dict that refuses duplicate names and, asked for an unknown
name, fails with the known ones and the closest match (STYLE §5)."""

from __future__ import annotations

import difflib
from typing import Generic, TypeVar

from .errors import SurgeonError, UsageError

T = TypeVar("T")


class Registry(dict, Generic[T]):
    def __init__(self, kind: str, hint: str = "", usage: bool = True):
        super().__init__()
        self.kind = kind  # "merge method", "quantization scheme", ...
        self.hint = hint  # where to see them all, e.g. "surgeon merge --list-methods"
        self._error = UsageError if usage else SurgeonError

    def add(self, name: str, entry: T) -> T:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self[name] = entry
        return entry

    def lookup(self, name: str) -> T:
        """The entry, or a one-line error listing the known names (exit 2 for a flag, 1 for a recipe)."""
        if name in self:
            return self[name]
        close = difflib.get_close_matches(name, list(self), n=1, cutoff=0.6)
        mean = f"did you mean {close[0]}? " if close else ""
        where = f" ({self.hint})" if self.hint else ""
        raise self._error(f"unknown {self.kind} {name!r}", f"{mean}known {self.kind}s: {', '.join(self)}{where}")
