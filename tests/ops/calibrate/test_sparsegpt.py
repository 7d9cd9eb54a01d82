"""SparseGPT on one linear equals a line-by-line transcription of IST-DASLab/sparsegpt ``fasterprune``.

The one change to the transcription is the documented one: the unstructured mask takes exactly each block's
share of round(s * numel) (the official ``tmp <= sorted[int(numel * s)]`` takes one more per block)."""

from __future__ import annotations

import pytest
import torch

from modelsurgeon.ops.calibrate.sparsegpt import block_counts, inverse_cholesky, sparsegpt_prune
from modelsurgeon.ops.core.errors import SurgeonError


def _official(W, H, sparsity, prunen, prunem, blocksize, percdamp, counts=None):
    W = W.clone().float()
    H = H.clone()
    rows, columns = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Losses = torch.zeros(rows)
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    H = torch.linalg.cholesky(H, upper=True)
    Hinv = H
    mask = None
    for b, i1 in enumerate(range(0, columns, blocksize)):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Losses1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if prunen == 0:
            if mask is not None:
                mask1 = mask[:, i1:i2]
            else:
                tmp = W1**2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
                # official: thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]; mask1 = tmp <= thresh
                order = torch.sort(tmp.flatten(), stable=True)[1][: counts[b]]
                mask1 = torch.zeros(tmp.numel(), dtype=torch.bool)
                mask1[order] = True
                mask1 = mask1.reshape(tmp.shape)
        else:
            mask1 = torch.zeros_like(W1) == 1
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if prunen != 0 and i % prunem == 0:
                tmp = W1[:, i : (i + prunem)] ** 2 / (torch.diag(Hinv1)[i : (i + prunem)].reshape((1, -1))) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            Losses1[:, i] = (w - q) ** 2 / d**2
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        Losses += torch.sum(Losses1, 1) / 2
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W


def _problem(rows, cols, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g)
    X = torch.randn(4 * cols, cols, generator=g) @ torch.randn(cols, cols, generator=g) * 0.3
    H = 2 * X.T @ X / 8
    return W, H


@pytest.mark.parametrize("rows,cols,blocksize", [(24, 64, 128), (16, 200, 128), (9, 96, 32)])
def test_unstructured_equals_the_official_algorithm(rows, cols, blocksize):
    W, H = _problem(rows, cols)
    k = round(0.5 * rows * cols)
    counts = block_counts(rows, cols, blocksize, k)
    ours, mask, _ = sparsegpt_prune(W, H, k, None, blocksize, 0.01)
    ref = _official(W, H, 0.5, 0, 0, blocksize, 0.01, counts)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert int(mask.sum()) == k and int((ours == 0).sum()) == k  # exactly k zeros, all of them the mask's
    assert (ours[mask] == 0).all()


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_nm_equals_the_official_algorithm(n, m):
    W, H = _problem(16, 64, seed=2)
    ours, mask, _ = sparsegpt_prune(W, H, 0, (n, m), 128, 0.01)
    ref = _official(W, H, 0, m - n, m, 128, 0.01)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert (mask.reshape(16, -1, m).sum(-1) == m - n).all()


def test_sparsegpt_beats_magnitude_on_the_output():
    g = torch.Generator().manual_seed(3)
    W = torch.randn(32, 64, generator=g)
    X = torch.randn(512, 64, generator=g) * torch.exp(torch.randn(64, generator=g))  # channels of unequal energy, as in LLMs
    H = 2 * X.T @ X / 512
    k = 32 * 32
    ours, _, _ = sparsegpt_prune(W, H, k)
    mag = W.clone()
    mag.view(-1)[W.abs().flatten().argsort()[:k]] = 0
    err = lambda A: float(((A - W) @ H @ (A - W).T).trace())  # noqa: E731
    assert err(ours) < 0.5 * err(mag)


def test_block_counts_add_up():
    for rows, cols, bs, k in ((3, 300, 128, 451), (1, 5, 2, 3), (7, 128, 128, 0)):
        c = block_counts(rows, cols, bs, k)
        assert sum(c) == k and len(c) == -(-cols // bs)


def test_cholesky_failure_retries_then_names_the_layer():
    H = -torch.eye(4)
    with pytest.raises(SurgeonError, match=r"model\.layers\.3\.mlp\.up_proj\.weight.*not positive definite"):
        inverse_cholesky(H, 0.01, "model.layers.3.mlp.up_proj.weight")
    H = torch.ones(4, 4)  # singular: the first dampening fixes it
    U = inverse_cholesky(H, 0.01, "x")
    assert torch.isfinite(U).all()
