"""Pruning selections against a sorting oracle: exact counts, the tie rule, zeros, random, plans."""

from __future__ import annotations

import pytest
import torch
from builders import write_checkpoint

from modelsurgeon.ops.core.errors import PlanError, SurgeonError, UsageError
from modelsurgeon.ops.prune import criteria as C
from modelsurgeon.ops.prune import select as P
from modelsurgeon.ops.prune.keys import abs_key, random_keys, resolution_shift
from modelsurgeon.ops.prune.plan import plan_prune
from modelsurgeon.ops.prune.run import PruneStream, count_nonzero
from modelsurgeon.ops.prune.threshold_mask import threshold_mask
from modelsurgeon.recipes.prune import PruneConfig

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def oracle_prune(xs: list[torch.Tensor], k: int, keys: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Zero the k smallest keys over all tensors, ties by (tensor order, flat index): a stable sort."""
    allkeys = torch.cat([(abs_key(x) if keys is None else kk).reshape(-1).to(torch.int64) for x, kk in zip(xs, keys or xs)])
    order = torch.sort(allkeys, stable=True).indices
    keep = torch.ones(allkeys.numel(), dtype=torch.bool)
    keep[order[:k]] = False
    out, s = [], 0
    for x in xs:
        m = keep[s : s + x.numel()].view(x.shape)
        out.append(torch.where(m, x, torch.zeros((), dtype=x.dtype)))
        s += x.numel()
    return out


def tied_values(shape, dtype, seed=0, levels=7, zeros=0.0):
    """Values with many exact ties (and optionally zeros): the hard case for an exact count."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randint(-levels, levels + 1, shape, generator=g).float() / levels).to(dtype)
    if zeros:
        x[torch.rand(shape, generator=g) < zeros] = 0
    return x


def assert_same(a: torch.Tensor, b: torch.Tensor, what=""):
    if not torch.equal(a, b):
        diff = torch.nonzero(a.reshape(-1) != b.reshape(-1)).view(-1)[:5]
        raise AssertionError(
            f"{what}: {diff.numel()}+ differ, first at {diff.tolist()}: {a.reshape(-1)[diff].tolist()} vs {b.reshape(-1)[diff].tolist()}"
        )


def prune_layer(x, sparsity, keys=None, chunk=None, use_triton=False):
    k = P.prune_count(sparsity, x.numel())
    triton = bool(use_triton)
    levels = P.select_levels(0 if keys is not None else resolution_shift([x.dtype]), triton)
    sel = P.radix_select(P.tensor_pieces(x, keys, chunk), k, levels, use_triton)
    out, kept = P.apply_selection(x.clone(), sel, P.cut_for(x, sel, keys), keys, chunk=chunk, use_triton=use_triton)
    return out, kept, k


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.97])
def test_layer_selection_matches_oracle(dtype, sparsity):
    cases = [
        torch.randn(37, 53).to(dtype),  # distinct values (mostly)
        tied_values((64, 40), dtype, zeros=0.2),  # heavy ties and zeros
        torch.randn(1, 1).to(dtype),  # one element
    ]
    for i, x in enumerate(cases):
        for chunk in (None, 257):  # whole tensor, and pieces that split ties across chunks
            out, kept, k = prune_layer(x, sparsity, chunk=chunk)
            assert kept == x.numel() - k
            assert_same(out, oracle_prune([x], k)[0], f"case {i} chunk {chunk}")


def test_triton_schedule_gives_the_same_selection():
    # the GPU runs three 11/10/10-bit passes, the CPU 15/16: same threshold and tie budget
    for x in (torch.randn(300, 70), tied_values((50, 50), torch.float32, zeros=0.3)):
        k = P.prune_count(0.6, x.numel())
        a = P.radix_select(P.tensor_pieces(x, None), k, P.select_levels(0, False), use_triton=False)
        b = P.radix_select(P.tensor_pieces(x, None), k, P.select_levels(0, True), use_triton=False)
        assert a == b or (a.budget is None and b.budget is None and _same_effect(x, a, b))


def _same_effect(x, a, b):
    return torch.equal(P.apply_selection(x, a, P.cut_for(x, a, None))[0], P.apply_selection(x, b, P.cut_for(x, b, None))[0])


