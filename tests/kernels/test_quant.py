"""Triton group-wise scale and round (and dequantize) == the torch reference in ops/quantize/quant.py, bit for bit."""

from __future__ import annotations

import pytest
import torch

from modelsurgeon.ops.quantize.quant import group_dequantize, group_quantize

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (rows, cols, group): one group; fewer rows than a program's block; rows spilling into a second block;
# per-row groups (-1) with a row length that is not a power of two; odd row counts
SHAPES = [(1, 32, 32), (3, 96, 32), (65, 128, 64), (5, 200, -1), (17, 256, 128), (2, 384, 128)]


def _first_diffs(a, b, n=5):
    idx = (a != b).nonzero()[:n].tolist()
    return [(i, a[tuple(i)].item(), b[tuple(i)].item()) for i in idx]


def _weights(rows, cols, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * 0.05
    if rows > 2:
        x[1] = 0  # an all-zero row: eps scale, zero point at qmin
        x[2, : cols // 2] = 0.25  # many equal values (ties in the rounding)
    return x.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,cols,group", SHAPES)
@pytest.mark.parametrize("bits,symmetric", [(4, True), (4, False), (8, True), (8, False)])
def test_kernel_matches_reference(dtype, rows, cols, group, bits, symmetric):
    x = _weights(rows, cols, dtype)
    got = group_quantize(x, bits, group, symmetric, use_triton=True)
    want = group_quantize(x, bits, group, symmetric, use_triton=False)
    for name, a, b in zip(("codes", "scale", "zero"), got, want):
        if b is None:
            assert a is None
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, b.dtype, a.shape, b.shape)
        assert torch.equal(a, b), (name, int((a != b).sum()), _first_diffs(a, b))
    deq_k = group_dequantize(*got, group, dtype, use_triton=True)
    deq_r = group_dequantize(*want, group, dtype, use_triton=False)
    assert torch.equal(deq_k, deq_r), _first_diffs(deq_k, deq_r)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [True, False])
def test_gpu_kernel_matches_cpu_reference(dtype, symmetric):
    # the GPU question: division and rounding on the device must give the CPU reference's codes exactly
    x = _weights(4096, 4096, dtype, seed=1)
    got = group_quantize(x.cuda(), 4, 128, symmetric, use_triton=True)
    want = group_quantize(x, 4, 128, symmetric, use_triton=False)
    for a, b in zip(got, want):
        if b is not None:
            assert torch.equal(a.cpu(), b), int((a.cpu() != b).sum())
    deq = group_dequantize(*got, 128, dtype, use_triton=True).cpu()
    assert torch.equal(deq, group_dequantize(*want, 128, dtype, use_triton=False))
