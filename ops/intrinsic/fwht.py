"""The fast Walsh-Hadamard transform (FWHT) and the Fastfood projection built on it: the spec and the CPU path.

``H`` is the *unnormalised* Sylvester-Hadamard matrix, ``H[i, j] = (-1)^popcount(i & j)``, so ``H @ H = L * I``
and ``H`` is symmetric: the transform is its own transpose and its gradient is the same transform, with no
``1/sqrt(L)`` anywhere (one public implementation scales its backward by ``1/sqrt(L)``; that is wrong).

Everything is computed in float32 (float64 stays float64) and cast back to the input dtype at the end.

- ``fwht_reference``: the butterfly, one stage per bit (h = 1, 2, 4, ...), each stage ``(a + b, a - b)``.
  The Triton kernel (``kernels/fwht.py``) performs exactly these additions in exactly this order, so the two
  agree bit for bit.
- ``fwht_kron``: the CPU path. ``H_L = H_{2^k1} (x) H_{2^k2} (x) ...``: a few batched matrix products with a
  small Hadamard matrix replace log2(L) passes over memory (about 5x faster than the butterfly on a CPU).
- ``fastfood_reference`` / ``fastfood_t_reference``: ``y = scale * (H G P H B pad_L(x))[:D]`` and its transpose,
  written step by step in the order the fused kernel uses.
- ``fwht``, ``fastfood``, ``fastfood_t``: the public ops, choosing Triton or torch (``use_triton=None``: auto).
"""

from __future__ import annotations

import functools
import math

import torch


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_pow2(n: int, what: str = "the last dimension") -> int:
    if n < 1 or n & (n - 1):
        raise ValueError(f"FWHT needs a power-of-two length, {what} is {n}")
    return n.bit_length() - 1


def fwht_reference(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised FWHT along the last dimension, by butterflies (the spec)."""
    L = x.shape[-1]
    _check_pow2(L)
    shape, out_dtype = x.shape, x.dtype
    y = x.to(_work_dtype(x)).reshape(-1, L)
    h = 1
    while h < L:
        v = y.reshape(-1, L // (2 * h), 2, h)
        a, b = v[:, :, 0], v[:, :, 1]
        y = torch.stack((a + b, a - b), dim=2).reshape(-1, L)
        h *= 2
    return y.reshape(shape).to(out_dtype)


@functools.lru_cache(maxsize=32)
def hadamard_matrix(n: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.Tensor:
    """The n x n unnormalised Sylvester-Hadamard matrix (n a power of two)."""
    _check_pow2(n, "n")
    i = torch.arange(n, device=device)
    bits = i[:, None] & i[None, :]
    parity = torch.zeros_like(bits)
    while bool(bits.any()):
        parity ^= bits & 1
        bits = bits >> 1
    return (1 - 2 * parity).to(dtype)


def fwht_kron(x: torch.Tensor, factor_log: int = 5) -> torch.Tensor:
    """Unnormalised FWHT as a Kronecker product of small Hadamard matrices (the CPU path).

    The vector is viewed as (outer, 2^k, inner); multiplying the middle axis by H_{2^k} applies k of the
    log2(L) butterfly stages at once. Each pass reads and writes the data once.
    """
    L = x.shape[-1]
    n = _check_pow2(L)
    shape, out_dtype = x.shape, x.dtype
    wd = _work_dtype(x)
    y = x.to(wd).reshape(-1, L)
    rows = y.shape[0]
    inner, rem = 1, n
    while rem > 0:
        k = min(factor_log, rem)
        N = 1 << k
        H = hadamard_matrix(N, wd, str(y.device))
        outer = rows * L // (N * inner)
        if inner == 1:
            y = (y.reshape(outer, N) @ H).reshape(rows, L)
        else:
            y = torch.matmul(H, y.reshape(outer, N, inner)).reshape(rows, L)
        inner *= N
        rem -= k
    return y.reshape(shape).to(out_dtype)


# --------------------------------------------------------------------------------------------
# Fastfood: y = scale * (H G Pi H B pad_L(x))[:D], with B = diag(+-1), Pi a permutation, G = diag(N(0,1))


def fastfood_reference(
    x: torch.Tensor, B: torch.Tensor, perm: torch.Tensor, G: torch.Tensor, D: int, scale: float, transform=fwht_reference
) -> torch.Tensor:
    """Fastfood applied to x (..., d), d <= L = len(B); returns (..., D)."""
    L, d = B.numel(), x.shape[-1]
    wd = _work_dtype(x)
    z = torch.zeros(*x.shape[:-1], L, dtype=wd, device=x.device)
    z[..., :d] = x.to(wd)
    z = z * B.to(wd)
    z = transform(z)
    z = z.index_select(-1, perm) * G.to(wd)  # (Pi z)[p] = z[perm[p]]; index_select takes int32 or int64
    z = transform(z)
    return (z[..., :D] * scale).to(x.dtype)


def fastfood_t_reference(
    g: torch.Tensor, B: torch.Tensor, invperm: torch.Tensor, G: torch.Tensor, d: int, scale: float, transform=fwht_reference
) -> torch.Tensor:
    """The transpose: (..., D) -> (..., d), scale * (B H Pi^T G H pad_L(g))[:d]."""
    L, D = B.numel(), g.shape[-1]
    wd = _work_dtype(g)
    z = torch.zeros(*g.shape[:-1], L, dtype=wd, device=g.device)
    z[..., :D] = g.to(wd)
    z = transform(z)
    z = (z * G.to(wd)).index_select(-1, invperm)  # (Pi^T (G z))[p] = z[inv[p]] G[inv[p]]
    z = transform(z)
    return ((z[..., :d] * B[:d].to(wd)) * scale).to(g.dtype)


# --------------------------------------------------------------------------------------------
# the public ops: Triton where it can run, the Kronecker path otherwise


def _use_triton(x: torch.Tensor, use_triton: bool | None) -> bool:
    from modelsurgeon.kernels import should_use_triton

    return x.dtype != torch.float64 and should_use_triton(x.device, use_triton)


def fwht(x: torch.Tensor, use_triton: bool | None = None) -> torch.Tensor:
    """Unnormalised FWHT along the last dimension; differentiable (its gradient is itself)."""
    return _FWHT.apply(x, use_triton)


def _fwht_raw(x: torch.Tensor, use_triton: bool | None) -> torch.Tensor:
    if _use_triton(x, use_triton):
        from modelsurgeon.kernels.fwht import fwht_triton

        return fwht_triton(x)
    return fwht_kron(x)


class _FWHT(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, use_triton):
        ctx.use_triton = use_triton
        return _fwht_raw(x, use_triton)

    @staticmethod
    def backward(ctx, g):
        return _fwht_raw(g, ctx.use_triton), None


def fastfood(x, B, perm, G, D, scale, use_triton: bool | None = None) -> torch.Tensor:
    if _use_triton(x, use_triton):
        from modelsurgeon.kernels.fwht import fastfood_triton

        return fastfood_triton(x, B, perm, G, D, scale)
    return fastfood_reference(x, B, perm, G, D, scale, transform=fwht_kron)


def fastfood_t(g, B, invperm, G, d, scale, use_triton: bool | None = None) -> torch.Tensor:
    if _use_triton(g, use_triton):
        from modelsurgeon.kernels.fwht import fastfood_t_triton

        return fastfood_t_triton(g, B, invperm, G, d, scale)
    return fastfood_t_reference(g, B, invperm, G, d, scale, transform=fwht_kron)


def next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))
