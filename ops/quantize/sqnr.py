"""How far a quantized weight is from the original: signal and noise energies, and their ratio in dB.

The per-tensor and whole-model SQNR of ``surgeon quantize`` are ``10 log10(signal / noise)`` over these
energies (summed over tensors for the model), so the numbers add up across tensors exactly.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def error_stats(w: torch.Tensor, deq: torch.Tensor) -> tuple[float, float]:
    """(signal energy, noise energy) of ``w`` and ``w - deq``: fp64 sums over chunks of 1M values (so a finite
    weight as large as fp32 allows, ~3e38, squares without overflow), accumulated in Python floats."""
    sig = noise = 0.0
    a, b = w.reshape(-1), deq.reshape(-1)
    step = 1 << 20
    for i in range(0, a.numel(), step):
        x = a[i : i + step].double()
        sig += float(x.square().sum())
        noise += float((x - b[i : i + step].double()).square_().sum())
    return sig, noise


def energy(v: torch.Tensor) -> float:
    """Sum of squares of an fp32 tensor: one fp32 dot product (a BLAS call, no temporaries), or fp64 where
    that overflows (values beyond ~1e19)."""
    import torch

    v = v.reshape(-1)
    e = float(torch.dot(v, v))
    return e if math.isfinite(e) else float(v.double().square().sum())


def sqnr_db(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)
