"""Triton: pack signed b-bit codes into int32 words in compressed-tensors' order. Reference: ``ops/quantize/pack.py``.

For b in {1, 2, 4, 8} a word holds ``32/b`` whole codes: element ``k`` of the word, offset by
``2^(b-1)``, sits in bits ``k*b .. k*b + b - 1``. Padding past the row's end is 0 *after* the offset.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from modelsurgeon.ops.quantize.pack import packed_cols


@triton.jit
def _pack_int32_kernel(
    out_ptr, codes_ptr, rows, cols, n_words,
    BITS: tl.constexpr, PER: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    w = tl.program_id(1).to(tl.int64) * BLOCK_W + tl.arange(0, BLOCK_W).to(tl.int64)
    k = tl.arange(0, PER)
    col = w[None, :, None] * PER + k[None, None, :]
    mask = (r[:, None, None] < rows) & (col < cols)
    q = tl.load(codes_ptr + r[:, None, None] * cols + col, mask=mask, other=0).to(tl.int32)
    u = tl.where(mask, q + (1 << (BITS - 1)), 0).to(tl.uint32)
    # the fields are disjoint, so their sum is their bitwise or
    word = tl.sum(u << (k[None, None, :] * BITS).to(tl.uint32), axis=2)
    wmask = (r[:, None] < rows) & (w[None, :] < n_words)
    tl.store(out_ptr + r[:, None] * n_words + w[None, :], word.to(tl.int32, bitcast=True), mask=wmask)


def pack_int32(codes: torch.Tensor, bits: int) -> torch.Tensor:
    if 32 % bits:
        raise ValueError(f"the Triton packer handles 1, 2, 4 and 8 bits, not {bits}")
    codes = codes.contiguous()
    rows, cols = codes.shape
    n_words = packed_cols(cols, bits)
    out = torch.empty(rows, n_words, dtype=torch.int32, device=codes.device)
    block_w = min(64, triton.next_power_of_2(max(n_words, 1)))
    block_r = max(1, min(16, triton.next_power_of_2(rows)))
    grid = (triton.cdiv(rows, block_r), triton.cdiv(n_words, block_w))
    _pack_int32_kernel[grid](out, codes, rows, cols, n_words, BITS=bits, PER=32 // bits, BLOCK_R=block_r, BLOCK_W=block_w)
    return out
