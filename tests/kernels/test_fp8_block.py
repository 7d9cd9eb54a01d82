"""Triton FP8-block encoding == the reference in ops/quantize/fp8_block.py, byte for byte, across dtypes,
block shapes and edges with partial blocks."""

from __future__ import annotations

import pytest
import torch

from modelsurgeon.ops.quantize.fp8_block import fp8_block_encode, fp8_block_scale

# a single partial block; exact blocks; partial blocks at both edges; more rows than one program holds
SHAPES = [((5, 7), (128, 128)), ((256, 128), (128, 128)), ((130, 200), (128, 128)), ((40, 96), (16, 32))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape,block", SHAPES)
def test_kernel_matches_reference(dtype, shape, block):
    g = torch.Generator().manual_seed(shape[0] * 31 + shape[1])
    x = (torch.randn(*shape, generator=g) * 0.03).to(dtype)
    x[0, 0] = 0.0
    if shape[0] > block[0]:
        x[block[0] :, : block[1]] = 0  # an all-zero block: its scale is the dtype's eps
    scale = fp8_block_scale(x, block)
    a = fp8_block_encode(x, scale, block, use_triton=True)
    b = fp8_block_encode(x, scale, block, use_triton=False)
    assert a.dtype == torch.float8_e4m3fn and a.shape == x.shape
    assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), (
        (a.view(torch.uint8) != b.view(torch.uint8)).nonzero()[:5].tolist()
    )


@pytest.mark.gpu
def test_gpu_kernel_matches_cpu_reference():
    x = (torch.randn(1000, 4100) * 0.03).to(torch.bfloat16)
    scale = fp8_block_scale(x)
    a = fp8_block_encode(x.cuda(), scale.cuda(), use_triton=True).cpu()
    assert torch.equal(a.view(torch.uint8), fp8_block_encode(x, scale, use_triton=False).view(torch.uint8))
