"""The N:M mask: keep the N largest keys of every M consecutive values along the last dimension.

    out, kept = nm_mask(x, n, m)

The last dimension (a Linear weight's input dimension) must be a multiple of m. Inside a group, the
rank of element j is the number of elements with a smaller key plus the number of earlier elements
with an equal key; the M - N lowest ranks are zeroed. So ties are broken by position, earlier pruned
first, the same rule as ``threshold_mask``. Exactly N values per group survive. ``out`` may be ``x``.

This file is the reference (the CPU path); ``kernels/nm_mask.py`` is the Triton kernel.
"""

from __future__ import annotations

import torch

from .keys import abs_key

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
KERNEL_MAX_M = 32  # the kernel unrolls M comparisons per value


def check_nm(x: torch.Tensor, n: int, m: int) -> None:
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < N < M, got {n}:{m}")
    last = x.shape[-1] if x.dim() else 1
    if last % m:
        raise ValueError(f"the last dimension ({last}) is not a multiple of M={m}")


def nm_mask_torch(
    x: torch.Tensor,
    n: int,
    m: int,
    keys: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    chunk: int = 1 << 22,
) -> tuple[torch.Tensor, torch.Tensor]:
    check_nm(x, n, m)
    if not x.is_contiguous():
        raise ValueError("nm_mask wants a contiguous tensor")
    flat = x.reshape(-1)
    kflat = None if keys is None else keys.reshape(-1)
    res = torch.empty_like(flat) if out is None else out.reshape(-1)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    kept = torch.zeros((), dtype=torch.int64, device=x.device)
    step = max(m, chunk // m * m)
    for start in range(0, flat.numel(), step):
        part = flat[start : start + step]
        k = (abs_key(part) if kflat is None else kflat[start : start + step]).reshape(-1, m)
        rank = torch.zeros(k.shape, dtype=torch.int32, device=x.device)
        for i in range(m):
            for j in range(i + 1, m):
                le = k[:, i] <= k[:, j]  # on a tie the later element j ranks higher
                rank[:, j] += le
                rank[:, i] += ~le
        keep = (rank >= m - n).reshape(-1)
        kept += torch.count_nonzero(keep)
        torch.where(keep, part, zero, out=res[start : start + step])
    return res.view(x.shape), kept


def nm_mask(
    x: torch.Tensor,
    n: int,
    m: int,
    keys: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    use_triton: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pruned x, kept count); see the module doc. Triton on CUDA (M <= 32), torch otherwise."""
    from modelsurgeon.kernels import should_use_triton

    if should_use_triton(x.device, use_triton) and x.dtype in KERNEL_DTYPES and m <= KERNEL_MAX_M:
        from modelsurgeon.kernels.nm_mask import nm_mask as kernel

        return kernel(x, n, m, keys=keys, out=out)
    return nm_mask_torch(x, n, m, keys=keys, out=out)