def test_zeros_are_pruned_first_and_kept_when_more_than_k():
    x = torch.tensor([[0.0, 3.0, 0.0, -1.0, 0.0, 2.0, 0.0, 5.0]])
    out, kept, k = prune_layer(x, 0.25)  # k = 2 < 4 zeros: exactly the first two zeros are "pruned"
    assert k == 2 and kept == 6 and torch.equal(out, x)  # nothing nonzero was touched; still 4 zeros
    out, kept, k = prune_layer(x, 0.625)  # k = 5 > 4 zeros: the 4 zeros and the smallest nonzero
    assert torch.equal(out, torch.tensor([[0.0, 3.0, 0.0, 0.0, 0.0, 2.0, 0.0, 5.0]])) and kept == 3


def test_ties_are_broken_earlier_first():
    x = torch.tensor([[1.0, -1.0, 1.0, 1.0, 2.0, -1.0]])
    out, _, k = prune_layer(x, 0.5)
    assert k == 3 and torch.equal(out, torch.tensor([[0.0, 0.0, 0.0, 1.0, 2.0, -1.0]]))


def test_prune_count_rounds_half_up():
    assert [P.prune_count(0.5, n) for n in (1, 2, 3, 5)] == [1, 1, 2, 3]
    assert P.prune_count(0.3, 10) == 3 and P.prune_count(0.0, 10) == 0 and P.prune_count(0.999, 3) == 3


def test_row_selection_matches_oracle():
    for dtype in DTYPES:
        x = tied_values((9, 40), dtype, zeros=0.1)
        k = P.prune_count(0.5, 40)
        t, cut = P.row_selection(x, k)
        out, kept = threshold_mask(x, t, cut, use_triton=False)
        assert int(kept) == 9 * (40 - k)
        for r in range(9):
            assert_same(out[r : r + 1], oracle_prune([x[r : r + 1]], k)[0], f"row {r}")


def test_tie_cut_across_chunks():
    from modelsurgeon.ops.prune.threshold_mask import tie_cut

    x = torch.tensor([1.0, 2.0, 1.0, 1.0, 3.0, -1.0, 1.0])
    t = int(abs_key(torch.tensor(1.0)))
    assert [tie_cut(x, t, r, chunk=2) for r in (1, 2, 3, 4, 5)] == [1, 3, 4, 6, 7]
    with pytest.raises(ValueError):
        tie_cut(x, t, 6, chunk=3)


def test_proportional_counts_exact_and_order_free():
    numels = {"a": 10, "b": 7, "c": 3, "d": 1}
    c1 = P.proportional_counts(numels, 10)
    c2 = P.proportional_counts(dict(reversed(list(numels.items()))), 10)
    assert c1 == c2 and sum(c1.values()) == 10 and all(0 <= c1[n] <= numels[n] for n in numels)


def test_random_keys_are_reproducible_and_per_name():
    a = random_keys((5, 7), 0, "w")
    assert torch.equal(a, random_keys((5, 7), 0, "w"))
    assert not torch.equal(a, random_keys((5, 7), 1, "w")) and not torch.equal(a, random_keys((5, 7), 0, "v"))
    assert a.dtype == torch.int32 and int(a.min()) >= 0


# ------------------------------------------------------------------------------------------
# whole-checkpoint runs (ops level): global exactness against the oracle, ties across tensors


def run_plan(folder, use_triton=False, **flags):
    cfg = PruneConfig.build(None, **flags)
    with plan_prune(cfg, folder, device="cpu", use_triton=use_triton) as plan:
        run = PruneStream(plan)
        run.select()
        out = {n: t.clone() for n, t in run.tensors()}
    return out, run, plan


def make_ckpt(tmp_path, tensors, name="m"):
    return write_checkpoint(tmp_path / name, tensors)


@pytest.mark.parametrize(
    "dtypes",
    [[torch.float32] * 3, [torch.bfloat16] * 3, [torch.float16] * 3, [torch.float32, torch.bfloat16, torch.float16]],
    ids=["fp32", "bf16", "fp16", "mixed"],
)
def test_global_matches_oracle(tmp_path, monkeypatch, dtypes):
    monkeypatch.setattr(P, "CHUNK", 300)  # several pieces per tensor in every pass
    g = torch.Generator().manual_seed(1)
    xs = {
        "a.weight": (torch.randn(20, 32, generator=g) * 0.5).to(dtypes[0]),
        "b.weight": tied_values((16, 24), dtypes[1], seed=2, zeros=0.05) * 0.4,
        "c.weight": (torch.randn(8, 40, generator=g) * 2).to(dtypes[2]),
    }
    folder = make_ckpt(tmp_path, xs)
    out, run, plan = run_plan(folder, sparsity=0.55, scope="global")
    k = P.prune_count(0.55, sum(x.numel() for x in xs.values()))
    assert plan.pool_k == k and sum(r.pruned for r in run.results) == k
    expect = oracle_prune(list(xs.values()), k)
    for n, e in zip(xs, expect):
        assert_same(out[n], e, n)


