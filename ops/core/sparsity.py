"""Counting zeros: the facts about sparsity that pruning produces and reports check."""

from __future__ import annotations

import torch


def group_nonzeros(x: torch.Tensor, m: int = 4) -> torch.Tensor:
    """Nonzeros in each group of ``m`` consecutive values of a flat tensor (numel % m == 0)."""
    nz = x != 0
    if m == 4:
        # four 0/1 bytes read as one int32; multiplying by 0x01010101 sums them into the top byte
        return (nz.view(torch.int32) * 0x01010101) >> 24
    return nz.reshape(-1, m).sum(1, dtype=torch.int32)


def nm_compliant(x: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """True when every group of ``m`` consecutive values holds at most ``n`` nonzeros (x.numel() % m == 0)."""
    return bool((group_nonzeros(x.reshape(-1), m) <= n).all())


def prune_count(sparsity: float, n: int) -> int:
    """round(sparsity × n), halves rounded up, within [0, n]: how many of n values a sparsity prunes."""
    import math

    return min(n, max(0, math.floor(sparsity * n + 0.5)))
