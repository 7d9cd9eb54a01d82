"""threshold_mask: Triton kernel == torch reference, exactly, across dtypes, shapes, ties and tie cuts."""

from __future__ import annotations

import pytest
import torch
from mask_cases import DTYPES, assert_equal, awkward

from modelsurgeon.ops.prune.keys import abs_key, random_keys
from modelsurgeon.ops.prune.threshold_mask import threshold_mask

SHAPES = [
    (1, 1),  # one element
    (1, 2047),  # less than one block (BLOCK = 2048)
    (1, 2049),  # spills into a second block
    (3, 4099),  # several rows, each spilling
    (7, 13),  # odd sizes, many tiny rows
    (2, 0),  # empty rows
]


def thresholds(x: torch.Tensor, seed: int):
    """Per-row thresholds taken from real keys (so ties exist), plus keep-all and prune-all rows, and tie cuts."""
    rows, cols = x.shape
    g = torch.Generator().manual_seed(seed)
    k = abs_key(x) if x.numel() else torch.zeros(rows, 1, dtype=torch.int32)
    pick = torch.randint(0, max(cols, 1), (rows,), generator=g)
    t = k[torch.arange(rows), pick.clamp(max=max(k.shape[1] - 1, 0))].to(torch.int32)
    t[0] = -1 if rows > 1 else t[0]
    if rows > 2:
        t[2] = int(abs_key(torch.tensor(float("nan"))))  # above everything but NaN
    cut = torch.randint(0, cols + 1, (rows,), generator=g)
    if rows > 1:
        cut[1] = cols  # every tie pruned
    return t, cut


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_kernel_equals_reference(dtype, shape):
    x = awkward(shape, dtype, seed=shape[1])
    for seed in range(3):
        t, cut = thresholds(x, seed)
        ref, ref_kept = threshold_mask(x, t, cut, use_triton=False)
        out, kept = threshold_mask(x, t, cut, use_triton=True)
        assert_equal(out, ref, f"{dtype} {shape} seed {seed}")
        assert int(kept) == int(ref_kept)


@pytest.mark.parametrize("dtype", DTYPES)
def test_given_keys_and_in_place(dtype):
    x = awkward((5, 3001), dtype, seed=1)
    keys = random_keys(x.shape, 0, "w")
    t = keys[:, 1500].clone()
    cut = torch.tensor([0, 3001, 17, 2999, 1500])
    ref, ref_kept = threshold_mask(x, t, cut, keys=keys, use_triton=False)
    y = x.clone()
    out, kept = threshold_mask(y, t, cut, keys=keys, out=y, use_triton=True)
    assert out.data_ptr() == y.data_ptr()
    assert_equal(out, ref, f"{dtype} keys in place")
    assert int(kept) == int(ref_kept)


def test_reference_semantics_by_hand():
    x = torch.tensor([[0.5, -0.5, 2.0, 0.5, 0.0, -3.0]])
    t = abs_key(torch.tensor([0.5])).to(torch.int32)
    for cut, expect in [
        (0, [0.5, -0.5, 2.0, 0.5, 0.0, -3.0]),
        (2, [0.0, 0.0, 2.0, 0.5, 0.0, -3.0]),
        (6, [0.0, 0.0, 2.0, 0.0, 0.0, -3.0]),
    ]:
        out, kept = threshold_mask(x, t, torch.tensor([cut]), use_triton=False)
        assert out.tolist() == [expect] and int(kept) == 6 - {0: 1, 2: 3, 6: 4}[cut]


@pytest.mark.gpu
def test_more_than_2_31_elements_on_gpu():
    n = 2**31 + 4099
    x = torch.randn(1, n, dtype=torch.float16, device="cuda")
    k = abs_key(x[:, :1024])
    t = k[:, 7].to(torch.int32)
    cut = torch.tensor([n - 1000], device="cuda")  # ties cut beyond 2^31: the column index must be int64
    ref, ref_kept = threshold_mask(x, t, cut, use_triton=False)
    out, kept = threshold_mask(x, t, cut, use_triton=True)
    assert int(kept) == int(ref_kept)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_route_equals_reference(dtype):
    from modelsurgeon.ops.prune.threshold_mask import _fast_cpu, threshold_mask_torch

    x = awkward((1, 5003), dtype, seed=4)
    keys = abs_key(x).view(-1)
    candidates = [-1, 0, 1, int(keys[10]), int(keys[100]), int(keys[100]) + 1, int(abs_key(torch.tensor(0.5)))]
    for t in candidates:
        for cut in (0, 1, 2500, 5003):
            tt, cc = torch.tensor([t], dtype=torch.int32), torch.tensor([cut])
            ref, ref_kept = threshold_mask_torch(x, tt, cc)
            fast = _fast_cpu(x, t, cut, None)
            assert fast is not None
            assert_equal(fast[0], ref, f"{dtype} t={t} cut={cut}")
            assert int(fast[1]) == int(ref_kept)
            out, kept = threshold_mask(x, tt, cc, use_triton=False)  # the dispatcher takes the route
            assert_equal(out, ref, "dispatch")
