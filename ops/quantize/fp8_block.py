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

from modelsurgeon.ops.io.quantized.codecs import FP8_E4M3_MAX, expand_blocks

BLOCK = (128, 128)


def block_absmax(x: torch.Tensor, block: tuple[int, int] = BLOCK) -> torch.Tensor:
    bh, bw = block
    rows, cols = x.shape
    p = torch.nn.functional.pad(x.abs(), (0, -cols % bw, 0, -rows % bh))  # zeros never raise an absmax
    return p.reshape(math.ceil(rows / bh), bh, math.ceil(cols / bw), bw).amax((1, 3))


def fp8_block_quantize(x: torch.Tensor, block: tuple[int, int] = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """(float8_e4m3fn codes (rows, cols), scale (ceil(rows/bh), ceil(cols/bw)) in x's dtype)."""
    wd = x.dtype if x.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else torch.float32
    scale = (block_absmax(x, block).float() / FP8_E4M3_MAX).to(wd)
    scale = torch.where(scale == 0, torch.tensor(torch.finfo(wd).eps, dtype=wd, device=x.device), scale)
    v = (x.float() / expand_blocks(scale.float(), tuple(x.shape), block)).to(wd)
    return v.clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn), scale


def fp8_block_dequantize(
    codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, block: tuple[int, int] = BLOCK
) -> torch.Tensor:
    return (codes.float() * expand_blocks(scale.float(), tuple(codes.shape), block)).to(scale.dtype).to(dtype)
