"""Wanda (Sun et al. 2023, https://arxiv.org/abs/2306.11695; locuslab/wanda ``lib/prune.py prune_wanda``).

The score of a weight is ``|W_ij| * ||X_j||_2``, with ``||X_j||^2`` the calibration inputs' squared norm of
column j (``stats.InputStats.scaler_row``). The paper compares scores within each output row and zeroes the
lowest ``k`` of every row (a stable sort, so ties go in column order). ``--pattern N:M`` keeps the N highest
of every M consecutive columns instead. No weight is updated.
"""

from __future__ import annotations

import torch


def wanda_scores(w: torch.Tensor, scaler_row: torch.Tensor) -> torch.Tensor:
    """``|W| * sqrt(scaler_row)`` in fp32, as ``W_metric`` in the official code."""
    return w.float().abs() * torch.sqrt(scaler_row.float().reshape(1, -1))


def row_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """True at the ``k`` lowest scores of every row (stable: the earlier column goes first on a tie)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        idx = torch.sort(scores, dim=-1, stable=True)[1][:, :k]
        mask.scatter_(1, idx, True)
    return mask


def tensor_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """True at the ``k`` lowest scores of the whole tensor (stable, in flat order)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        mask[torch.sort(scores.reshape(-1), stable=True)[1][:k]] = True
    return mask.reshape(scores.shape)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """True at the ``m - n`` lowest scores of every ``m`` consecutive columns of each row (keeps ``n``)."""
    rows, cols = scores.shape
    g = scores.reshape(rows, cols // m, m)
    idx = torch.sort(g, dim=-1, stable=True)[1][..., : m - n]
    mask = torch.zeros_like(g, dtype=torch.bool)
    mask.scatter_(-1, idx, True)
    return mask.reshape(rows, cols)
