"""Histogram of ranking keys over a key window: the statistic a streaming radix selection needs.

    hist, below = abs_histogram(x, lo, shift, nbins)

counts, for every element's key k (``ops.keys.abs_key(x)``, or the given ``keys``):

- ``below``: elements with k < lo;
- ``hist[j]``: elements with lo + j·2^shift <= k < lo + (j+1)·2^shift, for j < nbins;
- elements at or above lo + nbins·2^shift are not counted.

``nbins·2^shift`` must be a power of two. Counts are int64 on x's device. This file is the reference
(the CPU path); ``kernels/abs_histogram.py`` is the Triton kernel with the same contract.
"""

from __future__ import annotations

import torch

from .keys import abs_key

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_window(lo: int, shift: int, nbins: int) -> int:
    """Validate the window; return log2 of its span."""
    span = nbins << shift
    if nbins < 1 or shift < 0 or span & (span - 1):
        raise ValueError(f"nbins * 2^shift must be a power of two (nbins={nbins}, shift={shift})")
    if not 0 <= lo < (1 << 31):
        raise ValueError(f"lo={lo} is not a key")
    return span.bit_length() - 1


def abs_histogram_torch(
    x: torch.Tensor, lo: int, shift: int, nbins: int, keys: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    span_bits = check_window(lo, shift, nbins)
    k = (abs_key(x) if keys is None else keys).reshape(-1)
    if lo == 0 and span_bits >= 31:  # the window holds every key: no selection needed
        bins = k >> shift if shift else k
        below = torch.zeros((), dtype=torch.int64, device=k.device)
    else:
        rel = k - lo  # no overflow: both in [0, 2^31)
        below = torch.count_nonzero(rel < 0)
        # negative rel shifts to -1 and rel >= span shifts above 0: one test for both ends
        bins = rel[(rel >> span_bits) == 0]
        if shift:
            bins = bins >> shift
    hist = torch.bincount(bins, minlength=nbins)[:nbins] if bins.numel() else torch.zeros(nbins, dtype=torch.int64, device=k.device)
    return hist.to(torch.int64), below.to(torch.int64)


def abs_histogram(
    x: torch.Tensor,
    lo: int,
    shift: int,
    nbins: int,
    keys: torch.Tensor | None = None,
    use_triton: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(hist int64[nbins], below int64 0-d) of the keys of ``x`` in the window; see the module doc."""
    from modelsurgeon.kernels import should_use_triton

    if should_use_triton(x.device, use_triton) and (x.dtype in KERNEL_DTYPES or keys is not None):
        from modelsurgeon.kernels.abs_histogram import abs_histogram as kernel

        return kernel(x, lo, shift, nbins, keys=keys)
    return abs_histogram_torch(x, lo, shift, nbins, keys=keys)
