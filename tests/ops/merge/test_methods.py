"""Merge methods on small tensors: hand-computed values (notes/merge.md §5) and properties."""

from __future__ import annotations

import math

import pytest
import torch

from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.merge import sparsify
from modelsurgeon.ops.merge.methods import REGISTRY, MergeInputs, MergeMethod, get_method, register


def merge(method: str, base, tensors, params=None, model_params=None, seed: int = 0, name: str = "w"):
    """Run a registered method with its defaults filled in, the way the engine calls it."""
    m = get_method(method)
    p = {x.name: x.default for x in m.params}
    p.update(params or {})
    mps = model_params if model_params is not None else [{} for _ in tensors]
    mps = [{**{x.name: x.default for x in m.model_params}, **mp} for mp in mps]
    ts = [torch.as_tensor(x, dtype=torch.float32) for x in tensors]
    b = None if base is None else torch.as_tensor(base, dtype=torch.float32)
    gen = lambda i, block=0: torch.Generator().manual_seed(seed * 1000 + i * 100 + block)  # noqa: E731
    return m.fn(MergeInputs(name, ts, b, p, mps, generator=gen))


def close(a, b, atol=1e-4):
    a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
    assert a.shape == b.shape and torch.allclose(a, b, atol=atol), f"\n{a}\n!=\n{b}"


T1, T2, T3 = [0.5, -0.1, 0.3, 0, -0.6], [-0.4, 0.2, 0.1, 0.05, -0.2], [0.3, -0.3, -0.2, 0, 0.4]
ZERO5 = [0.0] * 5


# --- TIES (§5)


def test_ties_hand_computed():
    # keep 3 of 5 per task (density 0.6): trimmed [.5,0,.3,0,-.6] [-.4,.2,0,0,-.2] [.3,-.3,0,0,.4]; signs [+,-,+,0,-]
    out = merge("ties", ZERO5, [T1, T2, T3], model_params=[{"weight": 1, "density": 0.6}] * 3)
    close(out, [0.4, -0.3, 0.3, 0, -0.4])


def test_ties_weighted_normalized_like_mergekit():
    mps = [{"weight": 1, "density": 0.6}, {"weight": 0.5, "density": 0.6}, {"weight": 0.5, "density": 0.6}]
    close(merge("ties", ZERO5, [T1, T2, T3], model_params=mps), [0.4333, -0.3, 0.3, 0, -0.4667])


def test_ties_adds_to_the_base_and_scales_by_lambda():
    base = [1.0, 2.0, 3.0, 4.0, 5.0]
    tv = [[b + d for b, d in zip(base, t)] for t in (T1, T2, T3)]
    out = merge("ties", base, tv, {"lambda": 2.0}, [{"weight": 1, "density": 0.6}] * 3)
    close(out, [b + 2 * d for b, d in zip(base, [0.4, -0.3, 0.3, 0, -0.4])])


def test_sign_election_property():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4000, generator=g)
    xs = [base + torch.randn(4000, generator=g) for _ in range(4)]
    ws = [1.0, 0.5, 2.0, 0.7]
    out = merge("ties", base, xs, model_params=[{"weight": w, "density": 0.4} for w in ws])
    trimmed = [w * sparsify.magnitude(x - base, 0.4, False) for x, w in zip(xs, ws)]
    elected = torch.where(sum(trimmed) >= 0, 1.0, -1.0)
    merged = out - base
    nonzero = merged.abs() > 1e-6
    assert nonzero.float().mean() > 0.5
    # every changed entry moved in the elected direction, and only agreeing deltas contributed
    assert torch.equal(torch.sign(merged[nonzero]), elected[nonzero])
    agree = [(torch.sign(t) == elected) for t in trimmed]
    num = sum(torch.where(a, t, 0) for a, t in zip(agree, trimmed))
    den = sum(a.float() * w for a, w in zip(agree, ws))
    close(merged, num / torch.where(den == 0, 1, den), atol=1e-5)


# --- sparsifiers


