"""Triton FWHT and fused Fastfood: the kernels behind ``ops/intrinsic/fwht.py`` (the reference of the same name).

One kernel, ``_fwht_pass``, applies log2(N) butterfly stages along one axis of the row viewed as
(outer, N, inner): ``H_L = H_{N_m} (x) ... (x) H_{N_1}``, so ceil(log2(L) / 12) passes over memory cover a
row of L elements (2 passes up to 2^24, 3 up to 2^36) instead of log2(L). Each program holds an (N, T) tile
in registers (N * T = 4096 elements), with T consecutive elements along ``inner`` so loads coalesce.
Stages run in the reference's order (h = 1, 2, 4, ... over the whole row), so results equal
``fwht_reference`` bit for bit. Arithmetic is float32 whatever the input dtype; intermediate passes keep a
float32 workspace.

Fastfood's elementwise steps ride on the passes: zero-padding and x B on the first load, the permutation
gather and x G on the first load of the second transform, the slice to D (and x B for the transpose) and
the scale on the last store.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_LOG = 12  # elements per program = 2^12


@triton.jit
def _butterflies(x, N: tl.constexpr, T: tl.constexpr, LOG_N: tl.constexpr):
    # stage s pairs rows r and r + 2^s of the (N, T) tile: (a, b) -> (a + b, a - b)
    for s in tl.static_range(LOG_N):
        h: tl.constexpr = 1 << s
        y = tl.reshape(x, (N // (2 * h), 2, h, T))
        y = tl.permute(y, (0, 2, 3, 1))
        a, b = tl.split(y)
        y = tl.permute(tl.join(a + b, a - b), (0, 3, 1, 2))
        x = tl.reshape(y, (N, T))
    return x


@triton.jit
def _fwht_pass(
    out_ptr,
    out_row_stride,
    in_ptr,
    in_row_stride,
    gather_ptr,
    mul_ptr,
    post_ptr,
    inner,
    L,
    n_in,
    n_out,
    scale,
    N: tl.constexpr,
    T: tl.constexpr,
    LOG_N: tl.constexpr,
    GATHER: tl.constexpr,  # read in[gather[p]] instead of in[p]
    MUL: tl.constexpr,  # 0: none, 1: x *= mul[p], 2: x *= mul[source index]
    POST: tl.constexpr,  # out = x * post[p] before the scale
    SCALE: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    tiles = inner // T
    o = pid // tiles
    t0 = (pid % tiles) * T
    r = tl.arange(0, N).to(tl.int64)[:, None]
    t = tl.arange(0, T).to(tl.int64)[None, :]
    flat = o * N * inner + r * inner + t0 + t  # index in the (rows, L) view
    row = flat // L
    p = flat - row * L
    if GATHER:
        src = tl.load(gather_ptr + p).to(tl.int64)
    else:
        src = p
    x = tl.load(in_ptr + row * in_row_stride + src, mask=src < n_in, other=0.0).to(tl.float32)
    if MUL == 1:
        x = x * tl.load(mul_ptr + p).to(tl.float32)
    if MUL == 2:
        x = x * tl.load(mul_ptr + src).to(tl.float32)
    x = _butterflies(x, N, T, LOG_N)
    keep = p < n_out
    if POST:
        x = x * tl.load(post_ptr + p, mask=keep, other=0.0).to(tl.float32)
    if SCALE:
        x = x * scale
    tl.store(out_ptr + row * out_row_stride + p, x.to(out_ptr.dtype.element_ty), mask=keep)


def pass_plan(L: int, block_log: int = BLOCK_LOG) -> list[tuple[int, int, int]]:
    """(N, inner, T) for each pass over a row of L = 2^n elements."""
    n = L.bit_length() - 1
    block = 1 << block_log
    plan, inner, rem = [], 1, n
    while rem > 0:
        k = min(block_log, rem)
        N = 1 << k
        plan.append((N, inner, max(1, min(inner, block // N))))
        inner *= N
        rem -= k
    return plan or [(1, 1, 1)]


def _transform(
    src: torch.Tensor,
    dst: torch.Tensor,
    L: int,
    rows: int,
    *,
    n_in: int,
    n_out: int,
    gather: torch.Tensor | None = None,
    mul: torch.Tensor | None = None,
    mul_at_src: bool = False,
    post: torch.Tensor | None = None,
    scale: float | None = None,
    work: torch.Tensor | None = None,
    block_log: int = BLOCK_LOG,
) -> torch.Tensor:
    """One FWHT of length L over `rows` rows of src (row stride = src.shape[-1]) into dst (rows, n_out)."""
    plan = pass_plan(L, block_log)
    dummy = src
    for i, (N, inner, T) in enumerate(plan):
        first, last = i == 0, i == len(plan) - 1
        inp = src if first else work
        out = dst if last else work
        if out is None:
            raise RuntimeError("a multi-pass transform needs a workspace")
        grid = (rows * L // (N * T),)
        _fwht_pass[grid](
            out,
            out.shape[-1],
            inp,
            inp.shape[-1],
            gather if (first and gather is not None) else dummy,
            mul if (first and mul is not None) else dummy,
            post if (last and post is not None) else dummy,
            inner,
            L,
            n_in if first else L,
            n_out if last else L,
            float(scale) if (last and scale is not None) else 1.0,
            N=N,
            T=T,
            LOG_N=N.bit_length() - 1,
            GATHER=first and gather is not None,
            MUL=(2 if mul_at_src else 1) if (first and mul is not None) else 0,
            POST=last and post is not None,
            SCALE=last and scale is not None,
        )
    return dst


def fwht_triton(x: torch.Tensor, block_log: int = BLOCK_LOG) -> torch.Tensor:
    """Unnormalised FWHT along the last dimension (a power of two), any leading dims; fp32/fp16/bf16."""
    L = x.shape[-1]
    if L < 1 or L & (L - 1):
        raise ValueError(f"FWHT needs a power-of-two length, the last dimension is {L}")
    src = x.contiguous().reshape(-1, L)
    rows = src.shape[0]
    out = torch.empty_like(src)
    work = torch.empty((rows, L), dtype=torch.float32, device=x.device) if len(pass_plan(L, block_log)) > 1 else None
    _transform(src, out, L, rows, n_in=L, n_out=L, work=work, block_log=block_log)
    return out.reshape(x.shape)


def fastfood_triton(x, B, perm, G, D: int, scale: float, block_log: int = BLOCK_LOG) -> torch.Tensor:
    """scale * (H G Pi H B pad_L(x))[:D] for x of shape (..., d); the fused form of ``fastfood_reference``."""
    L, d = B.numel(), x.shape[-1]
    src = x.contiguous().reshape(-1, d)
    rows = src.shape[0]
    first = torch.empty((rows, L), dtype=torch.float32, device=x.device)
    multi = len(pass_plan(L, block_log)) > 1
    _transform(src, first, L, rows, n_in=d, n_out=L, mul=B, work=first if multi else None, block_log=block_log)
    out = torch.empty((rows, D), dtype=x.dtype, device=x.device)
    work = torch.empty_like(first) if multi else None
    _transform(first, out, L, rows, n_in=L, n_out=D, gather=perm, mul=G, scale=scale, work=work, block_log=block_log)
    return out.reshape(*x.shape[:-1], D)


def fastfood_t_triton(g, B, invperm, G, d: int, scale: float, block_log: int = BLOCK_LOG) -> torch.Tensor:
    """The transpose of ``fastfood_triton``: scale * (B H Pi^T G H pad_L(g))[:d]."""
    L, D = B.numel(), g.shape[-1]
    src = g.contiguous().reshape(-1, D)
    rows = src.shape[0]
    first = torch.empty((rows, L), dtype=torch.float32, device=g.device)
    multi = len(pass_plan(L, block_log)) > 1
    _transform(src, first, L, rows, n_in=D, n_out=L, work=first if multi else None, block_log=block_log)
    out = torch.empty((rows, d), dtype=g.dtype, device=g.device)
    work = torch.empty_like(first) if multi else None
    _transform(
        first,
        out,
        L,
        rows,
        n_in=L,
        n_out=d,
        gather=invperm,
        mul=G,
        mul_at_src=True,
        post=B,
        scale=scale,
        work=work,
        block_log=block_log,
    )
    return out.reshape(*g.shape[:-1], d)
