"""Triton: FP4 E2M1 codes of a weight with one float32 scale per group, two per byte. Reference:
``ops/quantize/fp4.py fp4_encode`` (the rounding rules are written there)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _e2m1(v):
    m = tl.abs(v)
    idx = (
        (m > 0.25).to(tl.uint8) + (m >= 0.75).to(tl.uint8) + (m > 1.25).to(tl.uint8) + (m >= 1.75).to(tl.uint8)
        + (m > 2.5).to(tl.uint8) + (m >= 3.5).to(tl.uint8) + (m > 5.0).to(tl.uint8)
    )  # fmt: skip
    return idx | ((v < 0).to(tl.uint8) << 3)


@triton.jit
def _fp4_encode_kernel(
    out_ptr, x_ptr, scale_ptr, rows, cols, n_groups,
    GROUP: tl.constexpr, WD_DIVIDE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    p = tl.program_id(1).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    n_pairs = cols // 2
    mask = (r[:, None] < rows) & (p[None, :] < n_pairs)
    lo_col = 2 * p
    s = tl.load(scale_ptr + r[:, None] * n_groups + (lo_col // GROUP)[None, :], mask=mask, other=1.0)
    lo = tl.load(x_ptr + r[:, None] * cols + lo_col[None, :], mask=mask, other=0.0)
    hi = tl.load(x_ptr + r[:, None] * cols + lo_col[None, :] + 1, mask=mask, other=0.0)
    # IEEE division, as torch computes it (a GPU's default fp32 division may be 1 ulp off)
    vlo = tl.div_rn(lo.to(tl.float32), s)
    vhi = tl.div_rn(hi.to(tl.float32), s)
    if WD_DIVIDE:  # MXFP4: the quotient rounded to the weight's dtype first
        vlo = vlo.to(lo.dtype).to(tl.float32)
        vhi = vhi.to(hi.dtype).to(tl.float32)
    vlo = tl.minimum(tl.maximum(vlo, -6.0), 6.0)
    vhi = tl.minimum(tl.maximum(vhi, -6.0), 6.0)
    tl.store(out_ptr + r[:, None] * n_pairs + p[None, :], _e2m1(vlo) | (_e2m1(vhi) << 4), mask=mask)


def fp4_encode(x: torch.Tensor, scale: torch.Tensor, group: int, wd_divide: bool) -> torch.Tensor:
    rows, cols = x.shape
    if cols % group or group % 2:
        raise ValueError(f"row length {cols} is not a multiple of the group size {group}")
    x = x.contiguous()
    scale = scale.float().contiguous()
    out = torch.empty(rows, cols // 2, dtype=torch.uint8, device=x.device)
    block_p = min(128, triton.next_power_of_2(max(cols // 2, 1)))
    block_r = max(1, min(8, triton.next_power_of_2(rows)))
    grid = (triton.cdiv(rows, block_r), triton.cdiv(cols // 2, block_p))
    _fp4_encode_kernel[grid](
        out, x, scale, rows, cols, cols // group, GROUP=group, WD_DIVIDE=wd_divide, BLOCK_R=block_r, BLOCK_P=block_p
    )
    return out