@pytest.mark.parametrize("n,density", [(1000, 0.3), (997, 0.55), (7, 0.5), (1, 1.0)])
def test_magnitude_keeps_exactly_int_density_n(n, density):
    d = torch.randn(n, generator=torch.Generator().manual_seed(n))
    out = sparsify.magnitude(d.clone(), density, rescale=False)
    k = int(density * n)
    assert int((out != 0).sum()) == k
    if 0 < k < n:  # the kept ones are the largest
        assert out.abs()[out != 0].min() >= d.abs()[out == 0].max()


def test_magnitude_ties_are_broken_by_position():
    d = torch.tensor([1.0, 2.0, 2.0, 2.0, 3.0, 0.0])
    assert sparsify.top_k_mask(d, 3).tolist() == [False, True, True, False, True, False]
    q = torch.randint(0, 5, (3_000_000,), generator=torch.Generator().manual_seed(0)).float()  # heavy ties, big
    assert int(sparsify.top_k_mask(q, 1_000_001).sum()) == 1_000_001


@pytest.mark.parametrize("k", [1, 2, 500_000, 1_499_999, 1_500_000])
def test_kth_largest_sampled_path_is_exact(k):
    x = torch.randn(1_500_000, generator=torch.Generator().manual_seed(1))  # above the sampling threshold
    assert sparsify.kth_largest(x, k) == torch.kthvalue(x, x.numel() - k + 1).values


def test_l1_rescale_keeps_the_norm():
    d = torch.randn(5000, generator=torch.Generator().manual_seed(2))
    for out in (
        sparsify.magnitude(d.clone(), 0.2, True),
        sparsify.random(d.clone(), 0.2, True, lambda b: torch.Generator().manual_seed(b)),
        sparsify.della(d.clone(), 0.3, True, 0.1, lambda b: torch.Generator().manual_seed(b)),
    ):
        assert math.isclose(float(out.abs().sum()), float(d.abs().sum()), rel_tol=1e-5)


def test_dare_properties():
    d = torch.randn(200_000, generator=torch.Generator().manual_seed(3))
    gen = lambda seed: lambda b: torch.Generator().manual_seed(seed * 100 + b)  # noqa: E731
    out = sparsify.random(d.clone(), 0.3, True, gen(7))
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.005
    ratio = out[kept] / d[kept]  # every survivor scaled by the same factor, about 1/density
    assert torch.allclose(ratio, ratio[0].expand_as(ratio)) and abs(ratio[0].item() - 1 / 0.3) < 0.05
    again = sparsify.random(d.clone(), 0.3, True, gen(7))
    other = sparsify.random(d.clone(), 0.3, True, gen(8))
    assert torch.equal(out, again) and not torch.equal(out, other)
    assert torch.equal(sparsify.random(d.clone(), 1.0, True, gen(0)), d)  # density 1: identity


def test_breadcrumbs_count_and_band():
    d = torch.randn(1000, generator=torch.Generator().manual_seed(4))
    out = sparsify.magnitude_outliers(d.clone(), 0.9, False, 0.01)
    assert int((out != 0).sum()) == 900  # int(density * N), as mergekit's test_outliers
    order = d.abs().argsort()
    assert (out[order[-10:]] == 0).all()  # the 10 largest (gamma) are gone
    assert (out[order[:90]] == 0).all() and (out[order[90:990]] != 0).all()


def test_breadcrumbs_small_tensor_is_not_zeroed():
    # mergekit's bug: int(gamma * N) == 0 makes its slice [n_bot:-0] empty and zeroes the whole tensor
    d = torch.randn(50, generator=torch.Generator().manual_seed(5))
    out = sparsify.magnitude_outliers(d.clone(), 0.5, False, 0.01)
    assert int((out != 0).sum()) == 25
    assert out.abs()[out != 0].min() >= d.abs()[out == 0].max()


