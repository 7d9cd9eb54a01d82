"""Triton FP4 E2M1 encoding == the reference in ops/quantize/fp4.py, byte for byte, for NVFP4 (float32
division) and MXFP4 (division rounded to the weight dtype), across dtypes and awkward shapes; plus the
rounding boundaries themselves (ties to the even code, the sign of values that round to zero)."""

from __future__ import annotations

import pytest
import torch

from modelsurgeon.ops.quantize.fp4 import MXFP4_GROUP, NVFP4_GROUP, e2m1_codes, fp4_encode, mxfp4_scale, nvfp4_quantize

# one group; a row of several groups; rows spilling into a second program; a long row past one program's pairs
SHAPES = [(1, 32), (3, 64), (17, 96), (5, 544)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,cols", SHAPES)
@pytest.mark.parametrize("kind", ["nvfp4", "mxfp4"])
def test_kernel_matches_reference(dtype, rows, cols, kind):
    g = torch.Generator().manual_seed(rows * 7 + cols)
    x = (torch.randn(rows, cols, generator=g) * 0.05).to(dtype)
    x[0, :4] = torch.tensor([0.0, -0.0, 1e-8, -1e-8]).to(dtype)  # zeros and values that round to a signed zero
    if kind == "nvfp4":
        _, scale, gs = nvfp4_quantize(x, use_triton=False)
        s, group, wd = scale.float() / gs, NVFP4_GROUP, False
    else:
        _, s = mxfp4_scale(x)
        s, group, wd = s.float(), MXFP4_GROUP, True
    a = fp4_encode(x, s, group, wd, use_triton=True)
    b = fp4_encode(x, s, group, wd, use_triton=False)
    assert a.dtype == torch.uint8 and a.shape == (rows, cols // 2)
    assert torch.equal(a, b), (a != b).nonzero()[:5].tolist()


def test_e2m1_rounding_boundaries():
    v = torch.tensor([0.25, 0.26, 0.75, 1.25, 1.3, 1.75, 2.5, 2.6, 3.5, 5.0, 5.1, 6.0, -0.1, -0.0, 0.0, -6.0])
    want = [0, 1, 2, 2, 3, 4, 4, 5, 6, 6, 7, 7, 8, 0, 0, 15]
    assert e2m1_codes(v).tolist() == want


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["nvfp4", "mxfp4"])
def test_gpu_kernel_matches_cpu_reference(kind):
    x = (torch.randn(1024, 4096) * 0.05).to(torch.bfloat16)
    if kind == "nvfp4":
        _, scale, gs = nvfp4_quantize(x, use_triton=False)
        s, group, wd = scale.float() / gs, NVFP4_GROUP, False
    else:
        s, group, wd = mxfp4_scale(x)[1].float(), MXFP4_GROUP, True
    assert torch.equal(
        fp4_encode(x.cuda(), s.cuda(), group, wd, use_triton=True).cpu(), fp4_encode(x, s, group, wd, use_triton=False)
    )
