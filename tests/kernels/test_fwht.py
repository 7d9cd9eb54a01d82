"""The Triton FWHT and fused Fastfood against the torch reference (``ops/intrinsic/fwht.py``).

Without a GPU these run under TRITON_INTERPRET=1 (set by conftest). The kernel performs the reference's
additions in the reference's order in float32, so fp32 and fp16 results are bit-identical. bf16 stores differ
by at most one bf16 ulp under the interpreter only: it truncates fp32 -> bf16 where the GPU rounds to nearest
even (the gpu-marked test checks exact equality there). ``block_log`` is shrunk so that small tensors already
take several passes (the Kronecker scheme used beyond 2^12 elements per row).
"""

from __future__ import annotations

import math

import pytest
import torch

from modelsurgeon.kernels import should_use_triton
from modelsurgeon.ops.intrinsic.fwht import fastfood_reference, fastfood_t_reference, fwht_reference

if not should_use_triton("cpu" if not torch.cuda.is_available() else "cuda", True):  # pragma: no cover
    pytest.skip("Triton cannot run here", allow_module_level=True)

from modelsurgeon.kernels.fwht import fastfood_t_triton, fastfood_triton, fwht_triton, pass_plan  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _diff(a, b) -> str:
    bad = (a.float() != b.float()).nonzero()[:5]
    return f"{int((a.float() != b.float()).sum())} differ; first: " + "; ".join(
        f"{tuple(i.tolist())}: {a[tuple(i)].item()} vs {b[tuple(i)].item()}" for i in bad
    )


SHAPES = [
    ((1,), 12),  # one element: no stage at all
    ((2,), 12),  # one butterfly
    ((3, 16), 12),  # several rows, one block
    ((5, 64), 3),  # 3 passes of 8 (blocks of 8 elements: spills into second and third pass)
    ((1, 256), 3),  # 3 passes, the last one of 4 with a wide (4 x 2) tile
    ((1, 4096), 12),  # exactly one full block
    ((2, 3, 128), 3),  # leading dims, 3 passes of unequal sizes (8, 8, 2)
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape,block_log", SHAPES)
def test_fwht_kernel_equals_reference_bitwise(shape, block_log, dtype):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype).to(DEV)
    got = fwht_triton(x, block_log=block_log)
    ref = fwht_reference(x)
    assert got.dtype == dtype and got.shape == x.shape
    assert torch.equal(got, ref), _diff(got, ref)


@pytest.mark.parametrize("shape,block_log", [((3, 64), 3), ((2, 2048), 12)])
def test_fwht_kernel_bf16_within_one_ulp(shape, block_log):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2)).bfloat16().to(DEV)
    got, ref = fwht_triton(x, block_log=block_log).float(), fwht_reference(x).float()
    ulp = torch.finfo(torch.bfloat16).eps * ref.abs().clamp_min(1e-30)
    assert ((got - ref).abs() <= ulp * 1.0001).all(), _diff(got, ref)


def test_pass_plan_covers_large_sizes_in_few_passes():
    assert [p[0] for p in pass_plan(1 << 24)] == [4096, 4096]
    assert [p[0] for p in pass_plan(1 << 26)] == [4096, 4096, 4]
    for n in (16, 20, 24, 26, 28):
        plan = pass_plan(1 << n)
        assert math.prod(p[0] for p in plan) == 1 << n
        assert all(N * T <= 4096 for N, _, T in plan)
        assert len(plan) == math.ceil(n / 12)


def _parts(L: int, D: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B = torch.randint(0, 2, (L,), generator=g).float() * 2 - 1
    perm = torch.randperm(L, generator=g)
    G = torch.randn(L, generator=g)
    scale = 1 / math.sqrt(D * float((G.double() ** 2).sum()))
    return B, perm, torch.argsort(perm), G, scale


@pytest.mark.parametrize(
    "L,D,d,block_log",
    [
        (16, 16, 16, 12),  # D = L = d, one pass
        (1024, 1000, 37, 12),  # D not a power of two, one pass
        (256, 200, 37, 3),  # 3 passes (8, 8, 4): pad, gather and scale fused into multi-pass transforms
        (2048, 1500, 1, 12),  # d = 1
    ],
)
def test_fused_fastfood_equals_reference_bitwise(L, D, d, block_log):
    B, perm, inv, G, scale = _parts(L, D)
    x = torch.randn(1, d, generator=torch.Generator().manual_seed(3))
    got = fastfood_triton(x.to(DEV), B.to(DEV), perm.to(DEV), G.to(DEV), D, scale, block_log=block_log).cpu()
    ref = fastfood_reference(x, B, perm, G, D, scale)
    assert torch.equal(got, ref), _diff(got, ref)
    g = torch.randn(1, D, generator=torch.Generator().manual_seed(4))
    got_t = fastfood_t_triton(g.to(DEV), B.to(DEV), inv.to(DEV), G.to(DEV), d, scale, block_log=block_log).cpu()
    ref_t = fastfood_t_reference(g, B, inv, G, d, scale)
    assert torch.equal(got_t, ref_t), _diff(got_t, ref_t)


def test_int32_permutation_indices():
    B, perm, inv, G, scale = _parts(256, 200)
    x = torch.randn(9)
    a = fastfood_triton(x.to(DEV), B.to(DEV), perm.int().to(DEV), G.to(DEV), 200, scale).cpu()
    assert torch.equal(a, fastfood_reference(x, B, perm, G, 200, scale))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", [10, 16, 20, 24, 26])
def test_gpu_fwht_exact_at_large_sizes(n, dtype):
    x = torch.randn(1 << n, device="cuda").to(dtype)
    assert torch.equal(fwht_triton(x), fwht_reference(x))
