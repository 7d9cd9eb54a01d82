"""Binary weights: the sign times one scale per group, the scale that minimises the squared error."""

from __future__ import annotations

import torch

from .quant import grouped


def binary_quantize(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(bool signs, fp32 scale per group). For fixed signs s, argmin_a |x - a*s|^2 = mean|x| (BitDelta, 2024)."""
    xg = grouped(x, group_size).float()
    return (xg >= 0).reshape(x.shape), xg.abs().mean(-1)


def binary_dequantize(signs: torch.Tensor, scale: torch.Tensor, group_size: int, dtype: torch.dtype) -> torch.Tensor:
    sg = grouped(signs, group_size)
    a = scale.unsqueeze(-1)
    return torch.where(sg, a, -a).reshape(signs.shape).to(dtype)
