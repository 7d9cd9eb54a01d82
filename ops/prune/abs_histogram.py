"""Histogram of ranking keys over a key window: the statistic a streaming radix selection needs.

    hist = abs_histogram(x, lo, shift, nbins)

``hist[j]`` counts the elements whose key k (``ops.keys.abs_key(x)``, or the given ``keys``) lies in
[lo + j·2^shift, lo + (j+1)·2^shift), for j < nbins; keys outside the window are not counted.
``nbins·2^shift`` must be a power of two. int64 counts on x's device.

``abs_histogram_torch`` is the reference (the spec, and the oracle of the tests). On the CPU the op
takes faster routes with the same result (tested against the reference): a 16-bit float has only 2^15
magnitudes, so its histogram is a bincount of its bit patterns, mapped onto the window afterwards;
a float32's high 16 bits (and, inside one 2^16 bucket, its low 16 bits) are such patterns too.
``kernels/abs_histogram.py`` is the Triton kernel with the same contract.
"""

from __future__ import annotations

import functools
import sys

import torch

from .keys import NAN_KEY, abs_key

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_LITTLE = sys.byteorder == "little"


def check_window(lo: int, shift: int, nbins: int) -> int:
    """Validate the window; return log2 of its span."""
    span = nbins << shift
    if nbins < 1 or shift < 0 or span & (span - 1):
        raise ValueError(f"nbins * 2^shift must be a power of two (nbins={nbins}, shift={shift})")
    if not 0 <= lo < (1 << 31):
        raise ValueError(f"lo={lo} is not a key")
    return span.bit_length() - 1


def abs_histogram_torch(x: torch.Tensor, lo: int, shift: int, nbins: int, keys: torch.Tensor | None = None) -> torch.Tensor:
    span_bits = check_window(lo, shift, nbins)
    k = (abs_key(x) if keys is None else keys).reshape(-1)
    rel = k - lo  # no overflow: both in [0, 2^31)
    # negative rel shifts to -1 and rel >= span shifts above 0: one test for both ends
    bins = rel[(rel >> span_bits) == 0] >> shift
    return torch.bincount(bins, minlength=nbins).to(torch.int64)


@functools.lru_cache(maxsize=4)
def pattern_keys(dtype: torch.dtype) -> torch.Tensor:
    """The key of each 15-bit magnitude pattern of a 16-bit float (int64, 32768 entries)."""
    patterns = torch.arange(1 << 15, dtype=torch.int16).view(dtype)
    return abs_key(patterns).to(torch.int64)


def _halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high 16 bits with the sign cleared, low 16 bits) of float32 values, as int16."""
    v = x.reshape(-1).view(torch.int16)
    hi, lo16 = (v[1::2], v[0::2]) if _LITTLE else (v[0::2], v[1::2])
    return hi & 0x7FFF, lo16


@functools.lru_cache(maxsize=1)
def _high_half_keys() -> torch.Tensor:
    """The smallest key of each float32 high-half pattern (NaN patterns share the NaN key)."""
    return torch.clamp_max(torch.arange(1 << 15, dtype=torch.int64) << 16, NAN_KEY)


class KeyHistogram:
    """``abs_histogram`` summed over many pieces. On the CPU it counts bit patterns per piece and maps
    them onto the window once at the end, which is what makes a statistics pass cheap."""

    def __init__(self, lo: int, shift: int, nbins: int, use_triton: bool | None = None):
        check_window(lo, shift, nbins)
        self.lo, self.shift, self.nbins, self.use_triton = lo, shift, nbins, use_triton
        self.hist = torch.zeros(nbins, dtype=torch.int64)
        self.patterns: dict[str, torch.Tensor] = {}  # pattern kind -> counts

    def add(self, x: torch.Tensor, keys: torch.Tensor | None = None) -> None:
        if keys is None and x.device.type == "cpu" and self._add_cpu(x):
            return
        self.hist += abs_histogram(x, self.lo, self.shift, self.nbins, keys=keys, use_triton=self.use_triton).cpu()

    def _add_cpu(self, x: torch.Tensor) -> bool:
        from modelsurgeon.kernels import should_use_triton

        if should_use_triton(x.device, self.use_triton):
            return False
        lo, shift, nbins = self.lo, self.shift, self.nbins
        if (nbins << shift) == 1 and lo < (NAN_KEY - 1) and x.is_contiguous():  # one key below inf: compare
            if x.dtype == torch.float32:
                self.hist[0] += torch.count_nonzero((x.view(torch.int32) & 0x7FFFFFFF) == lo)
                return True
            if x.dtype in (torch.float16, torch.bfloat16):
                pkeys = pattern_keys(x.dtype)
                p = int(torch.searchsorted(pkeys, torch.tensor([lo]))[0])
                if p < len(pkeys) and int(pkeys[p]) == lo:
                    self.hist[0] += torch.count_nonzero((x.view(torch.int16) & 0x7FFF) == p)
                return True
        if x.dtype in (torch.float16, torch.bfloat16):
            self._count(str(x.dtype), x.reshape(-1).view(torch.int16) & 0x7FFF)
            return True
        if x.dtype != torch.float32 or not x.is_contiguous():
            return False
        span = nbins << shift
        if shift >= 16 and lo % (1 << 16) == 0:  # whole 2^16 buckets: count the high halves
            self._count("float32-high", _halves(x)[0])
            return True
        bucket = lo >> 16
        if span <= (1 << 16) and (lo + span - 1) >> 16 == bucket and bucket < (NAN_KEY >> 16):
            hi, low = _halves(x)  # inside one bucket below inf: the low halves of its members
            members = (low[hi == bucket].to(torch.int32) & 0xFFFF) - (lo & 0xFFFF)
            members = members[(members >= 0) & (members < span)]
            self.hist += torch.bincount(members >> shift, minlength=nbins)[:nbins]
            return True
        return False

    def _count(self, kind: str, patterns: torch.Tensor) -> None:
        counts = torch.bincount(patterns, minlength=1 << 15)
        old = self.patterns.get(kind)
        self.patterns[kind] = counts if old is None else old.add_(counts)

    def result(self) -> torch.Tensor:
        hist = self.hist.clone()
        for kind, counts in self.patterns.items():
            pkeys = _high_half_keys() if kind == "float32-high" else pattern_keys(getattr(torch, kind.split(".")[1]))
            rel = pkeys - self.lo
            inside = (rel >= 0) & (rel < (self.nbins << self.shift))
            hist.index_add_(0, rel[inside] >> self.shift, counts[inside])
        return hist


def abs_histogram(
    x: torch.Tensor,
    lo: int,
    shift: int,
    nbins: int,
    keys: torch.Tensor | None = None,
    use_triton: bool | None = None,
) -> torch.Tensor:
    """int64[nbins] counts of the keys of ``x`` in the window; see the module doc."""
    from modelsurgeon.kernels import should_use_triton

    if should_use_triton(x.device, use_triton) and (x.dtype in KERNEL_DTYPES or keys is not None):
        from modelsurgeon.kernels.abs_histogram import abs_histogram as kernel

        return kernel(x, lo, shift, nbins, keys=keys)
    if keys is None and x.device.type == "cpu":
        acc = KeyHistogram(lo, shift, nbins, use_triton=False)
        if acc._add_cpu(x):
            return acc.result()
    return abs_histogram_torch(x, lo, shift, nbins, keys=keys)
