"""Task-vector merges that weigh entries by how the models agree: SCE, RAM and RAM+ (tensor-local).

All three work on the task vectors T_i = x_i - base, entry by entry, with a few per-tensor statistics
from a first pass; the merge itself is one streamed pass that writes the output dtype chunk by chunk.

- SCE (mergekit ``sce``, arXiv 2408.07990): Select the entries whose variance across the models is in
  the top ``select_topk`` fraction of the nonzero variances (the others are zeroed in every T_i),
  Calculate each model's weight w_i = mean(T_i^2) / sum_j mean(T_j^2) (equal weights when that sum is
  below 1e-6), Erase the entries whose sign disagrees with the sign of sum_i T_i (ties elect +), and
  merge: base + sum_i w_i m_i T_i / max(sum_i w_i m_i, 1e-6).
- RAM (mergekit ``ram``, arXiv 2601.13572): an entry is contributed by model i when |T_i| > epsilon; an
  entry only one model contributes is taken whole, a shared one is averaged over its contributors.
- RAM+ tensor-local (``ramplus_tl``): as RAM, but each model's unique entries are scaled by
  1 + r * clip(rho_i, 0, alpha), rho_i = (its shared entries) / (its unique entries) in this tensor.

Passes: SCE with select_topk < 1 counts the nonzero variances, then selects the exact k-th largest
(``sparsify.select_top``; ties go to the earlier entry, mergekit's topk breaks them arbitrarily), then sums
the squares; with select_topk 1 only the squares. RAM needs no first pass, RAM+ counts.
"""

from __future__ import annotations

import torch

from modelsurgeon.ops.core.streaming import map_in_order

from . import sparsify
from .methods import INT8_MASK, MergeInputs, MergeMethod, Param, register


def _deltas(xs, base, a: int, b: int, wd) -> tuple[torch.Tensor, list[torch.Tensor]]:
    bc = base[a:b].to(wd)
    return bc, [x[a:b].to(wd, copy=True).sub_(bc) for x in xs]


def _flat(inp: MergeInputs):
    return inp.base.shape, inp.base.reshape(-1), [x.reshape(-1) for x in inp.tensors]


# --------------------------------------------------------------------------------------------
# SCE


def _variance(ds: list[torch.Tensor]) -> torch.Tensor:
    """torch.var(torch.stack(ds), dim=0, unbiased=False), bit for bit: Welford's update in float64, as
    torch's CPU kernel does it, elementwise over the models (twice as fast as torch.var across the
    stacked dimension, which SCE calls in up to four passes)."""
    mean = ds[0].to(torch.float64, copy=True)
    m2 = torch.zeros_like(mean)
    for i, x in enumerate(ds[1:], 2):
        x = x.to(torch.float64, copy=True)
        d = x - mean
        mean.add_(d / i)
        m2.add_(d.mul_(x.sub_(mean)))
    return m2.div_(len(ds)).to(ds[0].dtype)


