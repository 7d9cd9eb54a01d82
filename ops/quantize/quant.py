"""Integer group-wise round-to-nearest (w4a16, w8a16, w8a8): the spec, the CPU path, and the oracle of
``kernels/quant.py``.

Integer schemes follow compressed-tensors 0.20 (``quantization/utils/helpers.py calculate_qparams``,
``lifecycle/forward.py``): min and max of each group are widened to include 0; symmetric
``scale = absmax / ((qmax - qmin) / 2)`` (int4: absmax/7.5, int8: absmax/127.5), asymmetric
``scale = (max - min) / (qmax - qmin)`` and ``zero = clamp(round(qmin - min/scale))``; a zero scale becomes
the scale dtype's eps; ``q = clamp(round(x/scale + zero), qmin, qmax)``; ``x' = (q - zero) * scale`` in the
scale dtype, which is the weight's dtype.

Where we differ on purpose: compressed-tensors rounds ``x/scale`` to the weight dtype before rounding
to an integer (bf16 keeps 8 bits, so about 0.6% of int4 codes of a bf16 weight land one step away from
the nearest). We compute ``x * (1/scale)`` in fp32 with the *stored* scale, so every code is the nearest
one for the scale the consumer reads, and kernel and reference agree bit for bit (the reciprocal is
computed once per group in both). Scales and zero points are computed exactly as compressed-tensors
computes them (same dtype roundings), so ``weight_scale`` and ``weight_zero_point`` are identical.
"""

from __future__ import annotations

import torch

from modelsurgeon.kernels import should_use_triton


def int_range(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def scale_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """compressed-tensors stores scales in the weight's dtype when it is a float type."""
    return dtype if dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else torch.float16


def grouped(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """A 2-D tensor as (rows, groups, group size); ``group_size`` -1 is one group per row."""
    rows, cols = x.shape
    g = cols if group_size == -1 else group_size
    if g <= 0 or cols % g:
        raise ValueError(f"row length {cols} is not a multiple of the group size {g}")
    return x.reshape(rows, cols // g, g)


def int_params(
    xg: torch.Tensor, bits: int, symmetric: bool, scale_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-group (scale in ``scale_dtype``, zero as float or None) for groups ``xg`` of shape (rows, ng, g)."""
    qmin, qmax = int_range(bits)
    x = xg.float()
    mn = x.amin(-1).clamp(max=0)
    mx = x.amax(-1).clamp(min=0)
    # divide by a tensor, not a Python number: CUDA turns division by a scalar into a multiplication
    if symmetric:
        scale = (torch.maximum(-mn, mx) / mx.new_tensor((qmax - qmin) / 2)).to(scale_dtype)
    else:
        # compressed-tensors subtracts in the weight dtype, then divides: round the same way
        scale = ((mx - mn).to(scale_dtype).float() / mx.new_tensor(float(qmax - qmin))).to(scale_dtype)
    eps = torch.finfo(scale_dtype).eps
    zero = None
    if not symmetric:
        # zero = round(qmin - min/scale), each step rounded to the scale dtype as compressed-tensors does;
        # computed before the eps substitution, as there; an all-zero group gives 0/0, which compressed-tensors
        # turns into a zero point of 0 (NaN cast to int8 on x86): we write 0 explicitly
        t = (mn / scale.float()).to(scale_dtype).float()
        z = (qmin - t).to(scale_dtype).float()
        zero = torch.where(torch.isfinite(z), z, torch.zeros_like(z)).clamp(qmin, qmax).round()
    scale = torch.where(scale == 0, torch.tensor(eps, dtype=scale_dtype, device=scale.device), scale)
    return scale, zero


def int_encode(xg: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int) -> torch.Tensor:
    """Codes ``clamp(round(x * (1/scale) + zero))`` as int8, shape (rows, ng*g)."""
    qmin, qmax = int_range(bits)
    recip = 1.0 / scale.float()
    v = xg.float() * recip.unsqueeze(-1)
    if zero is not None:
        v = v + zero.float().unsqueeze(-1)
    return v.clamp_(qmin, qmax).round_().to(torch.int8).reshape(xg.shape[0], -1)


def group_quantize(
    x: torch.Tensor, bits: int, group_size: int, symmetric: bool = True, use_triton: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Round-to-nearest of a 2-D weight: (int8 codes, scale (rows, ngroups) in the scale dtype, int8 zero or None).

    ``group_size`` -1 means one group per row (per-channel).
    """
    if x.dtype != torch.float64 and should_use_triton(x.device, use_triton):
        from modelsurgeon.kernels.quant import group_quantize as kernel

        return kernel(x, bits, group_size, symmetric)
    xg = grouped(x.float(), group_size)  # one fp32 copy, shared by the parameters and the codes
    scale, zero = int_params(xg, bits, symmetric, scale_dtype_for(x.dtype))
    codes = int_encode(xg, scale, zero, bits)
    return codes, scale, None if zero is None else zero.to(torch.int8)


def group_dequantize(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None,
    group_size: int,
    dtype: torch.dtype,
    use_triton: bool | None = None,
) -> torch.Tensor:
    """``(q - zero) * scale`` rounded to the scale dtype (as compressed-tensors decompresses), then ``dtype``."""
    if scale.dtype != torch.float64 and should_use_triton(codes.device, use_triton):
        from modelsurgeon.kernels.quant import group_dequantize as kernel

        return kernel(codes, scale, zero, group_size, dtype)
    qg = grouped(codes, group_size).float()
    if zero is not None:
        qg -= zero.float().unsqueeze(-1)
    out = qg.mul_(scale.float().unsqueeze(-1)).to(scale.dtype)
    return out.reshape(codes.shape).to(dtype)
