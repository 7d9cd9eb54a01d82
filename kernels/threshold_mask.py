"""Triton: keep keys above a per-row threshold (ties cut by column), zero the rest, count the kept.

Same contract as ``ops/prune/threshold_mask.py`` (the reference): one read and one write of the weight,
the kept count added per program with one atomic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from modelsurgeon.ops.prune.threshold_mask import check_threshold_args

BLOCK = 2048


@triton.jit
def _threshold_mask_kernel(
    out_ptr,
    kept_ptr,
    x_ptr,
    keys_ptr,
    t_ptr,
    tie_ptr,
    cols,
    blocks_per_row,
    HAS_KEYS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # a 1-D grid: CUDA caps grid dims 1 and 2 at 65535, and both rows and blocks per row can exceed it
    pid = tl.program_id(0).to(tl.int64)
    row = pid // blocks_per_row
    col = (pid % blocks_per_row) * BLOCK + tl.arange(0, BLOCK)
    valid = col < cols
    offs = row * cols + col
    x = tl.load(x_ptr + offs, mask=valid, other=0)
    if HAS_KEYS:
        key = tl.load(keys_ptr + offs, mask=valid, other=0)
    else:
        key = tl.minimum(x.to(tl.float32).to(tl.int32, bitcast=True) & 0x7FFFFFFF, 0x7F800001)  # one key for every NaN
    t = tl.load(t_ptr + row)
    cut = tl.load(tie_ptr + row)
    keep = (key > t) | ((key == t) & (col >= cut))
    tl.store(out_ptr + offs, tl.where(keep, x, tl.zeros_like(x)), mask=valid)
    n_kept = tl.sum((keep & valid).to(tl.int32), axis=0)
    tl.atomic_add(kept_ptr, n_kept.to(tl.int64))


def threshold_mask(
    x: torch.Tensor,
    t: torch.Tensor,
    tie: torch.Tensor,
    keys: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    check_threshold_args(x, t, tie)
    rows, cols = x.shape
    if out is None:
        out = torch.empty_like(x)
    if keys is not None:
        keys = keys.reshape(rows, cols).contiguous()
    kept = torch.zeros(1, dtype=torch.int64, device=x.device)
    t = t.to(device=x.device, dtype=torch.int32).contiguous()
    tie = tie.to(device=x.device, dtype=torch.int64).contiguous()
    if x.numel():
        per_row = triton.cdiv(cols, BLOCK)
        _threshold_mask_kernel[(rows * per_row,)](
            out, kept, x, keys if keys is not None else x, t, tie, cols, per_row, HAS_KEYS=keys is not None, BLOCK=BLOCK
        )
    return out, kept[0]
