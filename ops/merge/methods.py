"""Merge methods: plain functions over one tensor's versions, in a registry with their parameters.

Every method sees one tensor at a time (``MergeInputs``): the base model's version (when the method uses
one), the other models' versions in recipe order, the global parameters and each model's parameters,
already evaluated for this tensor. It returns the merged tensor in float32 (float64 when an input is
float64); the engine casts it to the output dtype. Inputs may arrive in any float dtype: methods upcast
as they go, and may drop their references in ``tensors`` to free memory early.

The task-vector family (task_arithmetic, ties, dare_*, breadcrumbs*, della*) is ONE function,
``generalized_task_arithmetic``, registered several times with different settings (consensus, sparsifier,
default normalize/rescale), as in mergekit. Defaults follow mergekit's so a recipe gives the same model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from modelsurgeon.ops.core.registry import Registry
from modelsurgeon.ops.core.streaming import map_in_order

from . import sparsify

REQUIRED = object()


@dataclass(frozen=True)
class Param:
    name: str
    default: Any = REQUIRED
    kind: str = "float"  # "float" | "bool" | "optional_float"
    check: Callable[[Any], str | None] | None = None
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass
class MergeInputs:
    """One tensor's versions and its evaluated parameters."""

    name: str
    tensors: list  # the non-base models' versions, recipe order
    base: torch.Tensor | None
    params: dict[str, Any]
    model_params: list[dict[str, Any]]
    # generator(model, block): the CPU generator for one block of a model's random draws
    generator: Callable[[int, int], torch.Generator] = field(
        default=lambda i, block=0: torch.Generator().manual_seed(i * 1_000_003 + block)
    )
    out_dtype: torch.dtype | None = None  # methods that stream may write the output dtype directly
    chunk: int = sparsify.CHUNK  # elements per streaming step

    @property
    def work_dtype(self) -> torch.dtype:
        ts = [t for t in self.tensors if t is not None] + ([self.base] if self.base is not None else [])
        return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


@dataclass(frozen=True)
class MergeMethod:
    name: str
    summary: str
    paper: str
    fn: Callable[[MergeInputs], torch.Tensor]
    base: str  # "required" | "optional" | "unused" | "joins" (a given base is merged as one more model)
    min_models: int  # models besides the base
    max_models: int | None
    params: tuple[Param, ...] = ()
    model_params: tuple[Param, ...] = ()
    randomized: bool = False
    validate: Callable[[dict, list[dict], list[str]], list[str]] | None = None  # cross-parameter checks, per tensor
    settings: dict = field(default_factory=dict)  # for families: what distinguishes this member
    streams: bool = False  # works through the tensor in chunks (no full-size float32 temporaries)

    def param(self, name: str) -> Param | None:
        for p in self.params + self.model_params:
            if p.name == name:
                return p
        return None


REGISTRY: Registry[MergeMethod] = Registry("merge method", "surgeon merge --list-methods", usage=False)


def register(method: MergeMethod) -> MergeMethod:
    return REGISTRY.add(method.name, method)


def get_method(name: str) -> MergeMethod:
    return REGISTRY.lookup(name)


def all_param_names() -> set[str]:
    return {p.name for m in REGISTRY.values() for p in m.params + m.model_params}


def describe_methods() -> list[dict]:
    """The registry as plain data, one dict per method (``surgeon merge --list-methods``): parameters map
    to their defaults, None for a required one; ``models`` counts the models merged besides the base."""
    rows = []
    for m in REGISTRY.values():
        if m.max_models is None:
            count = f"{m.min_models}+"
        else:
            count = str(m.min_models) if m.min_models == m.max_models else f"{m.min_models}-{m.max_models}"
        rows.append(
            {
                "name": m.name,
                "summary": m.summary,
                "paper": m.paper,
                "base": m.base,
                "models": count,
                "parameters": {p.name: (None if p.required else p.default) for p in m.params},
                "model_parameters": {p.name: (None if p.required else p.default) for p in m.model_params},
                "randomized": m.randomized,
            }
        )
    return rows