def test_global_ties_split_across_tensors(tmp_path, monkeypatch):
    # every value is ±1 or ±2: the threshold key is shared by thousands of values in every tensor,
    # so exactly the right number of ties must go, the earlier tensors' first
    monkeypatch.setattr(P, "CHUNK", 100)
    xs = {f"l{i}.weight": tied_values((10, 30), torch.bfloat16, seed=i, levels=2) for i in range(4)}
    folder = make_ckpt(tmp_path, xs)
    for s in (0.3, 0.5, 0.71):
        out, run, plan = run_plan(folder, sparsity=s, scope="global")
        k = P.prune_count(s, 1200)
        expect = oracle_prune(list(xs.values()), k)
        for (n, _), e in zip(xs.items(), expect):
            assert_same(out[n], e, f"{n} at {s}")
        assert run.selection.budget is not None or s == 0.3  # a real partial tie at some sparsity


def test_global_with_triton_kernels_matches(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "CHUNK", 500)
    xs = {"a.weight": torch.randn(30, 40), "b.weight": tied_values((20, 20), torch.float32, zeros=0.2)}
    folder = make_ckpt(tmp_path, xs)
    ref, _, _ = run_plan(folder, sparsity=0.5, scope="global")
    tri, run, _ = run_plan(folder, use_triton=True, sparsity=0.5, scope="global")
    for n in xs:
        assert_same(tri[n], ref[n], n)


def test_layer_row_nm_random_through_run(tmp_path):
    g = torch.Generator().manual_seed(3)
    xs = {"a.weight": torch.randn(6, 16, generator=g), "b.weight": torch.randn(4, 8, generator=g).half()}
    folder = make_ckpt(tmp_path, xs)
    out, run, _ = run_plan(folder, sparsity=0.5)
    for n, x in xs.items():
        assert_same(out[n], oracle_prune([x], P.prune_count(0.5, x.numel()))[0], n)
    out, _, _ = run_plan(folder, sparsity=0.25, scope="row")
    for n, x in xs.items():
        k = P.prune_count(0.25, x.shape[1])
        for r in range(x.shape[0]):
            assert_same(out[n][r : r + 1], oracle_prune([x[r : r + 1]], k)[0], f"{n} row {r}")
    out, run, _ = run_plan(folder, pattern="2:4")
    for n, x in xs.items():
        groups = x.reshape(-1, 4)
        for gi in range(groups.shape[0]):
            assert_same(out[n].reshape(-1, 4)[gi : gi + 1], oracle_prune([groups[gi : gi + 1]], 2)[0], f"{n} group {gi}")
    assert all(r.nm_compliant for r in run.results)
    out1, _, _ = run_plan(folder, sparsity=0.5, method="random", seed=7)
    out2, _, _ = run_plan(folder, sparsity=0.5, method="random", seed=7)
    for n, x in xs.items():
        keys = random_keys(x.shape, 7, n)
        assert_same(out1[n], oracle_prune([x], P.prune_count(0.5, x.numel()), [keys])[0], n)
        assert torch.equal(out1[n], out2[n])


def test_random_is_independent_of_tensor_order(tmp_path):
    g = torch.Generator().manual_seed(0)
    xs = {f"l{i}.weight": torch.randn(8, 12, generator=g) for i in range(5)}
    a = make_ckpt(tmp_path, xs, "a")
    b = make_ckpt(tmp_path, dict(reversed(list(xs.items()))), "b")
    for scope in ("layer", "global", "row"):
        oa, _, _ = run_plan(a, sparsity=0.4, method="random", seed=3, scope=scope)
        ob, _, _ = run_plan(b, sparsity=0.4, method="random", seed=3, scope=scope)
        for n in xs:
            assert torch.equal(oa[n], ob[n]), (scope, n)
    oa, run, _ = run_plan(a, sparsity=0.4, method="random", seed=3, scope="global")
    assert sum(r.pruned for r in run.results) == P.prune_count(0.4, 5 * 96)


