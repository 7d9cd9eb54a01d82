"""Triton GGUF Q8_0 / Q4_0 blocks == the reference in ops/quantize/gguf_blocks.py, byte for byte."""

from __future__ import annotations

import pytest
import torch

from modelsurgeon.ops.quantize.gguf_blocks import quantize_blocks

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# one block; a few blocks; more blocks than one program handles (64) and a remainder; a single long row
SHAPES = [(1, 32), (3, 64), (65, 96), (1, 4096)]


def _blocks(rows, cols, dtype):
    g = torch.Generator().manual_seed(rows * 7 + cols)
    x = torch.randn(rows, cols, generator=g)
    if rows > 2:
        x[1] = 0  # all-zero blocks: d = 0
        x[2, :32] = 1.0
        x[2, 3] = -1.0  # +a and -a tie for the largest magnitude: ggml keeps the first
        x[2, 32:64] = torch.linspace(-4, 4, 32)  # exact halves after scaling
    return x.to(dtype)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,cols", SHAPES)
def test_kernel_matches_reference(qtype, dtype, rows, cols):
    x = _blocks(rows, cols, dtype)
    a = quantize_blocks(x, qtype, use_triton=True)
    b = quantize_blocks(x, qtype, use_triton=False)
    assert a.dtype == torch.uint8 and a.shape == b.shape
    assert torch.equal(a, b), (a != b).nonzero()[:5].tolist()


@pytest.mark.gpu
@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_gpu_kernel_matches_cpu_reference(qtype):
    x = torch.randn(2048, 4096)
    assert torch.equal(quantize_blocks(x.cuda(), qtype, use_triton=True).cpu(), quantize_blocks(x, qtype, use_triton=False))
