"""Pack signed integer codes into int32 words, in compressed-tensors' ``pack-quantized`` order.

compressed-tensors 0.20 (``compressors/pack_quantized/helpers.py pack_to_int32``) adds ``2^(b-1)`` to each
signed b-bit code, then writes a dense little-endian bitstream along the packed dimension: element ``i``
of a row occupies bits ``[i*b, i*b + b)``, LSB first, word ``i*b // 32``; rows are padded with zero
*after* the offset to a multiple of 32 elements and cut to ``ceil(cols*b/32)`` words. For int4, word
``j`` holds elements ``8j..8j+7`` with element ``8j+k`` in bits ``4k..4k+3``; for int8, 4 per word.

``pack_int32`` is the reference (any b in 1..8, also values straddling words for b = 3, 5, 6, 7) and the
CPU path; ``kernels/pack.py`` holds the Triton kernel of the same name for b in {1, 2, 4, 8}.
"""

from __future__ import annotations

import math
import sys

import torch

from modelsurgeon.kernels import should_use_triton
from modelsurgeon.ops.io.quantized.codecs import unpack_int32  # the inverse lives with the readers

__all__ = ["pack_int32", "packed_cols", "unpack_int32"]


def packed_cols(cols: int, bits: int) -> int:
    return math.ceil(cols * bits / 32)


def pack_int32(codes: torch.Tensor, bits: int, packed_dim: int = 1, use_triton: bool | None = None) -> torch.Tensor:
    """int8 codes in ``[-2^(b-1), 2^(b-1))`` of a 2-D tensor -> int32 words packed along ``packed_dim``."""
    if codes.dtype != torch.int8 or codes.dim() != 2:
        raise ValueError(f"pack_int32 wants a 2-D int8 tensor, got {codes.dtype} {tuple(codes.shape)}")
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    if packed_dim == 0:
        return pack_int32(codes.t().contiguous(), bits, 1, use_triton).t().contiguous()
    if 32 % bits == 0 and should_use_triton(codes.device, use_triton):
        from modelsurgeon.kernels.pack import pack_int32 as pack_kernel

        return pack_kernel(codes, bits)
    rows, cols = codes.shape
    n_words = packed_cols(cols, bits)
    if bits in (4, 8) and sys.byteorder == "little":
        return _pack_bytes(codes, bits, n_words)
    u = codes.to(torch.int64) + (1 << (bits - 1))
    pad = -cols % 32
    if pad:
        u = torch.nn.functional.pad(u, (0, pad))
    if 32 % bits == 0:
        per = 32 // bits
        shifts = torch.arange(per, dtype=torch.int64, device=codes.device) * bits
        words = (u.reshape(rows, -1, per) << shifts).sum(-1)
    else:  # dense bitstream: 32 elements fill exactly `bits` words; some straddle two words
        u = u.reshape(rows, -1, 32)
        start = torch.arange(32, dtype=torch.int64, device=codes.device) * bits
        word, shift = start // 32, start % 32
        words = torch.zeros(rows, u.shape[1], bits, dtype=torch.int64, device=codes.device)
        words.index_add_(2, word, (u << shift) & 0xFFFFFFFF)
        spill = shift + bits > 32
        if spill.any():
            words.index_add_(2, word[spill] + 1, u[..., spill] >> (32 - shift[spill]))
        words = words.reshape(rows, -1)
    words = words[:, :n_words]
    words = torch.where(words >= 1 << 31, words - (1 << 32), words)  # two's complement view of uint32
    return words.to(torch.int32).contiguous()


def _pack_bytes(codes: torch.Tensor, bits: int, n_words: int) -> torch.Tensor:
    """The same words, built as bytes: on a little-endian machine word j is bytes 4j..4j+3, so int8 codes
    are just their offset bytes, and int4 codes pair up as (element 2i in the low nibble, 2i+1 high)."""
    rows, cols = codes.shape
    per_byte = 8 // bits
    u = codes.view(torch.uint8) ^ 0x80 if bits == 8 else (codes + 8).view(torch.uint8)  # + 2^(b-1)
    pad = n_words * (32 // bits) - cols
    if pad:
        u = torch.nn.functional.pad(u, (0, pad))
    if per_byte == 2:
        u = u[:, 0::2] | (u[:, 1::2] << 4)
    return u.contiguous().reshape(-1).view(torch.int32).reshape(rows, n_words)
