"""NF4 (bitsandbytes, QLoRA): a 16-value code book scaled by the absmax of each block of the flattened tensor."""

from __future__ import annotations

import torch

NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)  # fmt: skip


def nf4_quantize(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 codes 0..15 of the flattened tensor, fp32 absmax per block); nearest code via the midpoints."""
    xb = x.float().reshape(-1, block)
    absmax = xb.abs().amax(-1, keepdim=True)
    scaled = xb * torch.where(absmax == 0, torch.zeros_like(absmax), 1.0 / absmax)
    code = torch.tensor(NF4_CODE, dtype=torch.float32, device=x.device)
    codes = torch.bucketize(scaled, (code[1:] + code[:-1]) / 2)
    return codes.to(torch.uint8).reshape(x.shape), absmax.reshape(-1)


def nf4_dequantize(codes: torch.Tensor, absmax: torch.Tensor, block: int, dtype: torch.dtype) -> torch.Tensor:
    code = torch.tensor(NF4_CODE, dtype=torch.float32, device=codes.device)
    vals = code[codes.reshape(-1, block).long()] * absmax.unsqueeze(-1)
    return vals.reshape(codes.shape).to(dtype)
