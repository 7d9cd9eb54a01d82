"""What the calibrated methods learn from a linear layer's inputs, accumulated over the calibration samples.

Every statistic is normalised per calibration *sequence*, as the official code does (its running means count
sequences, not tokens):

    norms    Wanda:              scaler[j] = sum over tokens of x_j^2 / N           (lib/layerwrapper.py)
    hessian  SparseGPT / GPTQ:   H = 2/N * sum X^T X                                  (sparsegpt.py add_batch)
    inputs   AWQ:                every input row, kept (the scale search runs the block on them)

Linears that read the same tensor (q/k/v, gate/up) share one accumulator: ``group_by_input`` finds them on the
first batch by object identity.
"""

from __future__ import annotations

import torch


class InputStats:
    """Accumulates the statistics ``kinds`` of one input (``cols`` features) on ``device``."""

    def __init__(self, cols: int, kinds: set[str], device: torch.device, store: torch.device | None = None):
        self.cols, self.kinds, self.device = cols, set(kinds), device
        self.store = store or device
        self.nsamples = 0
        self.sq = torch.zeros(cols, dtype=torch.float32, device=device) if "norms" in kinds else None
        self.xtx = torch.zeros(cols, cols, dtype=torch.float32, device=device) if "hessian" in kinds else None
        self.rows: list[torch.Tensor] = []

    def add(self, x: torch.Tensor) -> None:
        """One batch of inputs (batch, tokens, cols) or (tokens, cols): each leading row of a 3-D batch is a sequence."""
        n = x.shape[0] if x.dim() == 3 else 1
        x2 = x.reshape(-1, x.shape[-1]).float()
        self.nsamples += n
        if self.sq is not None:
            self.sq += x2.square().sum(0)
        if self.xtx is not None:
            self.xtx.addmm_(x2.t(), x2)
        if "inputs" in self.kinds:
            self.rows.append(x2.to(self.store))

    @property
    def scaler_row(self) -> torch.Tensor:
        """Wanda's per-column mean squared norm over sequences."""
        return self.sq / max(self.nsamples, 1)

    @property
    def hessian(self) -> torch.Tensor:
        """SparseGPT's and GPTQ's H = 2/N X^T X (a fresh tensor: the methods change it)."""
        return self.xtx * (2.0 / max(self.nsamples, 1))

    def inputs(self) -> torch.Tensor:
        return torch.cat(self.rows) if self.rows else torch.empty(0, self.cols)

    def nbytes(self) -> int:
        n = 0
        for t in (self.sq, self.xtx, *self.rows):
            if t is not None:
                n += t.numel() * t.element_size()
        return n


def group_by_input(calls: list[tuple[str, torch.Tensor]]) -> dict[str, str]:
    """Linear name -> the first linear (in call order) that read the very same input tensor."""
    rep: dict[str, str] = {}
    seen: list[tuple[torch.Tensor, str]] = []
    for name, x in calls:
        if name in rep:
            continue
        for other, first in seen:
            if other is x:
                rep[name] = first
                break
        else:
            seen.append((x, name))
            rep[name] = name
    return rep
