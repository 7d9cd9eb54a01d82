"""Stored codes -> values: the decoding half of every quantized format we read, in pure torch.

These are the definitions both sides share: the readers here decode with them, and ``ops/quantize`` encodes
into the same layouts (families may import io, not the reverse), so a code means one thing everywhere.

    unpack_int32    compressed-tensors ``pack-quantized``: b-bit codes, offset by 2^(b-1), in int32 words
    unpack_fp4      FP4 E2M1 codes two per byte, element 2i in the low nibble (nvfp4/mxfp4-pack-quantized)
    e8m0_to_float   MX scales: a biased power-of-two exponent per byte, 2^(e - 127)
"""

from __future__ import annotations

import sys

import torch

# FP4 E2M1 (OCP MX spec): 1 sign bit, 2 exponent bits, 1 mantissa bit; code & 7 indexes the magnitudes
FP4_E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
FP4_MAX = 6.0
FP8_E4M3_MAX = 448.0


def unpack_int32(words: torch.Tensor, bits: int, cols: int, packed_dim: int = 1) -> torch.Tensor:
    """int32 words of compressed-tensors' ``pack-quantized`` layout -> signed int8 codes (``cols`` along the
    packed dim). Element ``i`` of a row occupies bits ``[i*b, i*b + b)`` of the row's bitstream, LSB first,
    and holds ``code + 2^(b-1)``; for b = 3, 5, 6, 7 some elements straddle two words."""
    if packed_dim == 0:
        return unpack_int32(words.t().contiguous(), bits, cols, 1).t().contiguous()
    rows = words.shape[0]
    if bits in (4, 8) and sys.byteorder == "little" and words.is_contiguous():
        # word j is bytes 4j..4j+3 here: int8 codes are their offset bytes, int4 ones the nibbles, low first
        b = words.view(torch.uint8).reshape(rows, -1)
        if bits == 8:
            return (b ^ 0x80).view(torch.int8)[:, :cols].contiguous()
        q = torch.stack([b & 0x0F, b >> 4], dim=-1).reshape(rows, -1)[:, :cols]
        return (q.view(torch.int8) - 8).contiguous()
    w = words.to(torch.int64) & 0xFFFFFFFF
    start = torch.arange(cols, dtype=torch.int64, device=words.device) * bits
    word, shift = start // 32, start % 32
    lo = w[:, word] >> shift
    spill = shift + bits > 32
    if spill.any():
        nxt = torch.clamp(word + 1, max=w.shape[1] - 1)
        hi = w[:, nxt] << (32 - shift)
        lo = torch.where(spill, lo | hi, lo)
    u = lo & ((1 << bits) - 1)
    return (u - (1 << (bits - 1))).to(torch.int8).reshape(rows, cols)


def fp4_table(device: torch.device | str = "cpu") -> torch.Tensor:
    """The 16 FP4 E2M1 values indexed by code (bit 3 is the sign), as float32."""
    mags = torch.tensor(FP4_E2M1_VALUES, dtype=torch.float32, device=device)
    return torch.cat([mags, -mags])


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 (rows, cols/2), two E2M1 codes per byte (element 2i low nibble, 2i+1 high) -> float32 (rows, cols)."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_fp4 wants uint8, got {packed.dtype}")
    t = fp4_table(packed.device)
    byte = torch.arange(256, device=packed.device)
    pairs = torch.stack([t[byte & 15], t[byte >> 4]], dim=1)  # one lookup per byte gives both of its values
    return pairs.index_select(0, packed.reshape(-1).int()).reshape(packed.shape[0], -1)


def e8m0_to_float(e: torch.Tensor) -> torch.Tensor:
    """E8M0 scales (uint8 biased exponents) -> float32 ``2^(e - 127)``; 255 is NaN in the MX spec."""
    if e.dtype not in (torch.uint8, getattr(torch, "float8_e8m0fnu", torch.uint8)):
        raise ValueError(f"e8m0_to_float wants uint8 exponents, got {e.dtype}")
    x = torch.exp2(e.view(torch.uint8).to(torch.float32) - 127.0)
    return torch.where(e.view(torch.uint8) == 255, torch.full_like(x, float("nan")), x)


def expand_blocks(scale: torch.Tensor, shape: tuple[int, int], block: tuple[int, int]) -> torch.Tensor:
    """A (ceil(rows/bh), ceil(cols/bw)) block-scale grid stretched to ``shape`` (the last blocks may be partial)."""
    bh, bw = block
    rows, cols = shape
    return scale.repeat_interleave(bh, 0)[:rows].repeat_interleave(bw, 1)[:, :cols]


def expand_groups(scale: torch.Tensor, cols: int) -> torch.Tensor:
    """A (rows, groups) scale stretched along rows of ``cols`` values (one scale per cols/groups values)."""
    groups = scale.shape[-1]
    return scale.repeat_interleave(cols // groups, dim=-1)