# --------------------------------------------------------------------------------------------
# parameter checks


def _unit_open_closed(v) -> str | None:  # (0, 1]
    return None if 0 < v <= 1 else f"{v} is outside (0, 1]"


def _unit_closed(v) -> str | None:
    return None if 0 <= v <= 1 else f"{v} is outside [0, 1]"


def _unit_half_open(v) -> str | None:  # [0, 1)
    return None if 0 <= v < 1 else f"{v} is outside [0, 1)"


WEIGHT = Param("weight", kind="float", help="this model's weight")
DENSITY = Param("density", 1.0, check=_unit_open_closed, help="fraction of the task vector kept")
NORMALIZE = lambda d: Param("normalize", d, kind="bool", help="divide by the sum of the weights")  # noqa: E731
RESCALE = lambda d: Param("rescale", d, kind="bool", help="rescale kept entries to the task vector's L1 norm")  # noqa: E731
LAMBDA = Param("lambda", 1.0, help="scale of the merged task vector")
INT8_MASK = Param("int8_mask", False, kind="bool", help="accepted for mergekit recipes; no effect (masks are bool here)")
GAMMA = Param("gamma", 0.01, check=_unit_half_open, help="fraction of largest |delta| removed as outliers")
EPSILON = Param("epsilon", 0.15, check=_unit_half_open, help="half-width of DELLA's keep-probability window")


def _weights_sum_zero(params: dict, mps: list[dict], names: list[str]) -> list[str]:
    if params.get("normalize") and mps and abs(sum(mp["weight"] for mp in mps)) < 1e-8:
        ws = ", ".join(f"{mp['weight']:g}" for mp in mps)
        return [
            f"the weights ({ws}) sum to zero and normalize is on, so the merge divides by zero; change a weight or set normalize: false"
        ]
    return []


def _della_window(params: dict, mps: list[dict], names: list[str]) -> list[str]:
    out = []
    for i, mp in enumerate(mps):
        d, e = mp["density"], mp["epsilon"]
        if d < 1 and (d + e >= 1 or d - e <= 0):
            out.append(f"{names[i]}: density {d:g} +/- epsilon {e:g} must stay inside (0, 1)")
    return out


# --------------------------------------------------------------------------------------------
# linear


def linear(inp: MergeInputs) -> torch.Tensor:
    """sum_i w_i x_i (divided by sum_i w_i with normalize), streamed in chunks into the output dtype."""
    ws = [float(mp["weight"]) for mp in inp.model_params]
    wd = inp.work_dtype
    shape = inp.tensors[0].shape
    xs = [x.reshape(-1) for x in inp.tensors]
    div = sum(ws) if inp.params["normalize"] else 1.0
    out = torch.empty(xs[0].numel(), dtype=inp.out_dtype or wd, device=xs[0].device)

    def step(span: tuple[int, int]) -> None:
        a, b = span
        acc = xs[0][a:b].to(wd, copy=True).mul_(ws[0])
        for x, w in zip(xs[1:], ws[1:]):
            acc.add_(x[a:b], alpha=w)
        if div != 1.0:
            acc.div_(div)
        out[a:b] = acc

    map_in_order(step, sparsify.chunks(out.numel(), inp.chunk), out.device)
    return out.reshape(shape)


register(
    MergeMethod(
        "linear",
        "weighted average of the models (model soup)",
        "https://arxiv.org/abs/2203.05482",
        linear,
        base="unused",
        min_models=1,
        max_models=None,
        params=(NORMALIZE(True),),
        model_params=(WEIGHT,),
        validate=_weights_sum_zero,
        streams=True,
    )
)


# --------------------------------------------------------------------------------------------
# the task-vector family


