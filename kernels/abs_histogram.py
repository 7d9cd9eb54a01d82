"""Triton: per-block histograms of |w| keys over a key window, added into one global histogram.

Same contract as ``ops/prune/abs_histogram.py`` (the reference). Each program reads BLOCK values once,
builds its block's histogram in registers (``tl.histogram``) and adds the non-empty bins to the global
one with atomics, so contention is per block, not per element. Keep nbins small (the GPU selection
schedule in ops/prune/select.py uses at most 2048 bins a pass).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from modelsurgeon.ops.prune.abs_histogram import check_window

BLOCK = 4096


@triton.jit
def _abs_histogram_kernel(
    hist_ptr,
    x_ptr,
    keys_ptr,
    n,
    lo,
    SHIFT: tl.constexpr,
    SPAN_BITS: tl.constexpr,
    NBINS: tl.constexpr,
    NBINS_P2: tl.constexpr,
    HAS_KEYS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    if HAS_KEYS:
        key = tl.load(keys_ptr + offs, mask=valid, other=0)
    else:
        x = tl.load(x_ptr + offs, mask=valid, other=0).to(tl.float32)
        key = tl.minimum(x.to(tl.int32, bitcast=True) & 0x7FFFFFFF, 0x7F800001)  # one key for every NaN
    rel = key - lo
    inside = valid & ((rel >> SPAN_BITS) == 0)
    bins = tl.where(inside, rel >> SHIFT, 0)
    local = tl.histogram(bins, NBINS_P2, mask=inside)
    idx = tl.arange(0, NBINS_P2)
    tl.atomic_add(hist_ptr + idx, local.to(tl.int64), mask=(idx < NBINS) & (local > 0))


def abs_histogram(x: torch.Tensor, lo: int, shift: int, nbins: int, keys: torch.Tensor | None = None) -> torch.Tensor:
    span_bits = check_window(lo, shift, nbins)
    x = x.reshape(-1)
    if not x.is_contiguous():
        x = x.contiguous()
    if keys is not None:
        keys = keys.reshape(-1).contiguous()
    n = x.numel()
    hist = torch.zeros(nbins, dtype=torch.int64, device=x.device)
    if n:
        nbins_p2 = max(32, triton.next_power_of_2(nbins))
        grid = (triton.cdiv(n, BLOCK),)
        _abs_histogram_kernel[grid](
            hist,
            x,
            keys if keys is not None else x,
            n,
            lo,
            SHIFT=shift,
            SPAN_BITS=min(span_bits, 31),
            NBINS=nbins,
            NBINS_P2=nbins_p2,
            HAS_KEYS=keys is not None,
            BLOCK=BLOCK,
        )
    return hist