def test_recipe_overrides_and_global_pool(tmp_path):
    xs = {"keep.weight": torch.randn(4, 8), "half.weight": torch.randn(4, 8), "light.weight": torch.randn(8, 8)}
    folder = make_ckpt(tmp_path, xs)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 2\nsparsity: 0.5\nscope: global\noverrides:\n"
        "  - {match: 'light|keep', sparsity: 0.25}\n  - {match: '^keep', sparsity: 0}\n"
    )
    cfg = PruneConfig.build(recipe)
    assert cfg.sparsity_for("keep.weight") == 0 and cfg.sparsity_for("light.weight") == 0.25
    with plan_prune(cfg, folder) as plan:
        modes = {t.name: (t.mode, t.k) for t in plan.targets}
        assert modes == {"keep.weight": ("layer", 0), "half.weight": ("global", 0), "light.weight": ("layer", 16)}
        assert plan.pool_k == 16
    assert PruneConfig.build(recipe, sparsity=0.6).sparsity == 0.6  # flags win over the recipe


def test_bad_configs():
    with pytest.raises(UsageError, match=r"\[0, 1\)"):
        PruneConfig.build(None, sparsity=1.0)
    with pytest.raises(UsageError, match="N:M"):
        PruneConfig.build(None, pattern="2-4")
    with pytest.raises(UsageError, match="0 < N < M"):
        PruneConfig.build(None, pattern="4:4")
    with pytest.raises(UsageError, match="mutually exclusive"):
        PruneConfig.build(None, pattern="2:4", scope="row")
    with pytest.raises(UsageError, match="contradicts"):
        PruneConfig.build(None, pattern="2:4", sparsity=0.3)
    with pytest.raises(UsageError, match="no sparsity"):
        PruneConfig.build(None)
    with pytest.raises(UsageError, match="unknown pruning method"):
        C.get_criterion("wanda-typo")
    with pytest.raises(ValueError, match="already registered"):
        C.register_criterion("magnitude", "again")(lambda w, n, s: None)


def test_recipe_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sparsity: 0.5\nsparsty: 0.4\n")
    with pytest.raises(SurgeonError, match="unknown keys: sparsty"):
        PruneConfig.build(bad)
    bad.write_text("version: 9\nsparsity: 0.5\n")
    with pytest.raises(UsageError, match="newer"):
        PruneConfig.build(bad)
    bad.write_text("sparsity: [0.5\n")
    with pytest.raises(SurgeonError, match="not valid YAML"):
        PruneConfig.build(bad)


def test_shipped_example_recipe_loads():
    from pathlib import Path

    import modelsurgeon.recipes as R

    path = Path(R.__file__).parent / "prune_example.yaml"
    cfg = PruneConfig.build(path)
    assert cfg.overrides and cfg.sparsity == 0.5
    assert (
        PruneConfig.build(None, **{k: v for k, v in cfg.to_dict().items() if k not in ("version", "overrides")}).sparsity == 0.5
    )


def test_nm_plan_errors_name_the_tensor(tmp_path):
    folder = make_ckpt(
        tmp_path, {"ok.weight": torch.randn(4, 8), "odd.weight": torch.randn(4, 6), "odd2.weight": torch.randn(2, 10)}
    )
    with pytest.raises(PlanError) as e:
        plan_prune(PruneConfig.build(None, pattern="2:4"), folder)
    assert "odd.weight [4, 6]" in str(e.value) and "odd2.weight" in str(e.value) and "ok.weight" not in str(e.value)


def test_parallel_statistics_pass_is_the_same_and_raises():
    xs = [torch.randn(1000), tied_values((30, 40), torch.bfloat16, zeros=0.1), torch.randn(7).half()]

    def pieces():
        for x in xs:
            yield from P.tensor_pieces(x, None, chunk=333)()

    for lo, shift, nbins in [(0, 16, 1 << 15), (0, 13, 1 << 18)]:
        a = P.histogram_pass(pieces, lo, shift, nbins, False, workers=1)
        b = P.histogram_pass(pieces, lo, shift, nbins, False, workers=3)
        assert torch.equal(a, b) and int(a.sum()) == 1000 + 1200 + 7

    def broken():
        yield xs[0], None
        yield "not a tensor", None  # the worker fails

    with pytest.raises(AttributeError):
        P.histogram_pass(broken, 0, 16, 1 << 15, False, workers=2)


def test_count_nonzero_treats_negative_zero_as_zero():
    for dtype in DTYPES:
        x = torch.tensor([0.0, -0.0, 1.0, -2.0, float("nan")]).to(dtype)
        assert count_nonzero(x) == 3
