"""GradualPruner: the cubic schedule, exact masks that stay put, and Zhu & Gupta's large-sparse vs
small-dense comparison on sklearn's digits (no download)."""

from __future__ import annotations

import statistics

import pytest
import torch

from modelsurgeon.ops.prune.gradual import GradualPruner, cubic_sparsity
from modelsurgeon.ops.prune.select import prune_count


def test_cubic_schedule():
    s = lambda t: cubic_sparsity(t, 0.1, 0.9, start=100, end=500, frequency=100)  # noqa: E731
    assert s(0) == 0.0 and s(99) == 0.0
    assert s(100) == pytest.approx(0.1) and s(500) == 0.9 and s(10_000) == 0.9
    # Zhu & Gupta: s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3, held between updates
    assert s(300) == pytest.approx(0.9 + (0.1 - 0.9) * (1 - 200 / 400) ** 3)
    assert s(399) == s(300)
    values = [s(t) for t in range(100, 501, 100)]
    assert values == sorted(values)
    steps = [b - a for a, b in zip(values, values[1:])]
    assert steps == sorted(steps, reverse=True)  # fast first, slow near the end


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 6))


def train_steps(model, pruner, steps, seed=0, lr=0.05):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    history = []
    for _ in range(steps):
        x = torch.randn(8, 16, generator=g)
        y = torch.randint(0, 6, (8,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        pruner.step()
        history.append({n: (p.detach() == 0).clone() for n, p in pruner.params})
    return history


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_masks_are_exact_and_pruned_weights_stay_zero(scope):
    model = tiny_model()
    pruner = GradualPruner(model, final_sparsity=0.75, start_step=2, end_step=12, frequency=3, scope=scope)
    assert [n for n, _ in pruner.params] == ["0.weight", "2.weight"]
    history = train_steps(model, pruner, 16)
    for t, zeros in enumerate(history):
        s = pruner.sparsity_at(t)
        if scope == "layer":
            for name, p in pruner.params:
                assert int(zeros[name].sum()) == prune_count(s, p.numel()), (t, name)
        else:
            assert sum(int(z.sum()) for z in zeros.values()) == prune_count(s, 16 * 32 + 32 * 6), t
        if t:
            for name in zeros:  # once pruned, always pruned (momentum cannot revive a weight)
                assert bool((zeros[name] | ~history[t - 1][name]).all()), (t, name)
    assert pruner.sparsity == 0.75
    if scope == "global":
        per = pruner.actual_sparsity()
        assert per["0.weight"] != per["2.weight"]  # one threshold, different layers
    assert all(not b.eq(0).all() for b in (model[0].bias, model[2].bias))  # biases are not pruned


def test_triton_kernel_masks_equal_torch():
    runs = []
    for use_triton in (False, True):
        model = tiny_model(1)
        pruner = GradualPruner(model, final_sparsity=0.6, start_step=0, end_step=4, frequency=2, use_triton=use_triton)
        train_steps(model, pruner, 5, seed=1)
        runs.append([p.detach().clone() for _, p in pruner.params])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_state_dict_round_trip():
    model = tiny_model()
    pruner = GradualPruner(model, 0.5, 0, 4, frequency=2)
    train_steps(model, pruner, 5)
    other = GradualPruner(tiny_model(), 0.5, 0, 4, frequency=2)
    other.load_state_dict(pruner.state_dict())
    assert other.step_count == 5 and all(torch.equal(other.masks[n], pruner.masks[n]) for n in pruner.masks)


def test_bad_arguments():
    with pytest.raises(ValueError, match="final_sparsity"):
        GradualPruner(tiny_model(), 1.0, 0, 10)
    with pytest.raises(ValueError, match="start_step"):
        GradualPruner(tiny_model(), 0.5, 10, 5)
    with pytest.raises(ValueError, match="scope"):
        GradualPruner(tiny_model(), 0.5, 0, 5, scope="row")


# ------------------------------------------------------------------------------------------
# Zhu & Gupta 2017: at the same number of nonzero weights, large-sparse beats small-dense


def train_digits(hidden: int, sparsity: float, seed: int, data, epochs: int = 60, batch: int = 64):
    xtr, ytr, xte, yte = data
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    per_epoch = -(-len(xtr) // batch)
    total = epochs * per_epoch
    # prune from 10% to 60% of training, masks updated once an epoch; then fine-tune with fixed masks
    pruner = GradualPruner(model, sparsity, total // 10, total * 6 // 10, frequency=per_epoch) if sparsity else None
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
            if pruner:
                pruner.step()
    with torch.no_grad():
        acc = float((model(xte).argmax(1) == yte).float().mean())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return acc, nonzero


@pytest.mark.slow
def test_large_sparse_beats_small_dense_on_digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x / 16.0, y, test_size=0.33, random_state=0, stratify=y)
    data = (torch.tensor(xtr, dtype=torch.float32), torch.tensor(ytr), torch.tensor(xte, dtype=torch.float32), torch.tensor(yte))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster and not at the mercy of a busy machine
    try:
        sparse, dense = [], []
        for seed in range(3):
            # 64 hidden units at 90%: 474 of 4736 weights + 74 biases = 548 nonzeros;
            # 8 hidden units dense: 592 weights + 18 biases = 610 nonzeros (the small model gets more)
            acc_s, nz_s = train_digits(64, 0.9, seed, data)
            acc_d, nz_d = train_digits(8, 0.0, seed, data)
            assert nz_s == 548 and nz_d == 610
            sparse.append(acc_s)
            dense.append(acc_d)
    finally:
        torch.set_num_threads(threads)
    # measured on the held-out third: sparse ~0.963 (0.961-0.965), dense ~0.948 (0.934-0.965)
    assert statistics.mean(sparse) >= statistics.mean(dense), (sparse, dense)
    assert min(sparse) > 0.9, sparse
