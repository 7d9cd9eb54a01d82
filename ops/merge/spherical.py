"""Spherical means of several models: Multi-SLERP and the Karcher mean, streamed in two passes.

Both are linear in the models once a few scalars are known, and those scalars come from the Gram
matrix G_ij = <d_i, d_j> of the (flattened) tensors d_i (task vectors x_i - base when there is a base):

- Multi-SLERP (mergekit ``multislerp``): u_i = d_i / (|d_i| + eps), M = sum_i w_i u_i, m = M / |M|;
  mergekit then maps the weighted tangent vectors sum_i w_i (u_i - <u_i, m> m) back to the sphere, but
  that sum is M - <M, m> m = 0 identically, so the result is m * sum_i w_i |d_i| (its floats only add
  rounding noise). Here: base + (sum_i w_i |d_i| / |M|) sum_i w_i d_i / (|d_i| + eps).
- Karcher mean (mergekit ``karcher``): the Riemannian mean on the unit sphere of the directions, found by
  mergekit's fixed-point iteration (start at the normalised mean; T = sum_i a_i theta_i / sin(theta_i)
  (u_i - cos(theta_i) u); u <- cos|T| u + sin|T| T / |T|; at most ``max_iter`` steps, stop when
  |T| < tol), scaled by the mean norm. Every iterate is a combination of the u_i, so the iteration runs
  on the coefficients (an N-vector) with the Gram matrix, in float64.

Pass 1 reads the tensors chunk by chunk and accumulates G (float64); pass 2 writes sum_i c_i d_i chunk
by chunk into the output dtype. No full-size float32 copy is held.
"""

from __future__ import annotations

import math

import torch

from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.core.streaming import map_in_order

from . import sparsify
from .methods import WEIGHT, MergeInputs, MergeMethod, Param, register


def gram(xs: list[torch.Tensor], base: torch.Tensor | None, wd: torch.dtype, chunk: int) -> torch.Tensor:
    """G_ij = <x_i - base, x_j - base> (or <x_i, x_j>) over flat tensors, accumulated in float64."""
    n = len(xs)

    def part(span: tuple[int, int]) -> torch.Tensor:
        a, b = span
        if base is None:
            d = torch.stack([x[a:b].to(wd) for x in xs])
        else:
            bc = base[a:b].to(wd)
            d = torch.stack([x[a:b].to(wd, copy=True).sub_(bc) for x in xs])
        return (d @ d.T).double().cpu()

    parts = map_in_order(part, sparsify.chunks(xs[0].numel(), chunk), xs[0].device)
    return torch.stack(parts).sum(0) if parts else torch.zeros(n, n, dtype=torch.float64)


def combine(inp: MergeInputs, coefs: list[float], with_base: bool) -> torch.Tensor:
    """sum_i c_i (x_i - base) + base (or sum_i c_i x_i), chunk by chunk into the output dtype."""
    wd = inp.work_dtype
    shape = inp.tensors[0].shape
    xs = [x.reshape(-1) for x in inp.tensors]
    base = inp.base.reshape(-1) if with_base else None
    out = torch.empty(xs[0].numel(), dtype=inp.out_dtype or wd, device=xs[0].device)

    def step(span: tuple[int, int]) -> None:
        a, b = span
        bc = base[a:b].to(wd) if base is not None else None
        acc = None
        for x, c in zip(xs, coefs):
            d = x[a:b].to(wd, copy=True)
            if bc is not None:
                d.sub_(bc)
            acc = d.mul_(c) if acc is None else acc.add_(d, alpha=c)
        if bc is not None:
            acc.add_(bc)
        out[a:b] = acc

    map_in_order(step, sparsify.chunks(out.numel(), inp.chunk), out.device)
    return out.reshape(shape)


# --------------------------------------------------------------------------------------------
# Multi-SLERP


