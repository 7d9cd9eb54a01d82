"""FP4 E2M1 weights: NVFP4 (FP8 E4M3 scale per 16 values and one global scale) and MXFP4 (E8M0 scale per 32),
byte for byte what compressed-tensors 0.20 writes (``nvfp4-pack-quantized``, ``mxfp4-pack-quantized``).

The arithmetic follows the library step by step (``quantization/utils/helpers.py calculate_qparams``,
``generate_gparam``, ``mxfp_utils.py``, ``lifecycle/forward_helpers.py _quantize``, ``fp4_utils.cast_to_fp4``),
each rounding in the same dtype, so the stored codes and scales are identical (tests/ops/quantize/test_fp4.py
checks them against the library's compressor):

NVFP4, weight ``x`` in dtype ``wd``, ``m`` = absmax of a group of 16 (in ``wd``):
    global = wd(wd(1 / max(absmax(x), tiny)) * 2688) as float32  (448 * 6: FP8 max times FP4 max; torch's 2688 / t)
    scale  = fp8(global * wd(m / 6)), 0 -> 0.125                 (stored float8_e4m3fn, per group)
    code   = E2M1(clamp(x / (scale / global), -6, 6))            (float32 division)
MXFP4, ``m`` = absmax of a group of 32:
    p      = m rounded to a power of two (up when the mantissa is >= 1.75), e = 125 + log2(p) in [0, 255]
    scale  = wd(2^(e - 127)), 0 -> 1                             (stored as the byte 127 + floor(log2(scale)))
    code   = E2M1(clamp(wd(x / scale), -6, 6))

E2M1 rounding is to the nearest of 0, 0.5, 1, 1.5, 2, 3, 4, 6 with ties to the even code (0.25 -> 0,
0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4); the sign bit is set for x < 0, also when the
magnitude rounds to 0. Codes pack two per byte, element 2i in the low nibble (``codecs.unpack_fp4`` reads them).
``kernels/fp4.py`` holds the Triton kernel of ``fp4_encode``.
"""

from __future__ import annotations

import torch

from modelsurgeon.kernels import should_use_triton
from modelsurgeon.ops.io.quantized.codecs import FP4_MAX, FP8_E4M3_MAX, e8m0_to_float, expand_groups, unpack_fp4

NVFP4_GROUP = 16
MXFP4_GROUP = 32


def e2m1_codes(v: torch.Tensor) -> torch.Tensor:
    """float32 values already clamped to [-6, 6] -> E2M1 codes (uint8 0..15), ties to even, sign for v < 0."""
    m = v.abs()
    idx = (m > 0.25).to(torch.uint8) + (m >= 0.75) + (m > 1.25) + (m >= 1.75) + (m > 2.5) + (m >= 3.5) + (m > 5.0)
    return idx | ((v < 0).to(torch.uint8) << 3)


def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """(rows, cols) codes -> uint8 (rows, cols/2), element 2i in the low nibble."""
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def fp4_encode(x: torch.Tensor, scale: torch.Tensor, group: int, wd_divide: bool, use_triton: bool | None = None) -> torch.Tensor:
    """Packed E2M1 codes of ``x`` (rows, cols) with one float32 ``scale`` per ``group`` values (rows, cols/group).

    ``wd_divide``: round ``x / scale`` to ``x``'s dtype before rounding to E2M1 (MXFP4, as the library divides
    in the weight dtype); NVFP4 divides in float32."""
    if should_use_triton(x.device, use_triton):
        from modelsurgeon.kernels.fp4 import fp4_encode as kernel

        return kernel(x, scale, group, wd_divide)
    v = x.float() / expand_groups(scale.float(), x.shape[1])
    if wd_divide:
        v = v.to(x.dtype).float()
    return pack_fp4(e2m1_codes(v.clamp_(-FP4_MAX, FP4_MAX)))


def _group_absmax(x: torch.Tensor, group: int) -> torch.Tensor:
    rows, cols = x.shape
    if cols % group:
        raise ValueError(f"row length {cols} is not a multiple of the group size {group}")
    return x.reshape(rows, cols // group, group).abs().amax(-1)  # in x's dtype, exactly


def nvfp4_global_scale(x: torch.Tensor) -> torch.Tensor:
    """compressed-tensors' ``generate_gparam``: 2688 / absmax in x's dtype, float32 (1,); 1 where not finite."""
    m = x.abs().amax().clamp(min=torch.finfo(x.dtype).tiny)
    # ``2688 / m`` on a tensor is torch's __rtruediv__: reciprocal(m) * 2688, each rounded to x's dtype
    g = (m.reciprocal() * (FP8_E4M3_MAX * FP4_MAX)).float()
    return torch.nan_to_num(g, nan=1.0, posinf=1.0, neginf=1.0).reshape(1)


def nvfp4_quantize(x: torch.Tensor, use_triton: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed uint8 (rows, cols/2), scale float8_e4m3fn (rows, cols/16), global scale float32 (1,))."""
    gs = nvfp4_global_scale(x)
    local = (_group_absmax(x, NVFP4_GROUP).float() / 6.0).to(x.dtype).float()
    scale = (gs * local).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn).float()
    scale = torch.where(scale == 0, torch.full_like(scale, 0.125), scale)
    packed = fp4_encode(x, scale / gs, NVFP4_GROUP, wd_divide=False, use_triton=use_triton)
    return packed, scale.to(torch.float8_e4m3fn), gs


def nvfp4_dequantize(packed: torch.Tensor, scale: torch.Tensor, global_scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What compressed-tensors decompresses: E2M1 values times (scale / global), rounded to bfloat16, then ``dtype``."""
    s = scale.float() / global_scale.float().reshape(())
    return (unpack_fp4(packed) * expand_groups(s, packed.shape[1] * 2)).to(torch.bfloat16).to(dtype)


def mxfp4_scale(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E8M0 bytes (rows, cols/32) as stored, the scale in x's dtype that the codes are computed with)."""
    m = _group_absmax(x, MXFP4_GROUP).float()
    e = torch.floor(torch.log2(m))  # -inf for an all-zero group
    p2 = torch.exp2(e) * torch.where(m >= 1.75 * torch.exp2(e), 2.0, 1.0)  # round_to_power_2: up from 1.75
    exp = (127 + torch.floor(torch.log2(p2)) - 2).clamp(0, 255).round()
    scale = torch.exp2(exp - 127).to(x.dtype)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # the library's eps for a uint8 scale dtype
    stored = (127 + torch.floor(torch.log2(scale.float()))).to(torch.int32).to(torch.uint8)
    return stored, scale


def mxfp4_quantize(x: torch.Tensor, use_triton: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed uint8 (rows, cols/2), E8M0 scale uint8 (rows, cols/32))."""
    stored, scale = mxfp4_scale(x)
    return fp4_encode(x, scale.float(), MXFP4_GROUP, wd_divide=True, use_triton=use_triton), stored


def mxfp4_dequantize(packed: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (unpack_fp4(packed) * expand_groups(e8m0_to_float(scale), packed.shape[1] * 2)).to(torch.bfloat16).to(dtype)