def test_della_keep_probability_rises_with_rank():
    d = torch.linspace(0.01, 1, 1000).repeat(200, 1)  # rows sorted by magnitude
    out = sparsify.della(d.clone(), 0.5, False, 0.2, lambda b: torch.Generator().manual_seed(b))
    kept = (out != 0).float()
    assert abs(kept.mean().item() - 0.5) < 0.01
    assert abs(kept[:, :100].mean().item() - (0.3 + 0.4 * 0.05)) < 0.02  # p = 0.3 + 0.4 * rank/999
    assert abs(kept[:, -100:].mean().item() - (0.3 + 0.4 * 0.95)) < 0.02


# --- linear, task arithmetic


def test_linear_weighted_average_and_unnormalized_sum():
    close(merge("linear", None, [[1.0, 2.0], [3.0, 4.0]], model_params=[{"weight": 1}, {"weight": 3}]), [2.5, 3.5])
    out = merge("linear", None, [[1.0, 2.0], [3.0, 4.0]], {"normalize": False}, [{"weight": 1}, {"weight": 3}])
    close(out, [10.0, 14.0])


def test_task_arithmetic_is_base_plus_lambda_weighted_sum():
    base = [1.0, 1.0]
    out = merge("task_arithmetic", base, [[2.0, 1.0], [1.0, 3.0]], {"lambda": 0.5}, [{"weight": 1}, {"weight": 2}])
    close(out, [1 + 0.5 * (1 + 0), 1 + 0.5 * (0 + 2 * 2)])


def test_dare_linear_density_one_is_task_arithmetic():
    g = torch.Generator().manual_seed(6)
    base = torch.randn(100, generator=g)
    xs = [base + torch.randn(100, generator=g) for _ in range(2)]
    mps = [{"weight": 0.3}, {"weight": 0.9}]
    close(merge("dare_linear", base, xs, model_params=mps), merge("task_arithmetic", base, xs, model_params=mps), atol=1e-6)


# --- SLERP family, model stock, nearswap, passthrough


def test_slerp_hand_computed_and_colinear_fallback():
    close(merge("slerp", [1.0, 0, 0], [[0, 2.0, 0]], {"t": 0.5}), [0.7071, 1.4142, 0])
    close(merge("slerp", [1.0, 1.0], [[2.0, 2.0]], {"t": 0.25}), [1.25, 1.25])  # |cos| > 0.9995: lerp
    close(merge("slerp", [1.0, 0, 0], [[0, 2.0, 0]], {"t": 0.0}), [1.0, 0, 0])
    close(merge("slerp", [1.0, 0, 0], [[0, 2.0, 0]], {"t": 1.0}), [0, 2.0, 0])


def test_nuslerp_weights_and_task_vectors():
    # t = w2 / (w1 + w2) = 0.5: same as slerp halfway
    close(merge("nuslerp", None, [[1.0, 0], [0, 2.0]], model_params=[{"weight": 1}, {"weight": 1}]), [0.7071, 1.4142])
    # with a base: base + nuslerp of the task vectors
    out = merge("nuslerp", [1.0, 1.0], [[2.0, 1.0], [1.0, 3.0]], model_params=[{"weight": 1}, {"weight": 1}])
    close(out, [1 + 0.7071, 1 + 1.4142])
    # row-wise (not flattened): each row interpolated on its own; colinear rows fall back to lerp
    x0, x1 = [[1.0, 0], [1.0, 1.0]], [[0, 2.0], [2.0, 2.0]]
    out = merge("nuslerp", None, [x0, x1], {"nuslerp_flatten": False}, [{"weight": 1}, {"weight": 1}])
    close(out, [[0.7071, 1.4142], [1.5, 1.5]])


def test_model_stock_hand_computed():
    out = merge("model_stock", [0.0, 0.0], [[1.0, 0.0], [1.0, 1.0]])
    close(out, [0.8284, 0.4142])  # cos = .7071, t = 2c / (1 + c) = .8284
    close(merge("model_stock", [1.0, 1.0], [[2.0, 1.0], [1.0, 2.0]]), [1.0, 1.0])  # orthogonal offsets: t = 0


def test_nearswap_hand_computed():
    close(merge("nearswap", [0.0, 0.0, 0.0], [[0.001, 0.01, 1.0]], {"t": 0.005}), [0.001, 0.005, 0.005], atol=1e-6)


