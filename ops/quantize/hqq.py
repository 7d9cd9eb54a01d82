"""Half-quadratic quantization (HQQ, Badri & Shaji 2023; mobiusml/hqq ``optimize_weights_proximal``), data-free.

Per group, a weight is modelled as ``x ~ (q - z) * s`` with ``q = clamp(round(x/s + z))``. HQQ alternates

    W_e = shrink_lp(x - (q - z) * s, beta, p)        generalized soft threshold: sign(e) relu(|e| - |e|^(p-1)/beta)
    z   = mean(q - (x - W_e) / s)                    the zero that best explains the outlier-free target
    beta *= kappa

with p = 0.7 < 1, so a few large errors are absorbed by ``W_e`` instead of dragging the fit. HQQ updates the
zero only. Symmetric formats (compressed-tensors' default, GGUF Q4_0/Q5_0/Q8_0) have no zero to move, so we
apply the same half-quadratic step to the scale: ``s = <x - W_e, q - z> / <q - z, q - z>`` (the least-squares
scale for the outlier-free target). Asymmetric ones get both updates.

Two deliberate differences from the reference code, both making the result never worse than round-to-nearest:
we keep, per group, the best parameters seen by squared error (HQQ stops globally on the mean absolute
error), and after the parameters are rounded to their stored precision, each group keeps whichever of the
round-to-nearest and the refined encoding reconstructs it better.
"""

from __future__ import annotations

import torch

from .gguf_blocks import BLOCK, CODE_RANGE, HAS_MIN, block_codes, block_params, pack_blocks
from .quant import grouped, int_encode, int_params, int_range, scale_dtype_for


def shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """sign(x) * relu(|x| - |x|^(p-1) / beta). It is 0 wherever |x|^(2-p) <= 1/beta, which for weights of
    ordinary size is almost everywhere, so the power is computed only on the few larger entries."""
    ax = x.abs()
    big = ax > beta ** (-1.0 / (2.0 - p))
    out = torch.zeros_like(x)
    if bool(big.any()):
        v = x[big]
        av = v.abs()
        out[big] = torch.sign(v) * torch.relu(av - av.pow(p - 1) / beta)
    return out


