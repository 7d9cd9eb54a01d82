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

Why merging has its own exact top-k (``select_top``/``TopK``) beside pruning's (``ops.prune``): a merge
selects within one tensor, over |delta| = |x - base| recomputed in float chunks (never stored), keeping a
fraction ``density`` given per model, for every model of the tensor before one merging pass applies all
their masks chunk by chunk (random masks drawn per block of entries); so each decision is a threshold
plus a per-chunk quota of tied entries, and the exact k-th value is selected among the few values a
strided sample brackets (two k at once for Breadcrumbs' band). Pruning's is a streaming radix select
over 31-bit integer keys of |w| (``ops.prune.keys``), histogram pass by histogram pass, across a whole
model (``--scope global``) as well as within a tensor. The two share the promise (an exact count, ties to
the earlier entry), not the data they select over.
"""

from __future__ import annotations

import math

import torch

from modelsurgeon.ops.core.streaming import map_in_order

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


def random(delta: torch.Tensor, density: float, rescale: bool, generator) -> torch.Tensor:
    """DARE; ``generator(block)`` gives the generator of each RNG_BLOCK of draws (see random_mask)."""
    if density >= 1:
        return delta
    l1 = delta.abs().sum() if rescale else None
    keep = random_mask(delta.numel(), density, generator).reshape(delta.shape)
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


def della_mask(delta: torch.Tensor, density: float, epsilon: float, generator: torch.Generator) -> torch.Tensor:
    """Per row, keep each entry with probability (density - eps) + 2 eps * rank/(cols - 1), rank of |delta| in the row."""
    shape = delta.shape
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(shape[0], -1)
    cols = rows.shape[1]
    order = torch.argsort(rows.abs(), dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(cols, device=order.device).expand_as(order))
    # ranks 0..cols-1 in every row, so mergekit's min-max normalisation is rank / (cols - 1)
    rank_norm = ranks.to(torch.float32) / (cols - 1) if cols > 1 else torch.full(ranks.shape, 0.5)
    probs = (density - epsilon) + rank_norm * (2 * epsilon)
    keep = torch.rand(probs.shape, generator=generator, dtype=torch.float32) < probs.cpu()
    return keep.reshape(shape)


def della(delta: torch.Tensor, density: float, rescale: bool, epsilon: float, generator) -> torch.Tensor:
    """DELLA MagPrune; ``generator(0)`` gives the generator (one draw over the whole tensor)."""
    if density >= 1:
        return delta
    l1 = delta.abs().sum() if rescale else None
    out = delta.mul_(della_mask(delta, density, epsilon, generator(0)).to(delta.device))
    return rescale_l1(out, l1) if rescale else out


# --------------------------------------------------------------------------------------------
# Streaming form: the same masks, decided from statistics of a first pass and applied chunk by chunk.
#
# The functions above materialise |delta| and a mask for the whole tensor (many passes through memory).
# The merge engine instead makes one pass per model over cache-sized chunks that keeps only statistics
# (a bracketed band of |delta| values around the k-th largest, L1 sums), and applies the mask in a second
# pass while it merges. The result is identical (ties go to the earlier entry in both): how many tied
# entries each chunk keeps is fixed after the first pass, so chunks are independent and run on the shared
# worker pool (``ops.core.streaming.map_in_order``), each worker with one intra-op thread. (torch's own
# intra-op threads meet at a barrier in every operation; on a busy machine one descheduled thread stalls
# them all, which made small-chunk streaming 8x slower than single-threaded.)

CHUNK = 1 << 18  # elements per step: a few such float32 buffers stay in the CPU cache
RNG_BLOCK = 1 << 20  # random masks are drawn in blocks of this many elements, each from its own seed
SAMPLE = 1 << 14  # strided sample that brackets a threshold (the bracket is +/- 8 standard errors wide)


def chunks(n: int, size: int = CHUNK) -> list[tuple[int, int]]:
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def abs_delta(x: torch.Tensor, base: torch.Tensor, a: int, b: int, dtype: torch.dtype) -> torch.Tensor:
    """|x - base| for flat positions [a, b), in ``dtype``."""
    return x[a:b].to(dtype, copy=True).sub_(base[a:b]).abs_()


class TopK:
    """The k largest entries of a score, decided up front: score > thr, plus ``quota[c]`` of the entries
    equal to thr in chunk c (the earliest ones: ties go to the earlier position)."""

    def __init__(self, thr: float, quota: list[int], sum_kept: float, k: int, n: int):
        self.thr, self.quota, self.sum_kept, self.k, self.n = thr, quota, sum_kept, k, n

    def mask(self, score: torch.Tensor, c: int) -> torch.Tensor:
        """A float 0/1 mask for chunk ``c`` (float ops: comparisons into bool tensors are several times
        slower on the CPU)."""
        if self.k >= self.n:
            return torch.ones_like(score)
        if self.k <= 0:
            return torch.zeros_like(score)
        m = torch.gt(score, self.thr, out=torch.empty_like(score))
        q = self.quota[c]
        if q > 0:
            eq = torch.eq(score, self.thr, out=torch.empty_like(score))
            if q >= int(eq.sum()):
                m.add_(eq)
            else:
                m[eq.nonzero().reshape(-1)[:q]] = 1
        return m


def _quotas(eq_counts: list[int], need: int) -> list[int]:
    out = []
    for e in eq_counts:
        q = min(max(need, 0), e)
        out.append(q)
        need -= q
    return out


def select_top(
    score, spans: list[tuple[int, int]], n: int, ks: list[int], sample: torch.Tensor, device="cpu", sums: bool = True
) -> tuple[list[TopK], float]:
    """TopK deciders for several k over the same scores (``score(a, b)`` gives a chunk), from one pass.

    A sorted strided ``sample`` brackets each threshold; the pass counts and sums the scores above each
    bracket and keeps the (few) scores inside it, so the exact k-th largest is a selection over those.
    When a bracket misses (a freak sample), that k falls back to a full selection. Also returns the sum
    of all scores (the L1 norm, for rescaling); with ``sums=False`` no sums are taken (sum_kept and the
    total are then 0).
    """
    m = sample.numel()
    margin = 4.0 / math.sqrt(max(m, 1))
    brackets = []
    for k in ks:
        if k <= 0 or k >= n:
            brackets.append(None)
            continue
        q = (n - k + 0.5) / n
        lo_i, hi_i = int((q - margin) * m), int(math.ceil((q + margin) * m))
        lo = float(sample[lo_i]) if lo_i > 0 else -math.inf
        hi = float(sample[hi_i]) if hi_i < m - 1 else math.inf
        brackets.append((lo, hi))

    def stats(span: tuple[int, int]):
        c = score(*span)
        per_k = []
        for br in brackets:
            if br is None:
                per_k.append(None)
                continue
            lo, hi = br
            gt = torch.gt(c, hi, out=torch.empty_like(c))  # float 0/1: far cheaper than bool on the CPU
            n_gt = int(gt.sum())
            s_gt = float(torch.dot(gt, c)) if sums else 0.0
            inside = torch.ge(c, lo, out=gt).mul_(torch.le(c, hi, out=torch.empty_like(c)))
            per_k.append((n_gt, s_gt, c[inside.bool()]))
        return float(c.sum()) if sums else 0.0, per_k

    results = map_in_order(stats, spans, device)
    total = sum(r[0] for r in results)
    out = []
    for j, k in enumerate(ks):
        if brackets[j] is None:
            out.append(TopK(math.inf if k <= 0 else -math.inf, [0] * len(spans), total if k >= n else 0.0, k, n))
            continue
        above = sum(r[1][j][0] for r in results)
        sum_above = sum(r[1][j][1] for r in results)
        bands = [r[1][j][2] for r in results]
        band = torch.cat(bands)
        below = n - above - band.numel()
        r = n - k + 1
        if below < r <= below + band.numel():
            thr = band.kthvalue(r - below).values
            over = band > thr
            n_gt = above + int(torch.count_nonzero(over))
            s_gt = sum_above + float(band[over].sum()) if sums else 0.0
            eq_counts = [int(torch.count_nonzero(bc == thr)) for bc in bands]
        else:  # the sample misled us: select over everything
            full = torch.cat([score(a, b) for a, b in spans])
            thr = full.kthvalue(r).values
            over = full > thr
            n_gt, s_gt = int(torch.count_nonzero(over)), float(full[over].sum())
            eq_counts = [int(torch.count_nonzero(full[a:b] == thr)) for a, b in spans]
            del full
        need = k - n_gt
        t = float(thr)
        out.append(TopK(t, _quotas(eq_counts, need), s_gt + need * t, k, n))
    return out, total


class DeltaMask:
    """How one model's task vector is sparsified, decided in a first pass; ``apply`` masks a chunk in place."""

    scale: float = 1.0

    def apply(self, d: torch.Tensor, a: int, b: int, c: int) -> torch.Tensor:
        return d


class KeepAll(DeltaMask):
    pass


class MagnitudeMask(DeltaMask):
    """Keep the int(density * n) largest |delta| (TIES), or a band of them (Breadcrumbs)."""

    def __init__(self, keep: TopK, drop: TopK | None, scale: float):
        self.keep, self.drop, self.scale = keep, drop, scale

    def apply(self, d, a, b, c):
        score = d.abs()
        m = self.keep.mask(score, c)
        if self.drop is not None:
            m.mul_(self.drop.mask(score, c).neg_().add_(1))
        return d.mul_(m)


class StoredMask(DeltaMask):
    """A mask drawn for the whole tensor (DARE, DELLA), kept as uint8 0/1 (one byte per entry; uint8
    converts to float several times faster than bool)."""

    def __init__(self, mask: torch.Tensor, scale: float):
        self.m, self.scale = mask.reshape(-1).to(torch.uint8), scale

    def apply(self, d, a, b, c):
        return d.mul_(torch.empty_like(d).copy_(self.m[a:b]))


def _scale(l1_before: float, l1_after: float) -> float:
    if l1_before < RESCALE_EPS or l1_after < RESCALE_EPS:
        return 1.0
    return l1_before / l1_after


def random_mask(n: int, density: float, generator) -> torch.Tensor:
    """Bernoulli(density) keep-mask of n entries; block i of RNG_BLOCK entries is drawn from ``generator(i)``."""
    mask = torch.empty(n, dtype=torch.bool)

    def draw(span: tuple[int, int]) -> None:
        a, b = span
        mask[a:b] = torch.rand(b - a, generator=generator(a // RNG_BLOCK), dtype=torch.float32) < density

    map_in_order(draw, chunks(n, RNG_BLOCK))
    return mask


def plan_mask(
    kind: str | None,
    x: torch.Tensor,
    base: torch.Tensor,
    params: dict,
    rescale: bool,
    generator,
    dtype,
    chunk: int = CHUNK,
    shape: tuple | None = None,
) -> DeltaMask:
    """Decide how model ``x``'s delta from ``base`` (both flat; ``shape`` the tensor's) is sparsified.

    ``generator(block)`` gives the CPU generator for a block of random draws.
    """
    n = x.numel()
    density = float(params.get("density", 1.0))
    if kind is None or density >= 1:
        return KeepAll()
    spans = chunks(n, chunk)
    score = lambda a, b: abs_delta(x, base, a, b, dtype)  # noqa: E731
    if kind in ("magnitude", "magnitude_outliers"):
        stride = max(1, n // SAMPLE)
        sample = (x[::stride].to(dtype) - base[::stride].to(dtype)).abs_().sort().values
        if kind == "magnitude":
            (keep,), before = select_top(score, spans, n, [int(density * n)], sample, x.device, rescale)
            drop, kept_sum = None, keep.sum_kept
        else:
            n_bot, n_top = breadcrumbs_counts(n, density, float(params["gamma"]))
            (keep, drop), before = select_top(score, spans, n, [n - n_bot, n_top], sample, x.device, rescale)
            kept_sum = keep.sum_kept - drop.sum_kept
            if n_top <= 0:
                drop = None
        return MagnitudeMask(keep, drop, _scale(before, kept_sum) if rescale else 1.0)
    if kind == "random":
        # one pass per block: draw the block's mask and, for rescale, the block's L1 sums
        mask = torch.empty(n, dtype=torch.uint8, device=x.device)

        def draw(span: tuple[int, int]) -> tuple[float, float]:
            a, b = span
            r = torch.rand(b - a, generator=generator(a // RNG_BLOCK), dtype=torch.float32)
            m = torch.lt(r, density, out=r).to(x.device)  # float 0/1
            mask[a:b] = m
            if not rescale:
                return 0.0, 0.0
            s = score(a, b)
            return float(s.sum()), float(torch.dot(s, m))

        sums = map_in_order(draw, chunks(n, RNG_BLOCK), "cpu")
        return StoredMask(mask, _scale(sum(s[0] for s in sums), sum(s[1] for s in sums)) if rescale else 1.0)
    if kind != "della":
        raise ValueError(f"unknown sparsifier {kind!r}")
    delta = x.to(dtype) - base.to(dtype)
    mask = della_mask(delta.reshape(shape or x.shape), density, float(params["epsilon"]), generator(0)).reshape(-1).to(x.device)
    del delta
    scale = 1.0
    if rescale:

        def l1(span: tuple[int, int]) -> tuple[float, float]:
            a, b = span
            s = score(a, b)
            return float(s.sum()), float(torch.dot(s, torch.empty_like(s).copy_(mask[a:b])))

        sums = map_in_order(l1, spans, x.device)
        scale = _scale(sum(s[0] for s in sums), sum(s[1] for s in sums))
    return StoredMask(mask, scale)