def sce(inp: MergeInputs) -> torch.Tensor:
    shape, base, xs = _flat(inp)
    wd, chunk, dev = inp.work_dtype, inp.chunk, base.device
    n = base.numel()
    spans = sparsify.chunks(n, chunk)
    topk = float(inp.params["select_topk"])
    keep = None
    if topk < 1:
        if topk <= 0:
            keep = sparsify.TopK(float("inf"), [0] * len(spans), 0.0, 0, n)
        else:
            nonzero = sum(map_in_order(lambda s: int(torch.count_nonzero(_variance(_deltas(xs, base, *s, wd)[1]))), spans, dev))
            k = int(torch.tensor(nonzero) * topk)  # mergekit's arithmetic (float32)
            stride = max(1, n // sparsify.SAMPLE)
            sample = _variance([x[::stride].to(wd) - base[::stride].to(wd) for x in xs]).abs_().sort().values
            score = lambda a, b: _variance(_deltas(xs, base, a, b, wd)[1]).abs_()  # noqa: E731
            (keep,), _ = sparsify.select_top(score, spans, n, [k], sample, dev, sums=False)

    def masked(span: tuple[int, int], c: int):
        bc, ds = _deltas(xs, base, *span, wd)
        if keep is not None:
            m = keep.mask(_variance(ds).abs_(), c)
            ds = [d.mul_(m) for d in ds]
        return bc, ds

    def squares(item) -> list[float]:
        c, span = item
        _, ds = masked(span, c)
        return [float(torch.dot(d, d)) for d in ds]

    sq = map_in_order(squares, list(enumerate(spans)), dev)
    means = torch.tensor([sum(s[i] for s in sq) / n for i in range(len(xs))], dtype=torch.float32)
    total = float(means.sum())
    weights = (torch.ones_like(means) / len(xs) if abs(total) < 1e-6 else means / total).tolist()
    out = torch.empty(n, dtype=inp.out_dtype or wd, device=dev)

    def step(item) -> None:
        c, (a, b) = item
        bc, ds = masked((a, b), c)
        total = ds[0].clone()
        for d in ds[1:]:
            total.add_(d)
        elected = torch.ge(total, 0, out=total).mul_(2).sub_(1)  # +1 / -1
        acc = torch.zeros_like(bc)
        den = torch.zeros_like(bc)
        for d, w in zip(ds, weights):
            ew = torch.eq(torch.sign(d), elected).to(wd).mul_(w)
            den.add_(ew)
            acc.add_(d.mul_(ew))
        out[a:b] = acc.div_(den.clamp_(min=1e-6)).add_(bc)

    map_in_order(step, list(enumerate(spans)), dev)
    return out.reshape(shape)


register(
    MergeMethod(
        "sce",
        "select high-variance entries, weigh models by their task vectors' energy, erase minority signs",
        "https://arxiv.org/abs/2408.07990",
        sce,
        base="required",
        min_models=1,
        max_models=None,
        params=(
            INT8_MASK,
            Param(
                "select_topk",
                1.0,
                check=lambda v: None if 0 <= v <= 1 else f"{v} is outside [0, 1]",
                help="fraction of the highest-variance entries kept",
            ),
        ),
        streams=True,
    )
)


# --------------------------------------------------------------------------------------------
# RAM and RAM+


def _contributions(ds: list[torch.Tensor], eps: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    nz = [torch.gt(d.abs(), eps).to(d.dtype) for d in ds]
    count = nz[0].clone()
    for m in nz[1:]:
        count.add_(m)
    return nz, count


def _ram(inp: MergeInputs, plus: bool) -> torch.Tensor:
    shape, base, xs = _flat(inp)
    wd, dev = inp.work_dtype, base.device
    eps = float(inp.params["epsilon"])
    spans = sparsify.chunks(base.numel(), inp.chunk)
    lam = None
    if plus:

        def counts(span) -> list[tuple[int, int]]:
            _, ds = _deltas(xs, base, *span, wd)
            nz, count = _contributions(ds, eps)
            shared = torch.gt(count, 1).to(wd)
            return [(int(torch.dot(m, shared)), int(m.sum()) - int(torch.dot(m, shared))) for m in nz]

        cs = map_in_order(counts, spans, dev)
        shared = torch.tensor([sum(c[i][0] for c in cs) for i in range(len(xs))])
        unique = torch.tensor([sum(c[i][1] for c in cs) for i in range(len(xs))])
        rho = shared / unique.clamp(min=eps)  # mergekit's arithmetic (float32)
        lam = (1 + float(inp.params["r"]) * rho.clamp(min=0, max=float(inp.params["alpha"]))).tolist()
    out = torch.empty(base.numel(), dtype=inp.out_dtype or wd, device=dev)

    def step(span) -> None:
        a, b = span
        bc, ds = _deltas(xs, base, a, b, wd)
        nz, count = _contributions(ds, eps)
        unique = torch.eq(count, 1) if plus else None
        count.clamp_(min=1)
        acc = None
        for i, (d, m) in enumerate(zip(ds, nz)):
            t = d.mul_(m).div_(count)  # a unique entry divides by 1: unchanged
            if plus and lam[i] != 1:
                t = torch.where(unique, t * lam[i], t)
            acc = t if acc is None else acc.add_(t)
        out[a:b] = acc.add_(bc)

    map_in_order(step, spans, dev)
    return out.reshape(shape)


EPS_PARAM = Param("epsilon", 1e-5, check=lambda v: None if v >= 0 else f"{v} is negative", help="|delta| above this contributes")

register(
    MergeMethod(
        "ram",
        "Reinforced Agent Merging: entries one model changed are kept whole, shared ones averaged",
        "https://arxiv.org/abs/2601.13572",
        lambda inp: _ram(inp, False),
        base="required",
        min_models=1,
        max_models=None,
        params=(EPS_PARAM,),
        streams=True,
    )
)
register(
    MergeMethod(
        "ramplus_tl",
        "RAM+ (tensor-local): RAM with each model's unique entries scaled up by its shared/unique ratio",
        "https://arxiv.org/abs/2601.13572",
        lambda inp: _ram(inp, True),
        base="required",
        min_models=1,
        max_models=None,
        params=(
            Param("r", 0.1, help="scale of the shared/unique ratio"),
            Param("alpha", 0.2, check=lambda v: None if v >= 0 else f"{v} is negative", help="cap of the ratio"),
            EPS_PARAM,
        ),
        streams=True,
    )
)
