"""Projections: unit-norm columns, nested across d for a fixed seed, reproducible from the seed, and
autograd equal to P^T g (gradcheck in float64 on the CPU)."""

from __future__ import annotations

import pytest
import torch

from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.intrinsic.projections import PROJECTIONS, make_projection, resolve_kind

KINDS = ["dense", "sparse", "fastfood"]


def matrix(proj) -> torch.Tensor:
    """P (D x d), column by column."""
    eye = torch.eye(proj.d)
    with torch.no_grad():
        return torch.stack([proj(eye[j]) for j in range(proj.d)], dim=1)


@pytest.mark.parametrize("kind", KINDS)
def test_nested_across_d(kind):
    D = 777
    small, large = make_projection(kind, D, 13, seed=5, device="cpu"), make_projection(kind, D, 150, seed=5, device="cpu")
    Ps, Pl = matrix(small), matrix(large)
    assert torch.equal(Ps, Pl[:, :13]), f"{kind}: the first 13 columns at d = 150 differ from P at d = 13"
    # crossing a 64-column chunk boundary (dense/sparse draw 64 columns per seed) keeps the property
    mid = matrix(make_projection(kind, D, 70, seed=5, device="cpu"))
    assert torch.equal(mid, Pl[:, :70])


@pytest.mark.parametrize("kind", KINDS)
def test_seed_reproduces_and_differs(kind):
    a = matrix(make_projection(kind, 300, 20, seed=1, device="cpu"))
    b = matrix(make_projection(kind, 300, 20, seed=1, device="cpu"))
    c = matrix(make_projection(kind, 300, 20, seed=2, device="cpu"))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_dense_and_sparse_columns_have_unit_norm(kind):
    P = matrix(make_projection(kind, 5000, 100, seed=0, device="cpu"))
    assert torch.allclose(P.norm(dim=0), torch.ones(100), atol=1e-5)


def test_sparse_density_is_one_over_sqrt_D():
    proj = make_projection("sparse", 10_000, 50, seed=0, device="cpu")
    P = matrix(proj)
    per_col = (P != 0).sum(0).float()
    assert proj.k == 100
    assert per_col.max() <= 100 and per_col.mean() > 99  # duplicates are merged, rarely


def test_fastfood_columns_have_unit_norm():
    # D = L: the columns of H G Pi H B scaled by 1/sqrt(L sum G^2) have norm exactly 1
    P = matrix(make_projection("fastfood", 1024, 64, seed=0, device="cpu"))
    assert torch.allclose(P.norm(dim=0), torch.ones(64), atol=1e-5)
    # D < L: keeping the first D rows leaves norm 1 in expectation; the deviation shrinks like
    # sqrt((L - D) / (L D)); at D = 5000, L = 8192 that is ~0.9 %, so 4 % is > 4 sigma
    P = matrix(make_projection("fastfood", 5000, 64, seed=0, device="cpu"))
    norms = P.norm(dim=0)
    assert (norms - 1).abs().max() < 0.04, norms
    assert abs(float(norms.pow(2).mean()) - 1) < 0.01


@pytest.mark.parametrize("kind", KINDS)
def test_backward_is_P_transpose_g(kind):
    proj = make_projection(kind, 500, 40, seed=3, device="cpu")
    P = matrix(proj)
    x = torch.randn(40, requires_grad=True)
    g = torch.randn(500)
    (proj(x) * g).sum().backward()
    assert torch.allclose(x.grad, P.T @ g, atol=1e-5)
    assert torch.allclose(proj(x.detach()), P @ x.detach(), atol=1e-5)


@pytest.mark.parametrize("kind", ["sparse", "fastfood"])
def test_gradcheck_float64(kind):
    proj = make_projection(kind, 200, 9, seed=0, device="cpu")
    x = torch.randn(9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: proj(t), (x,))


def test_dense_memory_guard_and_bounds():
    with pytest.raises(SurgeonError, match="dense projection at d = 1000 needs"):
        make_projection("dense", 10_000_000, 1000, seed=0, device="cpu", max_bytes=1 << 30)
    with pytest.raises(SurgeonError, match="between 1 and D"):
        make_projection("sparse", 10, 11, seed=0, device="cpu")


def test_registry_and_auto():
    assert set(PROJECTIONS) == {"dense", "sparse", "fastfood"}
    assert resolve_kind("auto", torch.device("cpu")) == "sparse"
    assert resolve_kind("auto", torch.device("cuda")) == "fastfood"
    with pytest.raises(SurgeonError, match="unknown projection"):
        resolve_kind("gaussian", torch.device("cpu"))


def test_settings_record_what_reproduces_P():
    s = make_projection("fastfood", 1000, 10, seed=7, device="cpu").settings()
    assert s["kind"] == "fastfood" and s["L"] == 1024 and s["seed"] == 7 and s["d"] == 10 and s["D"] == 1000
    assert "mt19937" in s["rng"] and "randperm" in s["rng"]
