"""Apply a key threshold to a weight and count what survives: the write half of magnitude pruning.

    out, kept = threshold_mask(x2d, t, tie)

For a contiguous ``x2d`` of shape (R, C), per-row threshold keys ``t`` (int32, shape (R,)) and tie
cuts ``tie`` (int64, shape (R,)), element (r, c) with key k is kept when

    k > t[r]   or   (k == t[r] and c >= tie[r])

and zeroed otherwise. So ``tie = 0`` keeps every key equal to the threshold, ``tie = C`` prunes them
all, and a cut in between prunes the ties in the first columns only: ties are broken by position,
earlier first, which makes exact counts possible. ``t = -1`` keeps everything. ``kept`` is the number
of kept elements (an int64 0-d tensor). ``out`` may be ``x`` itself (in place).

``threshold_mask_torch`` is the reference (the spec, and the oracle of the tests). On the CPU, one
threshold over a float tensor takes a faster route with the same result (tested): float32 keys skip
the NaN clamp when the threshold is below inf, and fp16/bf16 compare their 15-bit magnitude patterns
directly, since a key threshold is a pattern threshold. ``kernels/threshold_mask.py`` is the Triton kernel.
"""

from __future__ import annotations

import torch

from .keys import abs_key

INF_KEY = 0x7F800000

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_threshold_args(x: torch.Tensor, t: torch.Tensor, tie: torch.Tensor) -> None:
    if x.dim() != 2 or not x.is_contiguous():
        raise ValueError(f"threshold_mask wants a contiguous 2-D tensor, got shape {tuple(x.shape)}")
    if t.shape != (x.shape[0],) or tie.shape != (x.shape[0],):
        raise ValueError(f"t and tie need shape ({x.shape[0]},), got {tuple(t.shape)} and {tuple(tie.shape)}")


def threshold_mask_torch(
    x: torch.Tensor,
    t: torch.Tensor,
    tie: torch.Tensor,
    keys: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    check_threshold_args(x, t, tie)
    rows, cols = x.shape
    k = abs_key(x) if keys is None else keys.reshape(rows, cols)
    if rows == 1:  # one threshold: the cut is a slice, no column index needed
        t0, cut = int(t[0]), min(max(int(tie[0]), 0), cols)
        keep = k > t0
        if cut < cols:
            keep[:, cut:] |= k[:, cut:] == t0
    else:
        tt = t.view(-1, 1).to(k.dtype)
        keep = k > tt
        cut = tie.view(-1, 1)
        if bool((cut < cols).any()):
            col = torch.arange(cols, device=x.device).view(1, -1)
            keep |= (k == tt) & (col >= cut)
    kept = torch.count_nonzero(keep)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    if out is None:
        out = torch.where(keep, x, zero)
    else:
        torch.where(keep, x, zero, out=out)
    return out, kept


def _fast_cpu(x: torch.Tensor, t: int, cut: int, out: torch.Tensor | None):
    """One threshold, CPU, no given keys: the reference's result by a shorter route, or None."""
    if t >= INF_KEY or not x.is_contiguous():
        return None
    if x.dtype == torch.float32:
        k = x.view(torch.int32) & 0x7FFFFFFF  # NaN keys stay above inf without the clamp
        tt = t
    elif x.dtype in (torch.float16, torch.bfloat16):
        from .abs_histogram import pattern_keys

        pkeys = pattern_keys(x.dtype)  # non-decreasing; one pattern per key below NaN
        k = x.view(torch.int16) & 0x7FFF
        tt = int(torch.searchsorted(pkeys, torch.tensor([t]), right=True)[0]) - 1
        if tt < 0 or int(pkeys[tt]) != t:  # no value has key t: no ties
            cut = k.shape[1]
    else:
        return None
    keep = k > tt
    if cut < k.shape[1]:
        keep[:, cut:] |= k[:, cut:] == tt
    kept = torch.count_nonzero(keep)
    # multiplying the bit patterns by 0/1 writes +0.0 exactly where the reference's `where` does,
    # at a third of its cost on the CPU
    bits = torch.int32 if x.dtype == torch.float32 else torch.int16
    if out is None:
        out = torch.empty_like(x)
    torch.mul(x.view(bits), keep, out=out.view(bits))
    return out, kept


def threshold_mask(
    x: torch.Tensor,
    t: torch.Tensor,
    tie: torch.Tensor,
    keys: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    use_triton: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pruned x, kept count); see the module doc. Triton on CUDA, torch otherwise."""
    from modelsurgeon.kernels import should_use_triton

    if should_use_triton(x.device, use_triton) and x.dtype in KERNEL_DTYPES:
        from modelsurgeon.kernels.threshold_mask import threshold_mask as kernel

        return kernel(x, t, tie, keys=keys, out=out)
    if keys is None and x.device.type == "cpu" and x.dim() == 2 and x.shape[0] == 1 and t.shape == (1,) and tie.shape == (1,):
        fast = _fast_cpu(x, int(t[0]), min(max(int(tie[0]), 0), x.shape[1]), out)
        if fast is not None:
            return fast
    return threshold_mask_torch(x, t, tie, keys=keys, out=out)


def tie_cut(x: torch.Tensor, t: int, r: int, keys: torch.Tensor | None = None, chunk: int = 1 << 22) -> int:
    """The flat cut that prunes exactly the first ``r`` elements whose key equals ``t`` (r >= 1).

    Returns 1 + the flat index of the r-th such element; raises if there are fewer than r.
    """
    flat = x.reshape(-1)
    kflat = None if keys is None else keys.reshape(-1)
    for start in range(0, flat.numel(), chunk):
        part = abs_key(flat[start : start + chunk]) if kflat is None else kflat[start : start + chunk]
        eq = part == t
        c = int(torch.count_nonzero(eq))
        if r <= c:
            return start + int(torch.nonzero(eq)[r - 1, 0]) + 1
        r -= c
    raise ValueError(f"fewer ties than asked ({r} missing)")
