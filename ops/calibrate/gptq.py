"""GPTQ (Frantar et al. 2022, https://arxiv.org/abs/2210.17323; IST-DASLab/gptq ``gptq.py fasterquant``).

Columns are quantized one at a time on the format's own grid, and each column's rounding error is spread over
the columns not yet quantized through the upper Cholesky factor of ``(H + damp I)^-1`` (lazily, a block of
``blocksize`` columns at a time), ``H = 2/N X^T X``. The grid is the scheme's (``Grid``: compressed-tensors'
integer groups or a GGUF block type, given by the quantize family), so the codes and scales written are the
ones GPTQ chose.

Groups: without act-order a group's parameters are found when its first column is reached, from the weights as
they stand then (the official code reads them from the outer ``W``, which has the earlier blocks' updates but
not the current block's: kept as is). With act-order (columns by descending ``diag H``) the groups are *static*:
every group's parameters come from the original weights before any update, and each column uses its natural
group's parameters, so the checkpoint keeps plain contiguous groups (no ``g_idx``) and every format loads it.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .sparsegpt import inverse_cholesky


class Grid(Protocol):
    """A quantization grid for one weight (implemented by the quantize family, ``ops/quantize/grid.py``)."""

    def group_size(self, cols: int) -> int: ...

    def params(self, wg: torch.Tensor): ...  # (rows, g) fp32 -> one group's parameters

    def quantize(self, col: torch.Tensor, p) -> tuple[torch.Tensor, torch.Tensor]: ...  # (rows,) -> (codes, dequantized)


def gptq_quantize(
    W: torch.Tensor,
    H: torch.Tensor,
    grid: Grid,
    blocksize: int = 128,
    percdamp: float = 0.01,
    act_order: bool = False,
    what: str = "weight",
) -> tuple[torch.Tensor, torch.Tensor, list, float]:
    """Quantize ``W`` (out, in) given ``H``: (codes, dequantized W in fp32, parameters per natural group, loss)."""
    W = W.clone().float()
    H = H.clone().float()
    rows, cols = W.shape
    g = grid.group_size(cols)
    first = grid.params(W) if g == cols else None  # per channel: one set from the whole (original) row
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    static = None
    if act_order and g != cols:
        static = [grid.params(W[:, i : i + g]) for i in range(0, cols, g)]
    perm = invperm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]
        invperm = torch.argsort(perm)
    Hinv = inverse_cholesky(H, percdamp, what)
    Q = torch.zeros_like(W)
    codes = None
    losses = torch.zeros(rows, device=W.device)
    dynamic: list = []
    current = first
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Losses1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if g != cols:
                if static is None:
                    if (i1 + i) % g == 0:
                        current = grid.params(W[:, (i1 + i) : (i1 + i + g)])
                        dynamic.append(current)
                else:
                    idx = i1 + i
                    if perm is not None:
                        idx = int(perm[idx])
                    current = static[idx // g]
            c, q = grid.quantize(w, current)
            if codes is None:
                codes = torch.zeros(rows, cols, dtype=c.dtype, device=W.device)
            codes[:, i1 + i] = c
            Q1[:, i] = q
            Losses1[:, i] = (w - q) ** 2 / d**2
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        losses += torch.sum(Losses1, 1) / 2
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    if invperm is not None:
        Q = Q[:, invperm]
        codes = codes[:, invperm]
    params = static if static is not None else (dynamic if g != cols else [first])
    return codes, Q, params, float(losses.sum())