def test_passthrough_scale():
    close(merge("passthrough", None, [[1.0, -2.0]]), [1.0, -2.0])
    close(merge("passthrough", None, [[1.0, -2.0]], model_params=[{"scale": 0.5}]), [0.5, -1.0])


# --- PCB-Merging


def _pcb_reference(base, xs, ratio, rho, lam, weights):
    """The authors' code form (notes/merge.md §3.5), transliterated with sorts over a [tasks, d] matrix."""
    T = torch.stack([x - base for x in xs])
    n, d = T.shape

    def clampq(x, a, b):
        s = torch.sort(x, dim=1).values
        return torch.clamp(x, s[:, int(d * a)].unsqueeze(1), s[:, int(d * (1 - b) - 1)].unsqueeze(1))

    def N(x):
        lo, hi = x.min(1, keepdim=True).values, x.max(1, keepdim=True).values
        return (x - lo) / (hi - lo)

    A = clampq(T.abs(), rho, rho)
    Tc = torch.sign(T) * A
    beta = torch.exp(n * N(A) ** 2) * torch.tanh(T * T.sum(0))
    S = N(clampq(beta, 1 - ratio, 0))
    w = torch.tensor(weights)[:, None]
    return base + lam * (Tc * w * S).sum(0) / S.sum(0).clamp(min=1e-12)


def test_pcb_matches_the_authors_formula():
    g = torch.Generator().manual_seed(9)
    base = torch.randn(400, generator=g)
    xs = [base + torch.randn(400, generator=g) * s for s in (0.1, 0.3, 0.2)]
    params = {"pcb_ratio": 0.2, "clip_ratio": 0.01, "lambda": 1.3}
    out = merge("pcb", base, xs, params, [{"weight": 1.0}, {"weight": 0.8}, {"weight": 1.2}])
    close(out, _pcb_reference(base, xs, 0.2, 0.01, 1.3, [1.0, 0.8, 1.2]), atol=1e-5)
    # only about the top pcb_ratio of each task survives the drop
    assert (out - base).abs().gt(0).float().mean() < 0.2 * 3 + 0.01


def test_pcb_constant_task_vector_does_not_produce_nan():
    base = torch.zeros(10)
    out = merge("pcb", base, [base.clone(), base + 1.0])
    assert torch.isfinite(out).all()


# --- registry


def test_registry_has_the_methods_with_summary_and_paper():
    for name in (
        "linear",
        "task_arithmetic",
        "ties",
        "dare_ties",
        "dare_linear",
        "breadcrumbs",
        "breadcrumbs_ties",
        "della",
        "della_linear",
        "slerp",
        "nuslerp",
        "model_stock",
        "passthrough",
        "pcb",
    ):
        m = REGISTRY[name]
        assert m.summary and m.paper.startswith("https://")
    # mergekit's defaults: ties normalizes, dare_ties does not, dare_* and della* rescale
    d = lambda m, p: REGISTRY[m].param(p).default  # noqa: E731
    assert d("ties", "normalize") and not d("dare_ties", "normalize") and d("dare_ties", "rescale")
    assert d("della", "normalize") and not d("della_linear", "normalize") and not d("breadcrumbs", "rescale")
    assert d("breadcrumbs", "gamma") == 0.01 and d("della", "epsilon") == 0.15 and d("linear", "normalize")


def test_registry_refuses_duplicates_and_lists_known_names():
    with pytest.raises(ValueError, match="already registered"):
        register(MergeMethod("ties", "x", "https://x", lambda i: i.base, "required", 1, None))
    with pytest.raises(SurgeonError, match="did you mean dare_ties.*known merge methods: linear, task_arithmetic"):
        get_method("dare-ties")


def test_methods_keep_float64_and_upcast_half_inputs():
    xs = [torch.ones(4, dtype=torch.bfloat16), torch.full((4,), 3.0, dtype=torch.bfloat16)]
    out = get_method("linear").fn(MergeInputs("w", list(xs), None, {"normalize": True}, [{"weight": 1.0}, {"weight": 1.0}]))
    assert out.dtype == torch.float32 and torch.equal(out, torch.full((4,), 2.0))
    ties = get_method("ties")
    p = {x.name: x.default for x in ties.params}
    inp = MergeInputs(
        "w", [torch.ones(3, dtype=torch.float64)], torch.zeros(3, dtype=torch.float64), p, [{"weight": 1.0, "density": 1.0}]
    )
    assert ties.fn(inp).dtype == torch.float64


