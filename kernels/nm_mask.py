"""Triton: the N:M mask in one pass (one read, one write): each program ranks BLOCK_G groups of M.

Same contract as ``ops/prune/nm_mask.py`` (the reference), including its tie rule.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from modelsurgeon.ops.prune.nm_mask import check_nm


@triton.jit
def _nm_mask_kernel(
    out_ptr,
    kept_ptr,
    x_ptr,
    keys_ptr,
    groups,
    N: tl.constexpr,
    M: tl.constexpr,
    MP: tl.constexpr,
    HAS_KEYS: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    g = pid * BLOCK_G + tl.arange(0, BLOCK_G)[:, None]
    c = tl.arange(0, MP)[None, :]
    valid = (g < groups) & (c < M)
    offs = g * M + c
    x = tl.load(x_ptr + offs, mask=valid, other=0)
    if HAS_KEYS:
        key = tl.load(keys_ptr + offs, mask=valid, other=0)
    else:
        key = tl.minimum(x.to(tl.float32).to(tl.int32, bitcast=True) & 0x7FFFFFFF, 0x7F800001)  # one key for every NaN
    # rank_j = #{i: key_i < key_j} + #{i < j: key_i == key_j}
    rank = tl.zeros((BLOCK_G, MP), dtype=tl.int32)
    for i in tl.static_range(M):
        key_i = tl.sum(tl.where(c == i, key, 0), axis=1)[:, None]
        rank += ((key_i < key) | ((key_i == key) & (c > i))).to(tl.int32)
    keep = valid & (rank >= M - N)
    tl.store(out_ptr + offs, tl.where(keep, x, tl.zeros_like(x)), mask=valid)
    tl.atomic_add(kept_ptr, tl.sum(tl.sum(keep.to(tl.int32), axis=1), axis=0).to(tl.int64))


def nm_mask(
    x: torch.Tensor, n: int, m: int, keys: torch.Tensor | None = None, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    check_nm(x, n, m)
    if not x.is_contiguous():
        raise ValueError("nm_mask wants a contiguous tensor")
    if out is None:
        out = torch.empty_like(x)
    if keys is not None:
        keys = keys.reshape(x.shape).contiguous()
    kept = torch.zeros(1, dtype=torch.int64, device=x.device)
    groups = x.numel() // m
    if groups:
        mp = triton.next_power_of_2(m)
        block_g = max(1, 1024 // mp)
        _nm_mask_kernel[(triton.cdiv(groups, block_g),)](
            out,
            kept,
            x,
            keys if keys is not None else x,
            groups,
            N=n,
            M=m,
            MP=mp,
            HAS_KEYS=keys is not None,
            BLOCK_G=block_g,
        )
    return out, kept[0]