def generalized_task_arithmetic(inp: MergeInputs, *, consensus: str | None, sparsifier: str | None) -> torch.Tensor:
    """base + lambda * combine(w_i * sparsify(x_i - base)), streamed through the tensor in chunks.

    With ``consensus="sum"`` (TIES): each entry's sign is the sign of the sum of weighted deltas (ties to
    +), only deltas agreeing with it are summed, and normalize divides by the sum of the agreeing weights.
    Without: a plain weighted sum, normalize divides by the sum of weights.

    Pass 1 (per model) decides the sparsification from statistics (``sparsify.plan_mask``); pass 2 walks
    the tensor chunk by chunk, recomputing each delta, masking, weighting and combining it, and writes
    the result straight into the output dtype. No full-size float32 delta is ever held.
    """
    wd = inp.work_dtype
    shape = inp.base.shape
    base = inp.base.reshape(-1)
    xs = [x.reshape(-1) for x in inp.tensors]
    p = inp.params
    rescale, normalize, lam = bool(p["rescale"]), bool(p["normalize"]), float(p["lambda"])
    weights = [float(mp["weight"]) for mp in inp.model_params]
    chunk = inp.chunk
    masks = [
        sparsify.plan_mask(sparsifier, x, base, mp, rescale, partial(inp.generator, i), wd, chunk, tuple(shape))
        for i, (x, mp) in enumerate(zip(xs, inp.model_params))
    ]
    factors = [w * m.scale for w, m in zip(weights, masks)]
    out = torch.empty(base.numel(), dtype=inp.out_dtype or wd, device=base.device)
    divisor = sum(weights)
    if abs(divisor) < 1e-8:
        divisor = 1.0
    spans = sparsify.chunks(base.numel(), chunk)

    def step(span: tuple[int, int]) -> None:
        a, b = span
        c = a // chunk
        base_c = base[a:b].to(wd)
        ds = []
        for x, m, f in zip(xs, masks, factors):
            d = m.apply(x[a:b].to(wd, copy=True).sub_(base_c), a, b, c)
            ds.append(d.mul_(f) if f != 1 else d)
        if consensus is None:
            mixed = ds[0]
            for d in ds[1:]:
                mixed.add_(d)
            if normalize:
                mixed.div_(divisor)
        else:
            total = ds[0].clone()
            for d in ds[1:]:
                total.add_(d)
            elected = total.sign_().add_(0.5).sign_()  # +1 / -1, a zero sum elects +1
            mixed = torch.zeros_like(base_c)
            agreeing = torch.zeros_like(base_c) if normalize else None
            flag = torch.empty_like(base_c) if normalize else None
            for d, w in zip(ds, weights):
                d.mul_(elected)  # > 0 exactly where the delta agrees with the elected sign
                if normalize:  # float 0/1 flags: bool tensors are several times slower on the CPU
                    agreeing.add_(torch.gt(d, 0, out=flag), alpha=w)
                mixed.add_(d.clamp_min_(0))
            mixed.mul_(elected)
            if normalize:
                mixed.div_(agreeing.add_(torch.eq(agreeing, 0, out=flag)))  # no agreeing weight: divide by 1
        if lam != 1:
            mixed.mul_(lam)
        out[a:b] = mixed.add_(base_c)

    map_in_order(step, spans, base.device)
    return out.reshape(shape)


def _gta(name, summary, paper, consensus, sparsifier, normalize, rescale):
    mparams = [WEIGHT, DENSITY]
    if sparsifier == "magnitude_outliers":
        mparams.append(GAMMA)
    if sparsifier == "della":
        mparams.append(EPSILON)
    checks = []
    if consensus is None:
        checks.append(_weights_sum_zero)
    if sparsifier == "della":
        checks.append(_della_window)
    return register(
        MergeMethod(
            name,
            summary,
            paper,
            partial(generalized_task_arithmetic, consensus=consensus, sparsifier=sparsifier),
            base="required",
            min_models=1,
            max_models=None,
            params=(INT8_MASK, NORMALIZE(normalize), RESCALE(rescale), LAMBDA),
            model_params=tuple(mparams),
            randomized=sparsifier in ("random", "della"),
            validate=(lambda p, mps, names: [x for c in checks for x in c(p, mps, names)]) if checks else None,
            settings={"consensus": consensus, "sparsifier": sparsifier, "normalize": normalize, "rescale": rescale},
            streams=True,
        )
    )


