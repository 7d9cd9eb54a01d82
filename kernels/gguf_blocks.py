"""Triton: GGUF Q8_0 and Q4_0 blocks, byte for byte as ggml writes them. Reference:
``ops/quantize/gguf_blocks.py``.

One program handles BLOCK_B blocks of 32 values and writes their 34 (Q8_0) or 18 (Q4_0) bytes: the fp16
scale little-endian, then the codes. Codes come from the fp32 ``d`` and ``div_rn(1, d)``, as in ggml.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from modelsurgeon.ops.quantize.gguf_blocks import BLOCK, BLOCK_BYTES, row_bytes


@triton.jit
def _store_f16(out_ptr, base, d, bmask):
    bits = d.to(tl.float16).to(tl.uint16, bitcast=True).to(tl.int32)
    tl.store(out_ptr + base, (bits & 0xFF).to(tl.uint8), mask=bmask)
    tl.store(out_ptr + base + 1, (bits >> 8).to(tl.uint8), mask=bmask)


@triton.jit
def _q8_0_kernel(out_ptr, x_ptr, n_blocks, BLOCK_B: tl.constexpr):
    b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    j = tl.arange(0, 32)
    bmask = b < n_blocks
    x = tl.load(x_ptr + b[:, None] * 32 + j[None, :], mask=bmask[:, None], other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(x), axis=1)
    d = tl.div_rn(amax, 127.0)
    inv = tl.where(d == 0.0, 0.0, tl.div_rn(tl.full(d.shape, 1.0, tl.float32), d))
    # round half away from zero of v = x/d: with k = trunc(2v) (exact), q = (k + (k > 0)) >> 1
    k = (x * (inv * 2.0)[:, None]).to(tl.int32)
    q = (k + (k >> 31) + 1) >> 1
    base = b * 34
    _store_f16(out_ptr, base, d, bmask)
    tl.store(out_ptr + base[:, None] + 2 + j[None, :], (q & 0xFF).to(tl.uint8), mask=bmask[:, None])


@triton.jit
def _q4_0_kernel(out_ptr, x_ptr, n_blocks, BLOCK_B: tl.constexpr):
    b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    j = tl.arange(0, 32)
    h = tl.arange(0, 16)
    bmask = b < n_blocks
    x = tl.load(x_ptr + b[:, None] * 32 + j[None, :], mask=bmask[:, None], other=0.0).to(tl.float32)
    # the signed value of largest magnitude, the first one on ties (as ggml's loop keeps it)
    idx = tl.argmax(tl.abs(x), axis=1, tie_break_left=True)
    mx = tl.sum(tl.where(j[None, :] == idx[:, None], x, 0.0), axis=1)
    d = tl.div_rn(mx, -8.0)
    inv = tl.where(d == 0.0, 0.0, tl.div_rn(tl.full(d.shape, 1.0, tl.float32), d))
    lo = tl.load(x_ptr + b[:, None] * 32 + h[None, :], mask=bmask[:, None], other=0.0).to(tl.float32)
    hi = tl.load(x_ptr + b[:, None] * 32 + 16 + h[None, :], mask=bmask[:, None], other=0.0).to(tl.float32)
    qlo = tl.minimum((lo * inv[:, None] + 8.5).to(tl.int32), 15)
    qhi = tl.minimum((hi * inv[:, None] + 8.5).to(tl.int32), 15)
    base = b * 18
    _store_f16(out_ptr, base, d, bmask)
    tl.store(out_ptr + base[:, None] + 2 + h[None, :], (qlo | (qhi << 4)).to(tl.uint8), mask=bmask[:, None])


_KERNELS = {"Q8_0": _q8_0_kernel, "Q4_0": _q4_0_kernel}


def quantize_blocks(x: torch.Tensor, qtype: str) -> torch.Tensor:
    rows, cols = x.shape
    xf = x.contiguous().float()
    n_blocks = rows * cols // BLOCK
    out = torch.empty(n_blocks * BLOCK_BYTES[qtype], dtype=torch.uint8, device=x.device)
    block_b = 64
    _KERNELS[qtype][(triton.cdiv(n_blocks, block_b),)](out, xf, n_blocks, BLOCK_B=block_b)
    return out.reshape(rows, row_bytes(cols, qtype))
