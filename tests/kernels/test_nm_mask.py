"""nm_mask: Triton kernel == torch reference, exactly, across dtypes, N:M patterns and shapes."""

from __future__ import annotations

import pytest
import torch
from mask_cases import DTYPES, assert_equal, awkward

from modelsurgeon.ops.prune.keys import random_keys
from modelsurgeon.ops.prune.nm_mask import nm_mask

CASES = [
    ((1, 4), 2, 4),  # one group
    ((3, 8), 2, 4),
    ((5, 1200), 2, 4),  # 1500 groups: more than one block of 256 groups
    ((2, 3, 16), 4, 8),  # leading batch dims
    ((4, 48), 1, 4),
    ((4, 48), 3, 4),
    ((3, 96), 5, 16),
    ((3, 36), 2, 6),  # M not a power of two: padded lanes
    ((7, 2), 1, 2),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,n,m", CASES, ids=str)
def test_kernel_equals_reference(dtype, shape, n, m):
    x = awkward(shape, dtype, seed=shape[-1] + n)
    ref, ref_kept = nm_mask(x, n, m, use_triton=False)
    out, kept = nm_mask(x, n, m, use_triton=True)
    assert_equal(out, ref, f"{dtype} {shape} {n}:{m}")
    assert int(kept) == int(ref_kept) == x.numel() // m * n


@pytest.mark.parametrize("dtype", DTYPES)
def test_given_keys_in_place(dtype):
    x = awkward((6, 64), dtype, seed=2)
    keys = random_keys(x.shape, 1, "w")
    ref, _ = nm_mask(x, 2, 4, keys=keys, use_triton=False)
    y = x.clone()
    out, _ = nm_mask(y, 2, 4, keys=keys, out=y, use_triton=True)
    assert out.data_ptr() == y.data_ptr()
    assert_equal(out, ref, "keys in place")


def test_reference_semantics_by_hand():
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0, 2.0, -3.0, 0.5, 0.0, 0.0, -0.0, 0.0, 7.0]])
    out, kept = nm_mask(x, 2, 4, use_triton=False)
    # ties: the earlier ones go; a group of zeros keeps its last two (still zeros)
    assert out.tolist() == [[0.0, 0.0, 1.0, 1.0, 2.0, -3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 7.0]] and int(kept) == 6


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="multiple of M"):
        nm_mask(torch.ones(2, 6), 2, 4, use_triton=False)
    with pytest.raises(ValueError, match="0 < N < M"):
        nm_mask(torch.ones(2, 8), 4, 4, use_triton=False)


@pytest.mark.gpu
def test_more_than_2_31_elements_on_gpu():
    x = torch.randn(1, 2**31 + 16, dtype=torch.bfloat16, device="cuda")
    ref, ref_kept = nm_mask(x, 2, 4, use_triton=False)
    out, kept = nm_mask(x, 2, 4, use_triton=True)
    assert int(kept) == int(ref_kept) and torch.equal(out, ref)
