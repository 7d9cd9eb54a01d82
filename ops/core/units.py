"""How a number reads to a person, one format per quantity, in every table, summary line, note and error
message (``--json`` keeps the raw numbers: bytes, fractions, floats).

- sizes: decimal units with a space, three significant digits (``512 B``, ``1.23 KB``, ``45.6 MB``,
  ``789 GB``), the units ``--max-shard-size 5GB`` and the Hugging Face Hub use;
- counts: the same steps without a unit (``22.7M`` parameters);
- percentages: two decimals, never ``0.00%`` or ``100.00%`` for a value that is not exactly 0 or 1;
- errors: ``rel L2`` (|a - b| / |a|, the relative error in the L2 (Frobenius) norm, whatever the command) with
  three significant digits, and SQNR in dB with four;
- seconds: one decimal.

The CLI's output module re-exports these; ops use them in their messages. Imports nothing heavy.
"""

from __future__ import annotations

SIZE_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")
COUNT_UNITS = ("", "K", "M", "B", "T", "P")


def _scaled(n: int | float, units: tuple[str, ...], sep: str) -> str:
    """n in steps of 1000 with the first unit that keeps it under 1000; whole numbers in the first unit,
    three significant digits in the others."""
    n = float(n)
    for i, unit in enumerate(units):
        if i == 0 and abs(n) < 999.5:
            return f"{n:.0f}{sep}{unit}"
        if i > 0 and (abs(n) < 999.5 or i == len(units) - 1):
            digits = 2 if abs(n) < 9.995 else 1 if abs(n) < 99.95 else 0
            return f"{n:.{digits}f}{sep}{unit}"
        n /= 1000
    raise AssertionError("unreachable")


def fmt_bytes(n: int | float | None) -> str:
    """A size in bytes: ``1.23 GB``."""
    return "-" if n is None else _scaled(n, SIZE_UNITS, " ")


def fmt_count(n: int | float | None) -> str:
    """A count of parameters, values or tensors: ``22.7M``."""
    return "-" if n is None else _scaled(n, COUNT_UNITS, "")


def fmt_pct(v) -> str:
    """A fraction as a percentage with 2 decimals, everywhere; a value that is not exactly 0 or 1 never
    prints as 0.00% or 100.00% (it prints <0.01% or >99.99%)."""
    if v is None:
        return "-"
    if 0 < v < 0.00005:
        return "<0.01%"
    if 0.99995 <= v < 1:
        return ">99.99%"
    return f"{v:.2%}"


def fmt_float(v, digits: int = 4) -> str:
    """A plain number with ``digits`` significant digits (scientific notation outside 1e-3 .. 1e4)."""
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


REL_L2 = "rel L2"  # the name of the relative error wherever it is shown
REL_L2_DIGITS = 3


def fmt_rel_l2(v) -> str:
    """A relative L2 error |a - b| / |a|: ``0.0123``."""
    return fmt_float(v, REL_L2_DIGITS)


def fmt_sqnr(v) -> str:
    """A signal-to-quantization-noise ratio in dB, the number only (the caller writes ``SQNR {} dB``)."""
    return fmt_float(v, 4)


def fmt_seconds(v) -> str:
    """A duration: ``12.3 s``."""
    return "-" if v is None else f"{v:.1f} s"
