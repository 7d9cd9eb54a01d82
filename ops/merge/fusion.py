"""Arcee Fusion: keep the fine-tune's changes only where they matter most.

importance = |x - base| * KL(softmax(x) || softmax(base)) per row (the last dimension; eps 1e-8 added to
both distributions), threshold = median + 1.5 IQR of the importance over the tensor, and the output is
base + (x - base) where importance >= threshold, the base elsewhere (mergekit ``arcee_fusion``).

mergekit takes the quartiles of a random sample of a million entries (drawn with torch's global RNG)
when a tensor is larger than that; here they are always the exact order statistics of the whole tensor
(the ones at floor(q (n - 1)), mergekit's indexing), so the result is deterministic and equal to
mergekit's bit for bit up to a million entries. Larger tensors stream: pass 1 computes each row's KL
(one float per row), pass 2 selects the three order statistics (``sparsify.select_top``), pass 3 writes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from modelsurgeon.ops.core.streaming import map_in_order

from . import sparsify
from .methods import MergeInputs, MergeMethod, register

KL_EPS = 1e-8
QUARTILES = (0.25, 0.5, 0.75)


def row_kl(x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """KL(softmax(x) + eps || softmax(base) + eps) along the last dimension, one value per row."""
    p = F.softmax(x, dim=-1) + KL_EPS
    q = F.softmax(base, dim=-1) + KL_EPS
    return torch.sum(p * torch.log(p / q), dim=-1)


def quartile_ranks(n: int) -> list[int]:
    """0-based ascending ranks of the quartiles, computed as mergekit does (float32 q times n - 1)."""
    return (torch.tensor(QUARTILES) * (n - 1)).long().tolist()


def threshold_of(q1: torch.Tensor, median: torch.Tensor, q3: torch.Tensor) -> torch.Tensor:
    return median + 1.5 * (q3 - q1)


def arcee_fusion(inp: MergeInputs) -> torch.Tensor:
    wd = inp.work_dtype
    base_t, x_t = inp.base, inp.tensors[0]
    shape = base_t.shape
    if base_t.dim() == 0:
        return x_t.to(wd)
    cols = shape[-1]
    rows = base_t.numel() // cols if cols else 0
    base = base_t.reshape(rows, cols)
    x = x_t.reshape(rows, cols)
    n = rows * cols
    if n == 0:
        return x_t.to(wd)
    if n <= 1 << 20:  # small: the whole tensor at once, exactly mergekit's arithmetic
        b, xx = base.to(wd), x.to(wd)
        imp = (xx - b).abs() * row_kl(xx, b).unsqueeze(-1)
        ranks = quartile_ranks(n)
        s = torch.sort(imp.reshape(-1)).values
        thr = threshold_of(s[ranks[0]], s[ranks[1]], s[ranks[2]])
        return (b + (xx - b) * (imp >= thr).to(wd)).reshape(shape)
    per = max(1, inp.chunk // max(cols, 1))
    row_spans = [(r, min(r + per, rows)) for r in range(0, rows, per)]
    dev = base.device

    def kl(span) -> torch.Tensor:
        r0, r1 = span
        return row_kl(x[r0:r1].to(wd), base[r0:r1].to(wd))

    kls = torch.cat(map_in_order(kl, row_spans, dev))

    def importance(a: int, b: int) -> torch.Tensor:  # flat positions, row-aligned
        r0, r1 = a // cols, b // cols
        return (x[r0:r1].to(wd) - base[r0:r1].to(wd)).abs_().mul_(kls[r0:r1].unsqueeze(-1)).reshape(-1)

    spans = [(r0 * cols, r1 * cols) for r0, r1 in row_spans]
    stride = max(1, n // sparsify.SAMPLE)
    idx = torch.arange(0, n, stride, device=dev)
    flat_x, flat_b = x.reshape(-1), base.reshape(-1)
    sample = (flat_x[idx].to(wd) - flat_b[idx].to(wd)).abs_().mul_(kls[idx // cols]).sort().values
    ranks = quartile_ranks(n)
    tops, _ = sparsify.select_top(importance, spans, n, [n - r for r in ranks], sample, dev, sums=False)
    q1, med, q3 = (torch.tensor(t.thr, dtype=wd) for t in tops)
    thr = float(threshold_of(q1, med, q3))
    out = torch.empty(n, dtype=inp.out_dtype or wd, device=dev)

    def step(span) -> None:
        a, b = span
        r0, r1 = a // cols, b // cols
        bc, xc = base[r0:r1].to(wd), x[r0:r1].to(wd)
        d = xc - bc
        keep = torch.ge(d.abs().mul_(kls[r0:r1].unsqueeze(-1)), thr).to(wd)
        out[a:b] = d.mul_(keep).add_(bc).reshape(-1)  # bc may be a view of the input: not written to

    map_in_order(step, spans, dev)
    return out.reshape(shape)


register(
    MergeMethod(
        "arcee_fusion",
        "keep the fine-tune's changes whose |delta| x row KL divergence is an outlier (above median + 1.5 IQR)",
        "https://arcee.ai",
        arcee_fusion,
        base="required",
        min_models=1,
        max_models=1,
        streams=True,
    )
)