# --- the streamed task-vector family equals the whole-tensor formulas (mergekit's, stacked)


def _gta_reference(base, xs, mps, params, consensus, sparsifier, gens):
    deltas = []
    for i, (x, mp) in enumerate(zip(xs, mps)):
        d = x.float() - base.float()
        gen = lambda block, i=i: gens(i, block)  # noqa: E731
        if sparsifier == "magnitude":
            d = sparsify.magnitude(d, mp["density"], params["rescale"])
        elif sparsifier == "random":
            d = sparsify.random(d, mp["density"], params["rescale"], gen)
        elif sparsifier == "magnitude_outliers":
            d = sparsify.magnitude_outliers(d, mp["density"], params["rescale"], mp["gamma"])
        elif sparsifier == "della":
            d = sparsify.della(d, mp["density"], params["rescale"], mp["epsilon"], gen)
        deltas.append(d)
    D = torch.stack(deltas)
    W = torch.tensor([mp["weight"] for mp in mps]).reshape(-1, *([1] * base.dim()))
    WD = D * W
    if consensus:
        majority = torch.where(WD.sum(0) >= 0, 1.0, -1.0)
        mask = torch.sign(WD) == majority
        mixed, div = (WD * mask).sum(0), (W * mask).sum(0)
        div[div == 0] = 1
    else:
        mixed, div = WD.sum(0), W.sum()
        div = div if abs(div) >= 1e-8 else torch.tensor(1.0)
    if params["normalize"]:
        mixed = mixed / div
    return base.float() + params["lambda"] * mixed


@pytest.mark.parametrize(
    "method", ["task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear"]
)
@pytest.mark.parametrize("rescale", [False, True])
def test_streamed_family_equals_the_stacked_formula(method, rescale):
    g = torch.Generator().manual_seed(11)
    base = torch.randn(37, 53, generator=g).bfloat16()  # bf16: many equal |delta|, ties at the thresholds
    xs = [(base.float() + 0.05 * torch.randn(37, 53, generator=g)).bfloat16() for _ in range(3)]
    mps = [{"weight": w, "density": d, "gamma": 0.05, "epsilon": 0.1} for w, d in ((1.0, 0.3), (-0.5, 0.6), (0.8, 0.45))]
    m = get_method(method)
    params = {"int8_mask": False, "normalize": True, "rescale": rescale, "lambda": 0.9}
    gens = lambda i, block=0: torch.Generator().manual_seed(100 + 10 * i + block)  # noqa: E731
    want = _gta_reference(base, xs, mps, params, m.settings["consensus"], m.settings["sparsifier"], gens)
    for chunk in (7, 1000, 1 << 18):  # chunks split rows, ties and the tensor's end anywhere
        got = m.fn(MergeInputs("w", list(xs), base, params, [dict(mp) for mp in mps], generator=gens, chunk=chunk))
        if rescale and m.settings["sparsifier"]:
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), method
        else:
            assert torch.equal(got, want), (method, chunk, (got - want).abs().max())


def test_streamed_selection_falls_back_when_the_sample_misleads():
    # a tensor whose strided sample sees only zeros while the tail holds the large values
    n = 1 << 17
    base = torch.zeros(n)
    x = torch.zeros(n)
    x[1::2] = torch.arange(1, n // 2 + 1, dtype=torch.float32)  # every sampled (even) position is 0
    out = get_method("ties").fn(
        MergeInputs(
            "w",
            [x],
            base,
            {"int8_mask": False, "normalize": True, "rescale": False, "lambda": 1.0},
            [{"weight": 1.0, "density": 0.25}],
            chunk=4096,
        )
    )
    assert int((out != 0).sum()) == n // 4 and out.max() == n // 2
