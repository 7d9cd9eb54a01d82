"""Wanda's mask is the paper's definition (locuslab/wanda lib/prune.py prune_wanda), transcribed here."""

from __future__ import annotations

import torch

from modelsurgeon.ops.calibrate.wanda import nm_mask, row_mask, wanda_scores


def _official_unstructured(W, scaler_row, sparsity):
    W_metric = torch.abs(W) * torch.sqrt(scaler_row.reshape((1, -1)))
    W_mask = torch.zeros_like(W_metric) == 1
    sort_res = torch.sort(W_metric, dim=-1, stable=True)
    indices = sort_res[1][:, : int(W_metric.shape[1] * sparsity)]
    W_mask.scatter_(1, indices, True)
    return W_mask


def _official_nm(W, scaler_row, prune_n, prune_m):
    W_metric = torch.abs(W) * torch.sqrt(scaler_row.reshape((1, -1)))
    W_mask = torch.zeros_like(W_metric) == 1
    for ii in range(W_metric.shape[1]):
        if ii % prune_m == 0:
            tmp = W_metric[:, ii : (ii + prune_m)].float()
            W_mask.scatter_(1, ii + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
    return W_mask


def test_unstructured_mask_is_the_papers():
    g = torch.Generator().manual_seed(0)
    for rows, cols, s in ((16, 64, 0.5), (7, 30, 0.3), (5, 13, 0.6)):
        W = torch.randn(rows, cols, generator=g)
        scaler = torch.rand(cols, generator=g) * 3
        k = int(cols * s)  # the official count; ours is round(s * cols), equal for these shapes
        assert k == round(s * cols) or cols * s % 1 != 0.5
        ours = row_mask(wanda_scores(W, scaler), k)
        assert torch.equal(ours, _official_unstructured(W, scaler, s))
        assert (ours.sum(1) == k).all()


def test_ties_go_in_column_order():
    W = torch.ones(2, 8)
    ours = row_mask(wanda_scores(W, torch.ones(8)), 3)
    assert torch.equal(ours, _official_unstructured(W, torch.ones(8), 3 / 8))
    assert ours[:, :3].all() and not ours[:, 3:].any()


def test_nm_mask_is_the_papers():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(12, 32, generator=g)
    scaler = torch.rand(32, generator=g)
    for n, m in ((2, 4), (4, 8), (1, 4)):
        ours = nm_mask(wanda_scores(W, scaler), n, m)  # keeps n of every m
        assert torch.equal(ours, _official_nm(W, scaler, m - n, m))
