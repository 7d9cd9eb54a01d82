"""Triton: group-wise scale and round to signed integers, and the way back. Reference: ``ops/quantize/quant.py``.

One program handles BLOCK_R rows of one group. Divisions use ``div_rn`` (IEEE round-to-nearest, which
the interpreter and the CPU reference also compute) and codes come from ``x * (1/scale)`` with the
reciprocal computed once per group, as in the reference, so codes match it bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from modelsurgeon.ops.quantize.quant import int_range, scale_dtype_for

_TL = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


@triton.jit
def _rne(v):
    # round half to even, exactly: floor plus a correction at and above the half
    f = tl.floor(v)
    frac = v - f
    odd = (f - 2.0 * tl.floor(f * 0.5)) != 0.0
    up = (frac > 0.5) | ((frac == 0.5) & odd)
    return tl.where(up, f + 1.0, f)


@triton.jit
def _round_to(x, DTYPE: tl.constexpr):
    """fp32 -> the nearest DTYPE value (ties to even), returned as fp32. bf16 is rounded by hand: the
    Triton interpreter converts fp32 to bf16 by truncation (triton 3.9), a GPU rounds to nearest."""
    if DTYPE == tl.bfloat16:
        b = x.to(tl.uint32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
        return b.to(tl.float32, bitcast=True)
    else:
        return x.to(DTYPE).to(tl.float32)


@triton.jit
def _group_quantize_kernel(
    codes_ptr, scale_ptr, zero_ptr, x_ptr,
    rows, cols, n_groups,
    G: tl.constexpr, GP2: tl.constexpr, BLOCK_R: tl.constexpr,
    QMIN: tl.constexpr, QMAX: tl.constexpr, SYM: tl.constexpr, SDTYPE: tl.constexpr, EPS: tl.constexpr,
):  # fmt: skip
    pid_r = tl.program_id(0).to(tl.int64)
    gi = tl.program_id(1).to(tl.int64)
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    c = tl.arange(0, GP2)
    rmask = r < rows
    mask = rmask[:, None] & (c[None, :] < G)
    offs = r[:, None] * cols + gi * G + c[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    # masked lanes read 0, which the range below includes anyway
    mn = tl.minimum(tl.min(x, axis=1), 0.0)
    mx = tl.maximum(tl.max(x, axis=1), 0.0)
    if SYM:
        scale = _round_to(tl.div_rn(tl.maximum(-mn, mx), (QMAX - QMIN) / 2.0), SDTYPE)
        v = x
    else:
        rng = _round_to(mx - mn, SDTYPE)
        scale = _round_to(tl.div_rn(rng, (QMAX - QMIN) * 1.0), SDTYPE)
        t = _round_to(tl.div_rn(mn, scale), SDTYPE)
        z = _round_to(QMIN - t, SDTYPE)
        z = tl.where(z - z == 0.0, z, 0.0)  # NaN (an all-zero group: 0/0) -> 0, as compressed-tensors ends up
        z = _rne(tl.minimum(tl.maximum(z, QMIN * 1.0), QMAX * 1.0))
        tl.store(zero_ptr + r * n_groups + gi, z.to(tl.int8), mask=rmask)
    scale = tl.where(scale == 0.0, EPS, scale)
    tl.store(scale_ptr + r * n_groups + gi, scale.to(SDTYPE), mask=rmask)
    recip = tl.div_rn(tl.full(scale.shape, 1.0, tl.float32), scale)
    v = x * recip[:, None]
    if not SYM:
        v = v + z[:, None]
    q = _rne(tl.minimum(tl.maximum(v, QMIN * 1.0), QMAX * 1.0))
    tl.store(codes_ptr + offs, q.to(tl.int8), mask=mask)


@triton.jit
def _group_dequantize_kernel(
    out_ptr, codes_ptr, scale_ptr, zero_ptr,
    rows, cols, n_groups,
    G: tl.constexpr, GP2: tl.constexpr, BLOCK_R: tl.constexpr,
    HAS_ZERO: tl.constexpr, SDTYPE: tl.constexpr, ODTYPE: tl.constexpr,
):  # fmt: skip
    pid_r = tl.program_id(0).to(tl.int64)
    gi = tl.program_id(1).to(tl.int64)
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    c = tl.arange(0, GP2)
    rmask = r < rows
    mask = rmask[:, None] & (c[None, :] < G)
    offs = r[:, None] * cols + gi * G + c[None, :]
    q = tl.load(codes_ptr + offs, mask=mask, other=0).to(tl.float32)
    s = tl.load(scale_ptr + r * n_groups + gi, mask=rmask, other=0.0).to(tl.float32)
    if HAS_ZERO:
        q = q - tl.load(zero_ptr + r * n_groups + gi, mask=rmask, other=0).to(tl.float32)[:, None]
    tl.store(out_ptr + offs, _round_to(_round_to(q * s[:, None], SDTYPE), ODTYPE).to(ODTYPE), mask=mask)


def _launch_shape(rows: int, g: int) -> tuple[int, int]:
    gp2 = triton.next_power_of_2(g)
    block_r = max(1, min(64, 4096 // gp2, triton.next_power_of_2(rows)))
    return gp2, block_r


def group_quantize(x: torch.Tensor, bits: int, group_size: int, symmetric: bool = True):
    rows, cols = x.shape
    g = cols if group_size == -1 else group_size
    if g <= 0 or cols % g:
        raise ValueError(f"row length {cols} is not a multiple of the group size {g}")
    if x.dtype not in _TL:
        raise ValueError(f"the Triton group_quantize takes fp32/fp16/bf16, got {x.dtype}")
    x = x.contiguous()
    sd = scale_dtype_for(x.dtype)
    ng = cols // g
    qmin, qmax = int_range(bits)
    codes = torch.empty(rows, cols, dtype=torch.int8, device=x.device)
    scale = torch.empty(rows, ng, dtype=sd, device=x.device)
    zero = None if symmetric else torch.empty(rows, ng, dtype=torch.int8, device=x.device)
    gp2, block_r = _launch_shape(rows, g)
    grid = (triton.cdiv(rows, block_r), ng)
    _group_quantize_kernel[grid](
        codes, scale, codes if zero is None else zero, x, rows, cols, ng,
        G=g, GP2=gp2, BLOCK_R=block_r, QMIN=qmin, QMAX=qmax, SYM=symmetric, SDTYPE=_TL[sd],
        EPS=float(torch.finfo(sd).eps),
    )  # fmt: skip
    return codes, scale, zero


def group_dequantize(codes, scale, zero, group_size: int, dtype: torch.dtype):
    rows, cols = codes.shape
    g = cols if group_size == -1 else group_size
    if scale.dtype not in _TL or dtype not in _TL:
        raise ValueError(f"the Triton group_dequantize takes fp32/fp16/bf16, got {scale.dtype} -> {dtype}")
    out = torch.empty(rows, cols, dtype=dtype, device=codes.device)
    gp2, block_r = _launch_shape(rows, g)
    grid = (triton.cdiv(rows, block_r), cols // g)
    _group_dequantize_kernel[grid](
        out, codes.contiguous(), scale.contiguous(), codes if zero is None else zero.contiguous(),
        rows, cols, cols // g,
        G=g, GP2=gp2, BLOCK_R=block_r, HAS_ZERO=zero is not None, SDTYPE=_TL[scale.dtype], ODTYPE=_TL[dtype],
    )  # fmt: skip
    return out