_gta("task_arithmetic", "base + weighted sum of task vectors", "https://arxiv.org/abs/2212.04089", None, None, False, False)
_gta(
    "ties",
    "trim task vectors by magnitude, elect signs, average the agreeing ones",
    "https://arxiv.org/abs/2306.01708",
    "sum",
    "magnitude",
    True,
    False,
)
_gta(
    "dare_ties",
    "drop task-vector entries at random, rescale, TIES sign election",
    "https://arxiv.org/abs/2311.03099",
    "sum",
    "random",
    False,
    True,
)
_gta(
    "dare_linear",
    "drop task-vector entries at random, rescale, weighted sum",
    "https://arxiv.org/abs/2311.03099",
    None,
    "random",
    False,
    True,
)
_gta(
    "breadcrumbs",
    "drop the largest and the smallest task-vector entries, weighted sum",
    "https://arxiv.org/abs/2312.06795",
    None,
    "magnitude_outliers",
    False,
    False,
)
_gta(
    "breadcrumbs_ties",
    "Model Breadcrumbs with TIES sign election",
    "https://arxiv.org/abs/2312.06795",
    "sum",
    "magnitude_outliers",
    False,
    False,
)
_gta(
    "della",
    "drop entries with rank-dependent probability (MagPrune), TIES sign election",
    "https://arxiv.org/abs/2406.11617",
    "sum",
    "della",
    True,
    True,
)
_gta("della_linear", "DELLA MagPrune, weighted sum", "https://arxiv.org/abs/2406.11617", None, "della", False, True)


# --------------------------------------------------------------------------------------------
# spherical interpolation

DOT_THRESHOLD = 0.9995


def slerp(inp: MergeInputs) -> torch.Tensor:
    """Spherical interpolation from the base (t=0) to the other model (t=1), on the flattened tensors.

    Nearly colinear tensors (|cos| > 0.9995) are interpolated linearly. The coefficients apply to the
    original (not normalised) tensors, as in mergekit.
    """
    t = float(inp.params["t"])
    wd = inp.work_dtype
    v0 = inp.base.to(wd)
    v1 = inp.tensors[0].to(wd)
    inp.tensors[0] = None
    a, b = v0.reshape(-1), v1.reshape(-1)
    n0, n1 = float(torch.linalg.vector_norm(a)), float(torch.linalg.vector_norm(b))
    dot = float(torch.dot(a, b))
    # mergekit normalises only vectors with norm > 1e-8
    dot = dot / ((n0 if n0 > 1e-8 else 1.0) * (n1 if n1 > 1e-8 else 1.0))
    if abs(dot) > DOT_THRESHOLD:
        return torch.mul(v0, 1 - t).add_(v1, alpha=t)
    theta0 = math.acos(dot)
    s0 = math.sin(theta0 - theta0 * t) / math.sin(theta0)
    s1 = math.sin(theta0 * t) / math.sin(theta0)
    return torch.mul(v0, s0).add_(v1, alpha=s1)


register(
    MergeMethod(
        "slerp",
        "spherical interpolation between the base (t=0) and one other model (t=1)",
        "https://en.wikipedia.org/wiki/Slerp",
        slerp,
        base="required",
        min_models=1,
        max_models=1,
        params=(Param("t", check=_unit_closed, help="0 gives the base, 1 the other model"),),
    )
)


