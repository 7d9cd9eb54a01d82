"""Gates: ``--require 'KEY OP NUMBER'`` conditions on a command's numbers, so CI can reject a result.

    gate = parse_gate("sparsity>=0.5", known={"sparsity": "fraction of zeros"})
    ok, actual = gate.check({"sparsity": 0.49})          # (False, 0.49)

A value that is NaN (or missing) fails every gate, ``!=`` included: a gate passes only on a number that
satisfies it. Imports no torch.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .errors import UsageError

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
_GATE = re.compile(r"^\s*([a-z_0-9]+)\s*(>=|<=|==|!=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


def as_number(v) -> float:
    """A JSON-ready value as a float ('inf' and 'nan' strings included; anything else is NaN)."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return math.nan
    return math.nan


@dataclass(frozen=True)
class Gate:
    text: str
    key: str
    op: str
    value: float

    def check(self, values: Mapping) -> tuple[bool, float]:
        actual = as_number(values.get(self.key))
        if math.isnan(actual):
            return False, actual
        return OPS[self.op](actual, self.value), actual

    def to_dict(self, values: Mapping) -> dict:
        ok, actual = self.check(values)
        return {"require": self.text, "ok": ok, "value": actual}


def parse_gate(text: str, known: Mapping[str, str], flag: str = "--require", needs: Mapping[str, str] | None = None) -> Gate:
    """Read ``KEY OP NUMBER``; ``known`` maps every key to its meaning; ``needs`` maps keys that are
    known but unavailable in this run to the flag that makes them available."""
    m = _GATE.match(text) if isinstance(text, str) else None
    if not m:
        raise UsageError(
            f"cannot read {flag} '{text}'",
            "write KEY OP NUMBER, e.g. 'sparsity>=0.5'; OP is one of >= <= > < == !=",
        )
    key, op, value = m.group(1), m.group(2), float(m.group(3))
    if needs and key in needs:
        raise UsageError(f"{flag} '{text}' uses {key}, which needs {needs[key]}")
    if key not in known:
        import difflib

        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
        mean = f"did you mean {close[0]}? " if close else ""
        raise UsageError(f"{flag} '{text}': unknown key {key!r}", f"{mean}known keys: {', '.join(known)}")
    return Gate(text.strip(), key, op, value)
