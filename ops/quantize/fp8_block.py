"""FP8 E4M3 weights with one scale per 128x128 block (compressed-tensors' ``FP8_BLOCK``, DeepSeek-V3's layout),
byte for byte what compressed-tensors 0.20 writes (``float-quantized``, block strategy).

Weight ``x`` in dtype ``wd``, ``m`` = absmax of a block (edge blocks are partial):
    scale = wd(m / 448), 0 -> eps of wd         (stored in wd, shape (ceil(rows/128), ceil(cols/128)))
    code  = fp8(clamp(wd(x / scale), -448, 448)) (the library divides in the weight dtype, then casts)
Values read back are ``code * scale`` rounded to ``wd`` (``ops/io/quantized`` decodes them).
"""

from __future__ import annotations

import math

import torch

from modelsurgeon.kernels import should_use_triton
from modelsurgeon.ops.io.quantized.codecs import FP8_E4M3_MAX, expand_blocks

BLOCK = (128, 128)


def block_absmax(x: torch.Tensor, block: tuple[int, int] = BLOCK) -> torch.Tensor:
    bh, bw = block
    rows, cols = x.shape
    p = torch.nn.functional.pad(x.abs(), (0, -cols % bw, 0, -rows % bh))  # zeros never raise an absmax
    return p.reshape(math.ceil(rows / bh), bh, math.ceil(cols / bw), bw).amax((1, 3))


def fp8_block_scale(x: torch.Tensor, block: tuple[int, int] = BLOCK) -> torch.Tensor:
    """wd(absmax / 448) per block, eps of wd for an all-zero block; shape (ceil(rows/bh), ceil(cols/bw))."""
    wd = x.dtype
    scale = (block_absmax(x, block).float() / FP8_E4M3_MAX).to(wd)
    return torch.where(scale == 0, torch.tensor(torch.finfo(wd).eps, dtype=wd, device=x.device), scale)


def fp8_block_encode(
    x: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] = BLOCK, use_triton: bool | None = None
) -> torch.Tensor:
    """float8_e4m3fn codes: fp8(clamp(wd(x / scale), -448, 448)); ``kernels/fp8_block.py`` is its Triton kernel."""
    if x.dtype != torch.float64 and should_use_triton(x.device, use_triton):
        from modelsurgeon.kernels.fp8_block import fp8_block_encode as kernel

        return kernel(x, scale, block)
    v = (x.float() / expand_blocks(scale.float(), tuple(x.shape), block)).to(x.dtype)
    return v.clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)


def fp8_block_quantize(
    x: torch.Tensor, block: tuple[int, int] = BLOCK, use_triton: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(float8_e4m3fn codes (rows, cols), scale (ceil(rows/bh), ceil(cols/bw)) in x's dtype)."""
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"fp8-block quantizes float weights, got {x.dtype}")
    scale = fp8_block_scale(x, block)
    return fp8_block_encode(x, scale, block, use_triton), scale


def fp8_block_dequantize(
    codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, block: tuple[int, int] = BLOCK
) -> torch.Tensor:
    return (codes.float() * expand_blocks(scale.float(), tuple(codes.shape), block)).to(scale.dtype).to(dtype)
