"""abs_histogram: Triton kernel == torch reference, and the CPU pattern-counting routes == reference,
exactly, for every window the selections use."""

from __future__ import annotations

import pytest
import torch
from mask_cases import DTYPES, awkward

from modelsurgeon.ops.prune.abs_histogram import abs_histogram, abs_histogram_torch
from modelsurgeon.ops.prune.keys import abs_key, random_keys

SIZES = [
    1,  # one element
    4095,  # less than one block (BLOCK = 4096)
    4097,  # spills into a second block
    10_007,  # odd, three blocks
]


def windows(x):
    keys = abs_key(x).view(-1)
    mid = int(keys[len(keys) // 3])
    inf = int(abs_key(torch.tensor(float("inf"))))
    return [
        (0, 16, 1 << 15),  # CPU coarse pass: every key
        ((mid >> 16) << 16, 0, 1 << 16),  # CPU fine pass inside one bucket
        ((mid >> 16) << 16, 8, 1 << 8),  # a coarser look inside one bucket
        (0, 20, 1 << 11),  # GPU passes: 11, 10, 10 bits
        ((mid >> 20) << 20, 10, 1 << 10),
        ((mid >> 10) << 10, 0, 1 << 10),
        (0, 13, 1 << 18),  # fp16 single pass
        (0, 16, 1 << 10),  # only the small keys
        (mid, 0, 1),  # ties of one key
        (mid + 1, 0, 1),  # a key no bf16/fp16 value has
        (0, 0, 1),  # zeros
        (inf, 0, 1),  # inf alone
        ((inf >> 16) << 16, 0, 1 << 16),  # the inf/NaN bucket
        (inf, 0, 2),  # inf and NaN
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_kernel_and_cpu_routes_equal_reference(dtype, n):
    x = awkward((n,), dtype, seed=n)
    for lo, shift, nbins in windows(x):
        ref = abs_histogram_torch(x, lo, shift, nbins)
        for use_triton in (False, True):
            h = abs_histogram(x, lo, shift, nbins, use_triton=use_triton)
            assert torch.equal(h, ref), (dtype, n, lo, shift, nbins, use_triton, torch.nonzero(h != ref)[:5].tolist())
        assert int(ref.sum()) <= n


def test_given_keys():
    x = torch.zeros(5000)
    keys = random_keys(x.shape, 0, "w")
    for lo, shift, nbins in [(0, 20, 2048), (int(keys[3]), 0, 1), ((int(keys[9]) >> 16) << 16, 0, 65536)]:
        ref = abs_histogram(x, lo, shift, nbins, keys=keys, use_triton=False)
        out = abs_histogram(x, lo, shift, nbins, keys=keys, use_triton=True)
        assert torch.equal(out, ref) and int(ref.sum()) >= 1


def test_reference_by_hand():
    x = torch.tensor([0.0, -0.0, 1.0, -1.0, 2.0, 0.5, float("nan")])
    one = int(abs_key(torch.tensor(1.0)))
    assert abs_histogram_torch(x, one, 0, 1).tolist() == [2]  # ±1
    h = abs_histogram_torch(x, 0, 16, 1 << 15)
    assert int(h.sum()) == 7 and int(h[0]) == 2 and int(h[0x7F80]) == 1  # ±0 in bin 0; NaN beside inf
    with pytest.raises(ValueError, match="power of two"):
        abs_histogram(x, 0, 0, 3, use_triton=False)


@pytest.mark.gpu
def test_more_than_2_31_elements_on_gpu():
    x = torch.randn(2**31 + 5, dtype=torch.float16, device="cuda")
    for lo, shift, nbins in [(0, 20, 2048), (int(abs_key(x[:1])[0]), 0, 1)]:
        ref = abs_histogram(x, lo, shift, nbins, use_triton=False)
        h = abs_histogram(x, lo, shift, nbins, use_triton=True)
        assert torch.equal(h, ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_routes_are_taken_and_sum_over_pieces(dtype):
    from modelsurgeon.ops.prune.abs_histogram import KeyHistogram

    x = awkward((3000,), dtype)
    mid = int(abs_key(x)[5])
    for lo, shift, nbins in [(0, 16, 1 << 15), ((mid >> 16) << 16, 0, 1 << 16), (mid, 0, 1)]:
        acc = KeyHistogram(lo, shift, nbins, use_triton=False)
        for piece in x.split(1000):
            assert acc._add_cpu(piece)  # the pattern-counting route, for every dtype and these windows
        assert torch.equal(acc.result(), abs_histogram_torch(x, lo, shift, nbins))