def hqq_refine(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    qmin: int,
    qmax: int,
    cfg,
    *,
    fit_zero: bool,
    integer_zero: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine per-group (scale, zero) for groups ``x`` (N, G) fp32; scale and zero are (N, 1) fp32.

    Returns the best (scale, zero) seen for each group by squared reconstruction error. Works through the
    groups in chunks of about 4M values, so its temporaries stay small whatever the tensor's size.
    """
    step = max(1, (1 << 22) // x.shape[1])
    if x.shape[0] > step:
        parts = [
            hqq_refine(
                x[i : i + step],
                scale[i : i + step],
                zero[i : i + step],
                qmin,
                qmax,
                cfg,
                fit_zero=fit_zero,
                integer_zero=integer_zero,
            )
            for i in range(0, x.shape[0], step)
        ]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    s = torch.where(scale == 0, torch.ones_like(scale), scale)
    z = zero.clone()
    best_err = torch.full_like(s, float("inf"))
    best_s, best_z = s.clone(), z.clone()
    beta, p = float(cfg.beta), float(cfg.lp_norm)
    prev_total = float("inf")
    for it in range(int(cfg.iters) + 1):
        # the current parameters' codes and error (HQQ measures the error of the iterate it is about to update)
        q = torch.div(x, s).add_(z).round_().clamp_(qmin, qmax)
        e = x - (q - z) * s
        err = e.square().sum(-1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s = torch.where(better, s, best_s)
        best_z = torch.where(better, z, best_z)
        total = float(err.sum())
        if it == int(cfg.iters) or total >= prev_total:  # HQQ's early stop: the error stopped decreasing
            break
        prev_total = total
        # W_e = shrink_lp(x - W_r): the part of the error treated as outliers; target = x - W_e
        target = x - shrink_lp(e, beta, p)
        if fit_zero:
            z = (q - target / s).mean(-1, keepdim=True)
            if integer_zero:
                z = z.round().clamp(qmin, qmax)
        c = q - z
        den = c.square().sum(-1, keepdim=True)
        new_s = (target * c).sum(-1, keepdim=True) / torch.where(den == 0, torch.ones_like(den), den)
        s = torch.where((den > 0) & (new_s != 0) & torch.isfinite(new_s), new_s, s)
        beta *= float(cfg.kappa)
    return best_s, best_z


def hqq_int_quantize(
    w: torch.Tensor, bits: int, group_size: int, symmetric: bool, cfg
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Like ``quant.group_quantize`` (same outputs and stored dtypes), with HQQ-refined scales/zeros."""
    qmin, qmax = int_range(bits)
    xg = grouped(w, group_size).float()
    rows, ng, g = xg.shape
    sd = scale_dtype_for(w.dtype)
    scale0, zero0 = int_params(xg, bits, symmetric, sd)
    x2 = xg.reshape(-1, g)
    z_init = torch.zeros(rows * ng, 1, device=w.device) if zero0 is None else zero0.reshape(-1, 1)
    s, z = hqq_refine(x2, scale0.float().reshape(-1, 1), z_init, qmin, qmax, cfg, fit_zero=not symmetric, integer_zero=True)
    s = s.to(sd)
    s = torch.where((s.float() > 0) & torch.isfinite(s.float()), s, scale0.reshape(-1, 1))
    s = s.reshape(rows, ng)
    zr = None if symmetric else z.reshape(rows, ng)
    codes0 = int_encode(xg, scale0, zero0, bits)
    codes1 = int_encode(xg, s, zr, bits)
    err0 = _group_err(xg, codes0, scale0, zero0)
    err1 = _group_err(xg, codes1, s, zr)
    take = err1 < err0  # (rows, ng)
    codes = torch.where(take.repeat_interleave(g, dim=1), codes1, codes0)
    scale = torch.where(take, s, scale0)
    zero = None if symmetric else torch.where(take, zr, zero0).to(torch.int8)
    return codes, scale, zero


def _group_err(xg, codes, scale, zero):
    q = codes.reshape(xg.shape).float()
    if zero is not None:
        q = q - zero.float().unsqueeze(-1)
    deq = (q * scale.float().unsqueeze(-1)).to(scale.dtype).float()
    return (deq - xg).square().sum(-1)


def hqq_gguf_quantize(w: torch.Tensor, qtype: str, cfg) -> torch.Tensor:
    """GGUF blocks with HQQ-refined d (and m): (rows, row_bytes) uint8, same layout as ``quantize_blocks``."""
    qmin, qmax, off = CODE_RANGE[qtype]
    rows, cols = w.shape
    x = w.reshape(-1, BLOCK).float()
    d0, m0 = block_params(x, qtype)
    q0 = block_codes(x, d0, m0, qtype, torch.empty_like(x))
    # ggml's model d * (q - off) + m, written as (q' - z) * s with q' = q - off in [qmin - off, qmax - off]
    lo, hi = qmin - off, qmax - off
    s0 = d0.to(torch.float16).float()
    if qtype in HAS_MIN:
        z0 = torch.where(s0 == 0, torch.zeros_like(s0), -m0.to(torch.float16).float() / s0)
    else:
        z0 = torch.zeros_like(s0)
    s, z = hqq_refine(x, s0, z0, lo, hi, cfg, fit_zero=qtype in HAS_MIN, integer_zero=False)
    d1 = s.to(torch.float16).float()
    d1 = torch.where((d1 == 0) | ~torch.isfinite(d1), s0, d1)
    m1 = (-z * d1).to(torch.float16).float() if qtype in HAS_MIN else None
    v = (x - m1) / d1 if m1 is not None else x / d1
    q1 = torch.clamp(torch.round(v) + off, qmin, qmax)
    err0 = _block_err(x, q0, d0, m0, qtype)
    err1 = _block_err(x, q1, d1, m1, qtype)
    take = err1 < err0
    q = torch.where(take, q1, q0.float())
    d = torch.where(take, d1, d0)
    m = None if m0 is None else torch.where(take, m1, m0)
    return pack_blocks(q, d, m, qtype).reshape(rows, -1)


def _block_err(x, q, d, m, qtype):
    deq = d.to(torch.float16).float() * (q.float() - CODE_RANGE[qtype][2])
    if m is not None:
        deq = deq + m.to(torch.float16).float()
    return (deq - x).square().sum(-1, keepdim=True)
