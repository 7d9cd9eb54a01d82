"""User regular expressions that cannot hang: every pattern a user (or a file) gives is matched here.

    rx = UserPattern(r"layers\\.(0|1)\\.", "--include")   # UsageError naming --include if it does not compile
    rx.search("model.layers.0.mlp.up_proj.weight")     # a match or None, within a time budget

Python's ``re`` backtracks without a bound: ``(a|aa)+$`` against a long tensor name runs for minutes. The
patterns here compile with the ``regex`` package (mrab-regex, which transformers depends on as well), whose
syntax is a superset of ``re``'s (lookarounds included, which mergekit- and llm-compressor-style patterns
such as ``^(?!.*lm_head)`` need, and which a linear-time engine like RE2 lacks), and every match runs with
its ``timeout``. A pattern has ``BUDGET`` seconds for all of its matches together; past it the command
stops with one line that names the pattern and the flag. Imports no torch.
"""

from __future__ import annotations

import time

from .errors import SurgeonError, UsageError

BUDGET = 2.0  # seconds one pattern may spend matching, summed over every name it is tried on


def _engine():
    import regex

    return regex


def check_pattern(pattern, where: str) -> str:
    """The pattern if it compiles, else a usage error naming ``where``."""
    UserPattern(pattern, where)
    return pattern


class UserPattern:
    """A compiled user pattern with a time budget; ``search``/``match``/``fullmatch`` as in ``re``."""

    def __init__(self, pattern, where: str, budget: float = BUDGET, usage: bool = True):
        rx = _engine()
        self._error = UsageError if usage else SurgeonError  # a flag (exit 2), or a file's contents (exit 1)
        if not isinstance(pattern, str):
            raise self._error(f"{where} must be a regular expression string, got {pattern!r}")
        try:
            self._rx = rx.compile(pattern)
        except (rx.error, ValueError, TypeError, OverflowError, RecursionError) as e:
            raise self._error(f"{where} {pattern!r} is not a valid regular expression: {e}") from None
        self.pattern, self.where, self._left = pattern, where, float(budget)

    def _run(self, method: str, text: str):
        if self._left <= 0:
            self._too_slow(text)
        t0 = time.perf_counter()
        try:
            return getattr(self._rx, method)(text, timeout=self._left)
        except TimeoutError:
            self._too_slow(text)
        finally:
            self._left -= time.perf_counter() - t0

    def _too_slow(self, text: str):
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise self._error(
            f"{self.where} {self.pattern!r} takes too long to match (over {BUDGET:g} s, on {shown!r}): "
            "it backtracks catastrophically",
            "simplify it, e.g. (a+)+ -> a+, (a|aa)+ -> a+",
        )

    def search(self, text: str):
        return self._run("search", text)

    def match(self, text: str):
        return self._run("match", text)

    def fullmatch(self, text: str):
        return self._run("fullmatch", text)

    def __repr__(self) -> str:
        return f"UserPattern({self.pattern!r}, {self.where!r})"