def _nuslerp(t: float, v0: torch.Tensor, v1: torch.Tensor, row_wise: bool, flatten: bool, eps: float = 1e-8) -> torch.Tensor:
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)
    u0 = v0 / torch.linalg.vector_norm(v0, dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / torch.linalg.vector_norm(v1, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = (u0 * u1).sum(-1, keepdim=True).clamp(-1, 1)
    theta = torch.acos(cos)
    sin = torch.sin(theta)
    res = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / sin
    colinear = (sin.abs() < eps).expand_as(res)
    res = torch.where(colinear, (1 - t) * v0 + t * v1, res)
    if row_wise and not flatten:
        res = res.transpose(0, -1)
    return res.reshape(shape)


def nuslerp(inp: MergeInputs) -> torch.Tensor:
    """SLERP of two models with t = w2 / (w1 + w2); with a base, of their task vectors."""
    w1, w2 = (float(mp["weight"]) for mp in inp.model_params)
    t = 0.5 if abs(w1 + w2) < 1e-6 else w2 / (w1 + w2)
    wd = inp.work_dtype
    x0, x1 = inp.tensors[0].to(wd), inp.tensors[1].to(wd)
    row_wise, flatten = bool(inp.params["nuslerp_row_wise"]), bool(inp.params["nuslerp_flatten"])
    if inp.base is None:
        return _nuslerp(t, x0, x1, row_wise, flatten)
    base = inp.base.to(wd)
    return base + _nuslerp(t, x0 - base, x1 - base, row_wise, flatten)


register(
    MergeMethod(
        "nuslerp",
        "SLERP with weights (t = w2/(w1+w2)), row-wise or flattened, of task vectors when a base is given",
        "https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md#nuslerp",
        nuslerp,
        base="optional",
        min_models=2,
        max_models=2,
        params=(
            Param("nuslerp_flatten", True, kind="bool", help="treat the tensor as one vector"),
            Param("nuslerp_row_wise", False, kind="bool", help="interpolate along dim 0 instead of the last dim"),
        ),
        model_params=(WEIGHT,),
    )
)


# --------------------------------------------------------------------------------------------
# model stock, passthrough


def model_stock(inp: MergeInputs) -> torch.Tensor:
    """t = N cos / (1 + (N - 1) cos), cos the mean pairwise cosine of the task vectors; t * mean + (1 - t) * base."""
    wd = inp.work_dtype
    w0 = inp.base.to(wd)
    shape = w0.shape
    filter_wise = bool(inp.params["filter_wise"])
    ws = [x.to(wd) for x in inp.tensors]
    if filter_wise:
        if w0.dim() == 1:
            w0, ws = w0.unsqueeze(0), [w.unsqueeze(0) for w in ws]
    else:
        w0, ws = w0.reshape(-1), [w.reshape(-1) for w in ws]
    offsets = [w - w0 for w in ws]
    cos = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            norms = torch.linalg.vector_norm(offsets[i], dim=-1) * torch.linalg.vector_norm(offsets[j], dim=-1)
            cos.append(((offsets[i] * offsets[j]).sum(-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    del offsets
    c = torch.stack(cos).mean(0).unsqueeze(-1)
    n = len(ws)
    denom = 1 + (n - 1) * c
    t = torch.where(denom == 0, torch.zeros_like(c), n * c / torch.where(denom == 0, torch.ones_like(denom), denom))
    avg = sum(ws) / n
    return (t * avg + (1 - t) * w0).reshape(shape)


register(
    MergeMethod(
        "model_stock",
        "interpolate the models' average toward the base by their task vectors' mean cosine",
        "https://arxiv.org/abs/2403.19522",
        model_stock,
        base="required",
        min_models=2,
        max_models=None,
        params=(Param("filter_wise", False, kind="bool", help="one ratio per row instead of per tensor"),),
    )
)


def passthrough(inp: MergeInputs) -> torch.Tensor:
    x = inp.tensors[0]
    scale = inp.model_params[0].get("scale")
    if scale is None:
        return x
    return x.to(inp.work_dtype) * float(scale)


register(
    MergeMethod(
        "passthrough",
        "copy one model's tensors unchanged (optionally scaled); with slices, stack layers (frankenmerge)",
        "https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md#passthrough",
        passthrough,
        base="unused",
        min_models=1,
        max_models=1,
        model_params=(Param("scale", None, kind="optional_float", help="multiply the tensor by this"),),
    )
)


def nearswap(inp: MergeInputs) -> torch.Tensor:
    """Take the other model's value where it is within t of the base's, move toward it by t/|a-b| elsewhere."""
    t = float(inp.params["t"])
    wd = inp.work_dtype
    a, b = inp.base.to(wd), inp.tensors[0].to(wd)
    w = (t / (a - b).abs().clamp(min=1e-6)).clamp(0, 1)
    return w * b + (1 - w) * a


register(
    MergeMethod(
        "nearswap",
        "interpolate toward the other model only where its values are near the base's (distance t)",
        "https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
        nearswap,
        base="required",
        min_models=1,
        max_models=1,
        params=(Param("t", check=lambda v: None if v >= 0 else f"{v} is negative", help="similarity threshold"),),
    )
)


# --------------------------------------------------------------------------------------------
# PCB-Merging


def _rowwise_minmax(x: torch.Tensor) -> torch.Tensor:
    lo = x.min(dim=1, keepdim=True).values
    hi = x.max(dim=1, keepdim=True).values
    span = hi - lo
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(x))


def _rowwise_clamp(x: torch.Tensor, low_ratio: float, high_ratio: float) -> torch.Tensor:
    """Clip each row to [its value at rank int(d*low_ratio), its value at rank int(d*(1-high_ratio)-1)] (0-based ascending)."""
    d = x.shape[1]
    lo_k = min(max(int(d * low_ratio), 0), d - 1)
    hi_k = min(max(int(d * (1 - high_ratio) - 1), 0), d - 1)
    lo = torch.kthvalue(x, lo_k + 1, dim=1, keepdim=True).values
    hi = torch.kthvalue(x, hi_k + 1, dim=1, keepdim=True).values if hi_k < d - 1 else x.max(dim=1, keepdim=True).values
    return torch.clamp(x, min=lo, max=hi)


def pcb(inp: MergeInputs) -> torch.Tensor:
    """PCB-Merging (the authors' code form), per tensor.

    T: task vectors as rows. A = |T| clipped to its (clip_ratio, 1 - clip_ratio) quantiles; T_c = sign(T) A.
    Intra-balancing exp(n * minmax(A)^2), inter-balancing tanh(T * sum_j T_j); their product is clipped
    below at each row's (1 - pcb_ratio) quantile and min-max scaled to S. Result:
    base + lambda * sum_i w_i S_i T_c,i / max(sum_i S_i, 1e-12).
    """
    wd = inp.work_dtype
    base = inp.base.to(wd)
    n = len(inp.tensors)
    T = torch.stack([(x.to(wd) - base).reshape(-1) for x in inp.tensors])
    inp.tensors[:] = [None] * n
    rho, r = float(inp.params["clip_ratio"]), float(inp.params["pcb_ratio"])
    A = _rowwise_clamp(T.abs(), rho, rho)
    intra = torch.exp(n * _rowwise_minmax(A) ** 2)
    inter = torch.tanh(T * T.sum(0, keepdim=True))
    Tc = torch.sign(T).mul_(A)
    del A, T
    S = _rowwise_minmax(_rowwise_clamp(intra.mul_(inter), 1 - r, 0))
    del intra, inter
    w = torch.tensor([float(mp["weight"]) for mp in inp.model_params], dtype=wd, device=base.device)[:, None]
    merged = (Tc * w * S).sum(0) / S.sum(0).clamp(min=1e-12)
    return base + float(inp.params["lambda"]) * merged.reshape(base.shape)


register(
    MergeMethod(
        "pcb",
        "PCB-Merging: intra/inter-balancing of task vectors, drop the low-scored, weighted rescale",
        "https://arxiv.org/abs/2410.02396",
        pcb,
        base="required",
        min_models=1,
        max_models=None,
        params=(
            Param("pcb_ratio", 0.1, check=_unit_open_closed, help="fraction of each task vector's entries kept"),
            Param(
                "clip_ratio",
                0.0001,
                check=lambda v: None if 0 <= v < 0.5 else f"{v} is outside [0, 0.5)",
                help="outlier quantile clipped at both ends",
            ),
            LAMBDA,
        ),
        model_params=(Param("weight", 1.0, help="per-task scale inside the sum (the paper's lambda_i)"),),
    )
)


# --------------------------------------------------------------------------------------------
# the other families register themselves on import (they use the names above)

from . import agreement, fusion, spherical  # noqa: E402, F401
