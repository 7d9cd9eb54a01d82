"""Sparsifying task vectors (delta = fine-tune - base) before they are merged.

``density`` is always the fraction KEPT. Each sparsifier returns the masked delta, rescaled so its L1
norm matches the original when ``rescale`` is set (mergekit's rule since its PR #245: it equals the
paper's 1/density only in expectation, and keeps the delta's mass exactly).

- ``magnitude`` (TIES): keep exactly int(density * numel) entries of largest |delta| in the tensor.
- ``random`` (DARE): keep each entry with probability density.
- ``magnitude_outliers`` (Model Breadcrumbs): drop the int(gamma * numel) largest |delta| and the
  smallest, keeping int(density * numel). mergekit zeroes the whole tensor when int(gamma * numel) is 0
  (tensors under 1/gamma elements, or gamma 0) because it slices ``[n_bot:-0]``; here that keeps the top.
- ``della`` (DELLA MagPrune): per row, keep-probability rises linearly with the rank of |delta| from
  density - epsilon to density + epsilon.

Random draws come from the ``torch.Generator`` the caller passes (on the CPU), so results do not depend
on the order tensors are processed in or on the device the math runs on. Ties in magnitude are broken by
position (the earlier entry wins), so the kept count is exact and deterministic.
"""

from __future__ import annotations

import math

import torch

RESCALE_EPS = 1e-7


def rescale_l1(masked: torch.Tensor, l1_before: torch.Tensor) -> torch.Tensor:
    """Scale ``masked`` in place so its L1 norm equals ``l1_before`` (skipped when either is ~0)."""
    after = masked.abs().sum()
    if l1_before < RESCALE_EPS or after < RESCALE_EPS:
        return masked
    return masked.mul_(l1_before / after)


def kth_largest(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest value of a flat float tensor (1 <= k <= numel), exactly.

    ``torch.kthvalue`` is a full selection over the tensor; for big tensors a strided sample first
    brackets the answer, so the exact selection runs only over the values between the brackets
    (falling back to the full selection when the bracket misses).
    """
    n = x.numel()
    r = n - k + 1  # the answer is the r-th smallest (1-based)
    if n <= 1 << 20:
        return torch.kthvalue(x, r).values
    sample = torch.sort(x[:: max(1, n // (1 << 16))]).values
    m = sample.numel()
    q, margin = (r - 0.5) / n, 4.0 / math.sqrt(m)
    lo_i, hi_i = int((q - margin) * m), int(math.ceil((q + margin) * m))
    lo = sample[lo_i] if lo_i > 0 else x.new_tensor(-math.inf)
    hi = sample[hi_i] if hi_i < m - 1 else x.new_tensor(math.inf)
    band = x[(x >= lo).logical_and_(x <= hi)]
    below = n - int(torch.count_nonzero(x > hi)) - band.numel()
    if below < r <= below + band.numel():
        return torch.kthvalue(band, r - below).values
    return torch.kthvalue(x, r).values


def top_k_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of exactly ``k`` entries with the largest ``score`` (flat); ties go to the earlier entry."""
    n = score.numel()
    flat = score.reshape(-1)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=score.device)
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=score.device)
    thr = kth_largest(flat, k)
    mask = flat > thr
    need = k - int(torch.count_nonzero(mask))
    eq = flat == thr
    if int(torch.count_nonzero(eq)) == need:
        mask |= eq
    else:  # more ties at the threshold than places left: the earliest ones
        idx = eq.nonzero().reshape(-1)[:need]
        mask[idx] = True
    return mask


def rank_band_mask(score: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Entries whose ascending rank of ``score`` is in [lo, hi) (ties broken consistently with top_k_mask)."""
    n = score.numel()
    keep = top_k_mask(score, n - lo)  # rank >= lo
    if hi < n:
        keep &= ~top_k_mask(score, n - hi)  # rank >= hi removed
    return keep


def magnitude(delta: torch.Tensor, density: float, rescale: bool) -> torch.Tensor:
    if density >= 1:
        return delta
    n = delta.numel()
    l1 = delta.abs().sum() if rescale else None
    mask = top_k_mask(delta.abs(), int(density * n))
    out = delta.mul_(mask.reshape(delta.shape))
    return rescale_l1(out, l1) if rescale else out


def random(delta: torch.Tensor, density: float, rescale: bool, generator: torch.Generator) -> torch.Tensor:
    if density >= 1:
        return delta
    l1 = delta.abs().sum() if rescale else None
    keep = torch.rand(delta.shape, generator=generator, dtype=torch.float32) < density
    out = delta.mul_(keep.to(delta.device))
    return rescale_l1(out, l1) if rescale else out


def breadcrumbs_counts(n: int, density: float, gamma: float) -> tuple[int, int]:
    """(n_bottom, n_top) entries to drop: the smallest and the largest |delta|."""
    target = int(density * n)
    n_top = int(gamma * n)
    n_bot = n - target - n_top
    if n_bot < 0:  # too few left for the density: remove fewer outliers
        n_top += n_bot
        n_bot = 0
    return n_bot, n_top


def magnitude_outliers(delta: torch.Tensor, density: float, rescale: bool, gamma: float) -> torch.Tensor:
    if density >= 1:
        return delta
    n = delta.numel()
    n_bot, n_top = breadcrumbs_counts(n, density, gamma)
    l1 = delta.abs().sum() if rescale else None
    mask = rank_band_mask(delta.abs().reshape(-1), n_bot, n - n_top)
    out = delta.mul_(mask.reshape(delta.shape))
    return rescale_l1(out, l1) if rescale else out


def della(delta: torch.Tensor, density: float, rescale: bool, epsilon: float, generator: torch.Generator) -> torch.Tensor:
    if density >= 1:
        return delta
    shape = delta.shape
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(shape[0], -1)
    cols = rows.shape[1]
    l1 = delta.abs().sum() if rescale else None
    order = torch.argsort(rows.abs(), dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(cols, device=order.device).expand_as(order))
    # ranks 0..cols-1 in every row, so mergekit's min-max normalisation is rank / (cols - 1)
    rank_norm = ranks.to(torch.float32) / (cols - 1) if cols > 1 else torch.full(ranks.shape, 0.5)
    probs = (density - epsilon) + rank_norm * (2 * epsilon)
    keep = torch.rand(probs.shape, generator=generator, dtype=torch.float32) < probs.cpu()
    out = delta.mul_(keep.to(delta.device).reshape(shape))
    return rescale_l1(out, l1) if rescale else out
