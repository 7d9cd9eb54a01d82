"""Triton int4/int8 packing into int32 == the reference in ops/quantize/pack.py, word for word."""

from __future__ import annotations

import pytest
import torch

from modelsurgeon.ops.quantize.pack import pack_int32

# one element; fewer than a word; a row that ends mid-word; spilling into a second program; odd sizes
SHAPES = [(1, 1), (3, 7), (5, 33), (17, 100), (2, 256), (40, 520)]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("rows,cols", SHAPES)
@pytest.mark.parametrize("packed_dim", [0, 1])
def test_kernel_matches_reference(bits, rows, cols, packed_dim):
    g = torch.Generator().manual_seed(rows * 1000 + cols)
    q = torch.randint(-(1 << (bits - 1)), 1 << (bits - 1), (rows, cols), generator=g).to(torch.int8)
    q[0, 0] = -(1 << (bits - 1))  # the extremes, whose offset codes set the top bit of a word
    q[-1, -1] = (1 << (bits - 1)) - 1
    a = pack_int32(q, bits, packed_dim, use_triton=True)
    b = pack_int32(q, bits, packed_dim, use_triton=False)
    assert a.dtype == torch.int32 and a.shape == b.shape
    assert torch.equal(a, b), (a != b).nonzero()[:5].tolist()


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [4, 8])
def test_gpu_kernel_matches_cpu_reference(bits):
    q = torch.randint(-(1 << (bits - 1)), 1 << (bits - 1), (1024, 4100), dtype=torch.int8)
    assert torch.equal(pack_int32(q.cuda(), bits, 1, use_triton=True).cpu(), pack_int32(q, bits, 1, use_triton=False))
