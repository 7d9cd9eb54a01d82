"""The calibrated methods as the engine runs them: which linears each watches, what it does to a layer.

    WandaPrune(targets)            targets: checkpoint weight name -> PruneTarget (mode, sparsity, N:M)
    SparseGPTPrune(targets, ...)   the same targets; blocksize, dampening
    GPTQQuantize(targets, grid_for, ...)   grid_for(dtype) -> the scheme's grid (ops/quantize/grid.py)
    AWQScale(targets, roundtrip_for, group, model_type)

A prune method returns, per pruned weight, ``{"pruned": k, "sparsity": s, "zeros_before": z}``; GPTQ returns the
quantized weight its grid made (codes and scales the writer stores as they are); AWQ changes dense weights and
norms only (the quantize command then rounds them with the scheme).

``OWL`` (Yin et al. 2023, https://arxiv.org/abs/2310.05175, github.com/luuyin/OWL): before pruning, a dense pass
measures each layer's outlier ratio D (the share of Wanda scores above ``M`` times their mean, M = 5); layer
sparsities are then ``s - 2 lambda (D - min D)/(max D - min D) + mean(...)`` (lambda = 0.08), so the mean stays
``s`` and layers with more outliers keep more weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.core.sparsity import prune_count

from . import awq as awq_mod
from .engine import LayerContext, LayerMethod, LayerStream
from .gptq import gptq_quantize
from .model import LayerwiseModel
from .sparsegpt import sparsegpt_prune
from .wanda import nm_mask, row_mask, tensor_mask, wanda_scores


@dataclass(frozen=True)
class PruneTarget:
    mode: str  # row | layer | nm
    sparsity: float
    nm: tuple[int, int] | None = None  # (kept n, group m)


class _Targeted(LayerMethod):
    def __init__(self, targets: dict[str, object]):
        self.targets = targets

    def watch(self, lm: LayerwiseModel, index: int, linears: dict[str, nn.Linear]) -> list[str]:
        return [n for n in linears if lm.ck_name(f"{lm.layers_path}.{index}.{n}.weight") in self.targets]


class _Prune(_Targeted):
    """Shared by Wanda and SparseGPT: per-tensor targets, optional OWL ratios per layer."""

    def __init__(self, targets: dict[str, PruneTarget], owl: tuple[float, float] | None = None):
        super().__init__(targets)
        self.owl = owl  # (lambda, M)
        self.layer_sparsity: dict[int, float] = {}
        self.outlier_ratios: list[float] = []

    def prepare(self, stream: LayerStream) -> None:
        if self.owl is None:
            return
        lam, m = self.owl
        kinds_before = self.kinds
        self.kinds = frozenset({"norms"})
        ratios = []
        try:
            for ctx, names in stream.dense_layers():
                scores = [wanda_scores(ctx.linears[n].weight, ctx.stats[n].scaler_row).flatten() for n in names]
                allv = torch.cat(scores) if scores else torch.zeros(1)
                ratios.append(float((allv > m * allv.mean()).float().mean()) * 100)
        finally:
            self.kinds = kinds_before
        self.outlier_ratios = ratios
        base = next(iter(self.targets.values())).sparsity if self.targets else 0.0
        for i, s in enumerate(owl_sparsities(ratios, base, lam)):
            self.layer_sparsity[i] = s

    def sparsity_of(self, ctx: LayerContext, t: PruneTarget) -> float:
        return self.layer_sparsity.get(ctx.index, t.sparsity) if self.owl else t.sparsity

    def _payload(self, mask: torch.Tensor, s: float, zeros_before: int) -> dict:
        return {"pruned": int(mask.sum()), "sparsity": s, "zeros_before": zeros_before}


def owl_sparsities(ratios: list[float], sparsity: float, lam: float) -> list[float]:
    d = torch.tensor(ratios, dtype=torch.float64)
    span = float(d.max() - d.min()) if d.numel() else 0.0
    if span == 0:
        return [sparsity] * len(ratios)
    d = (d - d.min()) * (1 / span * lam * 2)
    d = d - d.mean() + (1 - sparsity)
    return [min(max(1 - float(v), 0.0), 1.0) for v in d]


class WandaPrune(_Prune):
    name = "wanda"
    kinds = frozenset({"norms"})

    def apply(self, ctx: LayerContext) -> dict[str, object]:
        out = {}
        for n, lin in ctx.linears.items():
            t = self.targets[ctx.ck_names[n]]
            w = lin.weight
            s = self.sparsity_of(ctx, t)
            scores = wanda_scores(w, ctx.stats[n].scaler_row)
            if t.mode == "nm":
                mask = nm_mask(scores, *t.nm)
            elif t.mode == "row":
                mask = row_mask(scores, prune_count(s, w.shape[1]))
            else:
                mask = tensor_mask(scores, prune_count(s, w.numel()))
            zeros_before = int((w == 0).sum())
            with torch.no_grad():
                w.masked_fill_(mask, 0)
            out[ctx.ck_names[n]] = self._payload(mask, s, zeros_before)
        return out


class SparseGPTPrune(_Prune):
    name = "sparsegpt"
    kinds = frozenset({"hessian"})

    def __init__(self, targets, owl=None, blocksize: int = 128, dampening: float = 0.01):
        super().__init__(targets, owl)
        self.blocksize, self.dampening = blocksize, dampening

    def prepare(self, stream: LayerStream) -> None:
        if self.owl is not None:
            kinds = self.kinds
            super().prepare(stream)
            self.kinds = kinds

    def apply(self, ctx: LayerContext) -> dict[str, object]:
        out = {}
        for n, lin in ctx.linears.items():
            name = ctx.ck_names[n]
            t = self.targets[name]
            w = lin.weight
            s = self.sparsity_of(ctx, t)
            zeros_before = int((w == 0).sum())
            k = prune_count(s, w.numel()) if t.mode != "nm" else 0
            new, mask, _loss = sparsegpt_prune(
                w, ctx.stats[n].hessian, k, t.nm, self.blocksize, self.dampening, what=f"{name} (layer {ctx.index})"
            )
            with torch.no_grad():
                w.copy_(new)
            out[name] = self._payload(mask, s, zeros_before)
        return out


class GPTQQuantize(_Targeted):
    name = "gptq"
    kinds = frozenset({"hessian"})

    def __init__(self, targets, grid_for: Callable, act_order: bool = True, blocksize: int = 128, dampening: float = 0.01):
        super().__init__(targets)
        self.grid_for, self.act_order, self.blocksize, self.dampening = grid_for, act_order, blocksize, dampening

    def apply(self, ctx: LayerContext) -> dict[str, object]:
        out = {}
        for n, lin in ctx.linears.items():
            name = ctx.ck_names[n]
            w = lin.weight
            dtype = ctx.dtypes[n]
            grid = self.grid_for(dtype)
            original = w.detach().to(dtype)
            codes, q, params, _loss = gptq_quantize(
                w, ctx.stats[n].hessian, grid, self.blocksize, self.dampening, self.act_order, what=f"{name} (layer {ctx.index})"
            )
            payload = grid.finish(codes, params, original)
            with torch.no_grad():
                w.copy_(q)
            out[name] = payload
        return out


class AWQScale(_Targeted):
    name = "awq"
    kinds = frozenset({"inputs"})
    rerun = False

    def __init__(self, targets, roundtrip_for: Callable, group: int, model_type: str, label: str):
        super().__init__(targets)
        self.roundtrip_for, self.group = roundtrip_for, group
        self.mappings = awq_mod.mappings_for(model_type, label)
        self.skipped: list[str] = []

    def watch(self, lm, index, linears):
        wanted = {n for m in self.mappings for n in m.linears}
        return [n for n in linears if n in wanted]

    def apply(self, ctx: LayerContext) -> dict[str, object]:
        layer = ctx.layer
        scales = []
        for m in self.mappings:
            if not all(n in ctx.linears for n in m.linears):
                continue
            if not any(ctx.ck_names[n] in self.targets for n in m.linears):
                continue  # none of these is quantized: scaling them would only move rounding elsewhere
            prev = layer.get_submodule(m.prev)
            fcs = [ctx.linears[n] for n in m.linears]
            if isinstance(prev, nn.Linear) and not _feeds(prev, m.prev, fcs[0].in_features, ctx.lm.config):
                self.skipped.append(f"{m.prev} -> {', '.join(m.linears)}")  # grouped-query attention: v is shared
                continue
            stats = ctx.stats[m.linears[0]]
            xs = stats.rows
            x_mean = torch.cat([x.abs() for x in xs]).mean(0).to(ctx.lm.device) if xs else None
            if x_mean is None:
                continue
            roundtrip = self.roundtrip_for(ctx.dtypes[m.linears[0]])
            block = layer.get_submodule(m.inspect) if m.inspect else fcs[0]
            shapes = [x.shape for x in ctx.xs]
            inputs = [x.reshape(shape[0], shape[1], -1).to(ctx.lm.device) for x, shape in zip(xs, shapes)]
            with torch.no_grad():
                original = [ctx.run(block, x, b) for b, x in enumerate(inputs)]

            def run(inputs=inputs, original=original, block=block) -> float:
                with torch.no_grad():
                    num, den = 0.0, 0
                    for b, x in enumerate(inputs):
                        d = (original[b] - ctx.run(block, x, b)).float()
                        num += float(d.pow(2).sum())
                        den += d.numel()
                return num / max(den, 1)

            s, _best, _hist = awq_mod.search_scale(x_mean, fcs, run, roundtrip)
            scales.append((m, prev, fcs, s))
        for m, prev, fcs, s in scales:
            awq_mod.apply_scale(prev, fcs, s.to(fcs[0].weight.dtype), m.norm_offset)
            for x in ctx.stats[m.linears[0]].rows:
                x.div_(s.to(x.device).view(1, -1))
        for n, lin in ctx.linears.items():
            if ctx.ck_names[n] not in self.targets or n.endswith(awq_mod.NO_CLIP):
                continue
            x = ctx.stats[n].inputs().to(ctx.lm.device)
            cols = lin.in_features
            g = cols if self.group <= 0 else self.group
            if cols % g:
                raise SurgeonError(f"{ctx.ck_names[n]}: rows of {cols} do not split into groups of {g}")
            max_val = awq_mod.auto_clip(lin.weight.detach(), x, g, self.roundtrip_for(ctx.dtypes[n]))
            awq_mod.apply_clip(lin, max_val)
        return {}


def _feeds(prev: nn.Linear, name: str, n_in: int, config) -> bool:
    """Whether the last ``n_in`` output rows of ``prev`` are exactly the input of the next linears (so scaling
    them is exact): v -> o without grouped-query attention, up -> down, Phi-3's fused gate_up -> down and its
    fused qkv -> o (the last rows are v) without grouped-query attention."""
    if name.endswith("gate_up_proj"):
        return prev.out_features == 2 * n_in
    if name.endswith("qkv_proj"):
        heads = int(config.num_attention_heads)
        kv = int(getattr(config, "num_key_value_heads", None) or heads)
        return kv == heads
    return prev.out_features == n_in
