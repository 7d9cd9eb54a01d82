"""fp8 e4m3 weights, one scale per output channel: compressed-tensors' FP8_DYNAMIC weights.

``scale = absmax(row) / 448`` (448 is e4m3's largest finite value) in the weight's dtype, a zero scale
becoming that dtype's eps, as compressed-tensors computes it; codes are ``x * (1/scale)`` cast to e4m3.
"""

from __future__ import annotations

import torch

from .quant import scale_dtype_for

FP8_MAX = 448.0


def fp8_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float8_e4m3fn codes, scale (rows, 1) in the scale dtype)."""
    sd = scale_dtype_for(x.dtype)
    xf = x.float()
    scale = (xf.abs().amax(-1, keepdim=True) / FP8_MAX).to(sd)
    scale = torch.where(scale == 0, torch.tensor(torch.finfo(sd).eps, dtype=sd, device=x.device), scale)
    v = (xf * (1.0 / scale.float())).clamp_(-FP8_MAX, FP8_MAX)
    return v.to(torch.float8_e4m3fn), scale


def fp8_dequantize(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (codes.float() * scale.float()).to(scale.dtype).to(dtype)
