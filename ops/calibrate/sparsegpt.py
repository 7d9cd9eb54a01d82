"""SparseGPT (Frantar & Alistarh 2023, https://arxiv.org/abs/2301.00774; IST-DASLab/sparsegpt ``fasterprune``).

Given ``H = 2/N X^T X`` of a linear's inputs, columns are visited in blocks of ``blocksize``; in each block the
mask is chosen from ``w^2 / [H^-1]_jj^2`` (unstructured: the lowest of the block; N:M: the lowest ``M - N`` of
every ``M`` columns, chosen when the group is reached), then column by column the pruned weights are zeroed and
the error is spread over the remaining columns through the Cholesky factor of ``H^-1`` (lazy, one block at a
time). Dampening: ``percdamp * mean(diag H)`` on the diagonal; columns no input ever reached (``diag H == 0``)
are zeroed and given ``H_jj = 1``, as the official code does.

One deliberate difference: the official unstructured mask is ``tmp <= sorted(tmp)[int(numel * s)]``, which
zeroes ``int(numel * s) + 1`` values of every block (more on ties). Here a block zeroes exactly its share of the
tensor's count ``round(s * numel)`` (stable order on ties), so the exact-count promise of ``surgeon prune``
holds. tests/ops/calibrate/test_sparsegpt.py checks the rest against a line-by-line transcription.
"""

from __future__ import annotations

import torch

from modelsurgeon.ops.core.errors import SurgeonError

RETRIES = 4  # Cholesky failures: dampening x10 each time, then an error


def inverse_cholesky(H: torch.Tensor, percdamp: float, what: str) -> torch.Tensor:
    """The upper Cholesky factor of ``(H + damp I)^-1`` (``H`` is changed in place: damped)."""
    diag = torch.arange(H.shape[0], device=H.device)
    damp = percdamp * torch.mean(torch.diag(H))
    for attempt in range(RETRIES + 1):
        Hd = H.clone()
        Hd[diag, diag] += damp * (10**attempt)
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info) == 0 and bool(torch.isfinite(U).all()):
                H.copy_(Hd)
                return U
    raise SurgeonError(
        f"{what}: the input Hessian is not positive definite even with {percdamp * 10**RETRIES:g} x mean(diag H) dampening",
        "calibrate on more (or more varied) text with --calib / --calib-samples, or leave the tensor out with --exclude",
    )


def block_counts(rows: int, cols: int, blocksize: int, k_total: int) -> list[int]:
    """Values to zero in each column block so that the tensor loses exactly ``k_total`` (proportional split)."""
    numel = rows * cols
    out, done = [], 0
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        upto = (k_total * rows * i2 + numel // 2) // numel if numel else 0  # round(k_total * share), exact integers
        out.append(upto - done)
        done = upto
    return out


def _lowest(tmp: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros(tmp.numel(), dtype=torch.bool, device=tmp.device)
    if k > 0:
        mask[torch.sort(tmp.reshape(-1), stable=True)[1][:k]] = True
    return mask.reshape(tmp.shape)


def sparsegpt_prune(
    W: torch.Tensor,
    H: torch.Tensor,
    k_total: int = 0,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    what: str = "weight",
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Prune ``W`` (out, in) given ``H`` (in, in): returns (new W in fp32, the pruned mask, the loss).

    Unstructured: exactly ``k_total`` values are zeroed by the mask. ``nm = (n, m)``: ``n`` kept of every ``m``."""
    W = W.clone().float()
    H = H.clone().float()
    rows, cols = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Hinv = inverse_cholesky(H, percdamp, what)
    counts = block_counts(rows, cols, blocksize, k_total) if nm is None else None
    full_mask = torch.zeros_like(W, dtype=torch.bool)
    losses = torch.zeros(rows, device=W.device)
    for b, i1 in enumerate(range(0, cols, blocksize)):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Losses1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if nm is None:
            tmp = W1**2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            mask1 = _lowest(tmp, counts[b])
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                tmp = W1[:, i : i + m] ** 2 / (torch.diag(Hinv1)[i : i + m].reshape((1, -1))) ** 2
                idx = torch.sort(tmp, dim=1, stable=True)[1][:, : m - n]
                mask1.scatter_(1, i + idx, True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            Losses1[:, i] = (w - q) ** 2 / d**2
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        full_mask[:, i1:i2] = mask1
        losses += torch.sum(Losses1, 1) / 2
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W, full_mask, float(losses.sum())
