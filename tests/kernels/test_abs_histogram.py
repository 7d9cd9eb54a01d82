"""abs_histogram: Triton kernel == torch reference, exactly, for every window the selections use."""

from __future__ import annotations

import pytest
import torch
from mask_cases import DTYPES, awkward

from modelsurgeon.ops.abs_histogram import abs_histogram
from modelsurgeon.ops.keys import abs_key, random_keys

SIZES = [
    1,  # one element
    4095,  # less than one block (BLOCK = 4096)
    4097,  # spills into a second block
    10_007,  # odd, three blocks
]


def windows(x):
    mid = int(abs_key(x).view(-1)[len(x.view(-1)) // 3])
    return [
        (0, 16, 1 << 15),  # CPU coarse pass: every key
        ((mid >> 16) << 16, 0, 1 << 16),  # CPU fine pass inside one bucket
        (0, 20, 1 << 11),  # GPU passes: 11, 10, 10 bits
        ((mid >> 20) << 20, 10, 1 << 10),
        ((mid >> 10) << 10, 0, 1 << 10),
        (0, 13, 1 << 18),  # fp16 single pass
        (mid, 0, 1),  # ties of one key
        ((1 << 31) - 64, 0, 64),  # above everything but NaN
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_kernel_equals_reference(dtype, n):
    x = awkward((n,), dtype, seed=n)
    for lo, shift, nbins in windows(x):
        ref_h, ref_b = abs_histogram(x, lo, shift, nbins, use_triton=False)
        h, b = abs_histogram(x, lo, shift, nbins, use_triton=True)
        assert torch.equal(h, ref_h), (dtype, n, lo, shift, nbins, torch.nonzero(h != ref_h)[:5].tolist())
        assert int(b) == int(ref_b)
        assert int(ref_h.sum()) + int(ref_b) <= n


def test_given_keys():
    x = torch.zeros(5000)
    keys = random_keys(x.shape, 0, "w")
    for lo, shift, nbins in [(0, 20, 2048), (int(keys[3]), 0, 1), ((int(keys[9]) >> 16) << 16, 0, 65536)]:
        ref = abs_histogram(x, lo, shift, nbins, keys=keys, use_triton=False)
        out = abs_histogram(x, lo, shift, nbins, keys=keys, use_triton=True)
        assert torch.equal(out[0], ref[0]) and int(out[1]) == int(ref[1])


def test_reference_by_hand():
    x = torch.tensor([0.0, -0.0, 1.0, -1.0, 2.0, 0.5])
    one = int(abs_key(torch.tensor(1.0)))
    h, below = abs_histogram(x, one, 0, 1, use_triton=False)
    assert int(h[0]) == 2 and int(below) == 3  # ±1 at the key; 0, -0, 0.5 below; 2 above the window
    h, below = abs_histogram(x, 0, 16, 1 << 15, use_triton=False)
    assert int(h.sum()) == 6 and int(h[0]) == 2 and int(below) == 0
    with pytest.raises(ValueError, match="power of two"):
        abs_histogram(x, 0, 0, 3, use_triton=False)


@pytest.mark.gpu
def test_more_than_2_31_elements_on_gpu():
    x = torch.randn(2**31 + 5, dtype=torch.float16, device="cuda")
    for lo, shift, nbins in [(0, 20, 2048), (int(abs_key(x[:1])[0]), 0, 1)]:
        ref_h, ref_b = abs_histogram(x, lo, shift, nbins, use_triton=False)
        h, b = abs_histogram(x, lo, shift, nbins, use_triton=True)
        assert torch.equal(h, ref_h) and int(b) == int(ref_b)