def multislerp(inp: MergeInputs) -> torch.Tensor:
    if len(inp.tensors) == 1:
        return inp.tensors[0]
    with_base = inp.base is not None
    xs = [x.reshape(-1) for x in inp.tensors]
    g = gram(xs, inp.base.reshape(-1) if with_base else None, inp.work_dtype, inp.chunk)
    eps = float(inp.params["eps"])
    w = torch.tensor([float(mp["weight"]) for mp in inp.model_params], dtype=torch.float64)
    if inp.params["normalize_weights"]:
        w = w / w.sum()
    norms = g.diagonal().clamp(min=0).sqrt()
    c = w / (norms + eps)  # M = sum_i c_i d_i
    mean_norm = math.sqrt(max(float(c @ g @ c), 0.0))
    if mean_norm < eps:
        if len(xs) == 2:  # mergekit's fallback: linear interpolation
            return combine(inp, w.tolist(), with_base)
        raise SurgeonError(
            f"multislerp: the weighted directions of {inp.name} cancel out (antipodal tensors with balancing weights)",
            "change the weights",
        )
    scale = float((norms * w).sum()) / mean_norm
    return combine(inp, (c * scale).tolist(), with_base)


register(
    MergeMethod(
        "multislerp",
        "spherical barycentre of several models (or task vectors): mean direction times mean norm",
        "https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
        multislerp,
        base="optional",
        min_models=1,
        max_models=None,
        params=(
            Param("normalize_weights", True, kind="bool", help="divide the weights by their sum"),
            Param("eps", 1e-8, check=lambda v: None if v >= 0 else f"{v} is negative", help="added to norms"),
        ),
        model_params=(WEIGHT,),
        streams=True,
    )
)


# --------------------------------------------------------------------------------------------
# Karcher mean


def karcher_coefficients(g: torch.Tensor, max_iter: int, tol: float) -> tuple[list[float], float]:
    """(c, s): the Karcher mean is sum_i c_i x_i, s its norm (the mean of the norms), from the Gram matrix
    ``g`` of the x_i (mergekit's iteration and thresholds, equal weights 1/N)."""
    n = g.shape[0]
    alphas = [1.0 / n] * n
    norms = [math.sqrt(max(float(g[i, i]), 0.0)) for i in range(n)]
    valid = [i for i in range(n) if norms[i] > tol]
    if not valid:
        return [0.0] * n, 0.0
    a = torch.tensor([alphas[i] for i in valid], dtype=torch.float64)
    a = a / a.sum()
    nv = torch.tensor([norms[i] for i in valid], dtype=torch.float64)
    ug = g[valid][:, valid] / (nv[:, None] * nv[None, :])  # Gram of the unit vectors
    k = len(valid)

    def norm(v: torch.Tensor) -> float:
        return math.sqrt(max(float(v @ ug @ v), 0.0))

    u = a.clone()
    nu = norm(u)
    if nu < tol:
        u = torch.zeros(k, dtype=torch.float64)
        u[0] = 1.0
    else:
        u = u / nu
    for _ in range(max_iter):
        t = torch.zeros(k, dtype=torch.float64)
        dots = ug @ u  # <u, u_i>
        for i in range(k):
            dot = min(max(float(dots[i]), -1.0), 1.0)
            theta = math.acos(dot)
            if theta < tol:
                continue
            e = torch.zeros(k, dtype=torch.float64)
            e[i] = 1.0
            t += float(a[i]) * (theta / math.sin(theta)) * (e - dot * u)
        nt = norm(t)
        if nt < tol:
            break
        u = math.cos(nt) * u + math.sin(nt) * (t / nt)
        nu = norm(u)
        if nu > tol:
            u = u / nu
    s = sum(al * nm for al, nm in zip(alphas, norms))
    coefs = [0.0] * n
    for j, i in enumerate(valid):
        coefs[i] = s * float(u[j]) / norms[i]
    return coefs, s


def karcher(inp: MergeInputs) -> torch.Tensor:
    if len(inp.tensors) == 1:
        return inp.tensors[0]
    xs = [x.reshape(-1) for x in inp.tensors]
    g = gram(xs, None, inp.work_dtype, inp.chunk)
    coefs, _ = karcher_coefficients(g, int(inp.params["max_iter"]), float(inp.params["tol"]))
    return combine(inp, coefs, with_base=False)


def _whole(v) -> str | None:
    return None if v >= 0 and float(v).is_integer() else f"{v} is not a whole number >= 0"


register(
    MergeMethod(
        "karcher",
        "Riemannian (Karcher) mean of the models' directions on the sphere, times their mean norm",
        "https://arxiv.org/abs/2502.09219",
        karcher,
        base="joins",
        min_models=1,
        max_models=None,
        params=(
            Param("max_iter", 10, check=_whole, help="most fixed-point steps"),
            Param("tol", 1e-5, check=lambda v: None if v >= 0 else f"{v} is negative", help="stop when the step is shorter"),
        ),
        streams=True,
    )
)
