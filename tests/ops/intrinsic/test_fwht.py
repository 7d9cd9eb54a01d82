"""The FWHT reference and the CPU (Kronecker) path against scipy's Hadamard matrix; Fastfood against its
explicit matrix; gradients (the transform is its own transpose, unnormalised both ways)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.linalg import hadamard

from modelsurgeon.ops.intrinsic.fwht import (
    fastfood,
    fastfood_reference,
    fastfood_t,
    fastfood_t_reference,
    fwht,
    fwht_kron,
    fwht_reference,
    hadamard_matrix,
)


def _first_diff(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> str:
    bad = ((a - b).abs() > atol + rtol * b.abs()).nonzero()[:5]
    return "; ".join(f"{tuple(i.tolist())}: {a[tuple(i)].item()} vs {b[tuple(i)].item()}" for i in bad)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 64, 512])  # 1 = no stage; 512 = 9 stages
def test_reference_equals_scipy_hadamard(n):
    x = torch.randn(3, n, dtype=torch.float64)
    H = torch.tensor(hadamard(n), dtype=torch.float64)
    assert torch.allclose(fwht_reference(x), x @ H.T, atol=1e-12, rtol=0)
    assert torch.equal(hadamard_matrix(n, torch.float64), H)


@pytest.mark.parametrize("n", [2, 32, 64, 1024, 1 << 14])  # one factor, exactly one factor, two, three factors
def test_kron_path_equals_reference(n):
    x = torch.randn(2, 3, n)
    ref = fwht_reference(x)
    got = fwht_kron(x)
    tol = 1e-6 * math.sqrt(n) * 4
    assert torch.allclose(got, ref, atol=tol, rtol=1e-5), _first_diff(got, ref, tol, 1e-5)


def test_unnormalised_and_self_inverse_up_to_L():
    x = torch.randn(256, dtype=torch.float64)
    assert torch.allclose(fwht(fwht(x)), 256 * x)
    assert torch.allclose(fwht(x).norm(), math.sqrt(256) * x.norm())


def test_rejects_non_power_of_two():
    with pytest.raises(ValueError, match="power-of-two"):
        fwht_reference(torch.randn(12))


def test_fwht_gradient_is_the_transform_itself():
    x = torch.randn(2, 64, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fwht(t), (x,))
    g = torch.randn(2, 64, dtype=torch.float64)
    (fwht(x) * g).sum().backward()
    H = torch.tensor(hadamard(64), dtype=torch.float64)
    assert torch.allclose(x.grad, g @ H)  # not H / sqrt(L)


def _fastfood_parts(L: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B = torch.randint(0, 2, (L,), generator=g).float() * 2 - 1
    perm = torch.randperm(L, generator=g)
    G = torch.randn(L, generator=g)
    return B, perm, torch.argsort(perm), G


@pytest.mark.parametrize("D,d", [(64, 64), (100, 7), (1000, 37)])  # D = L; D < L; D just under 1024
def test_fastfood_equals_its_explicit_matrix(D, d):
    L = 1 << math.ceil(math.log2(D))
    B, perm, inv, G = _fastfood_parts(L)
    scale = 1 / math.sqrt(D * float((G.double() ** 2).sum()))
    H = torch.tensor(hadamard(L), dtype=torch.float64)
    M = scale * (H @ torch.diag(G.double()) @ torch.eye(L, dtype=torch.float64)[perm] @ H @ torch.diag(B.double()))
    P = M[:D, :d]
    x = torch.randn(d, dtype=torch.float64)
    assert torch.allclose(fastfood_reference(x, B, perm, G, D, scale), P @ x, atol=1e-10)
    assert torch.allclose(fastfood(x, B, perm, G, D, scale), P @ x, atol=1e-10)
    g = torch.randn(D, dtype=torch.float64)
    assert torch.allclose(fastfood_t_reference(g, B, inv, G, d, scale), P.T @ g, atol=1e-10)
    assert torch.allclose(fastfood_t(g, B, inv, G, d, scale), P.T @ g, atol=1e-10)
