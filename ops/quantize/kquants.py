"""GGUF k-quant super-blocks Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, byte for byte as ggml's quantizer writes them.

A super-block is 256 consecutive values of a row (``QK_K``), cut into sub-blocks of 16 (Q2_K, Q3_K, Q6_K) or 32
(Q4_K, Q5_K) values. Each sub-block gets a scale (and, for Q2_K/Q4_K/Q5_K, a minimum) found by a small search,
and those are quantized again against one fp16 super-block scale (and minimum). Layouts (``ggml-common.h``):

    Q2_K  84 B: u8 scales[16] (4-bit scale | 4-bit min << 4) | u8 qs[64] (2-bit) | f16 d | f16 dmin
    Q3_K 110 B: u8 hmask[32] (high bit) | u8 qs[64] (low 2 bits) | u8 scales[12] (16 x 6-bit) | f16 d
    Q4_K 144 B: f16 d | f16 dmin | u8 scales[12] (8 x 6-bit scale, 8 x 6-bit min) | u8 qs[128] (4-bit)
    Q5_K 176 B: f16 d | f16 dmin | u8 scales[12] | u8 qh[32] (high bit) | u8 qs[128] (low 4 bits)
    Q6_K 210 B: u8 ql[128] (low 4 bits) | u8 qh[64] (high 2 bits) | i8 scales[16] | f16 d

The searches (``ggml-quants.c``: ``make_qx_quants``, ``make_q3_quants``, ``make_qkx2_quants``/``make_qkx3_quants``,
``make_qp_quants`` and the ``quantize_row_q*_K_ref`` / ``quantize_row_q*_K_impl`` that call them) are float
loops whose result depends on the order of every fp32 operation. They run here on whole batches of sub-blocks
at once, with the elements of a sub-block as the leading dimension, so every sum is the same left-to-right
chain of IEEE fp32 additions as in C (ggml builds these files without fast-math and without FMA contraction),
the candidate scales of a search are evaluated together and chosen in ggml's order, and ``nearest_int`` is
ggml's 1.5 * 2^23 trick. A test compares every byte with ggml's own ``ggml_quantize_chunk``.

With an importance matrix (``imatrix``: one weight per column of the row) the ``_impl`` variants run, as
``llama-quantize --imatrix`` does; the legacy types Q4_0, Q4_1, Q5_0, Q5_1 have such variants too
(``quantize_legacy_imatrix``). ``kernels/kquants.py`` has Q6_K in Triton.
"""

from __future__ import annotations

import numpy as np
import torch

from modelsurgeon.ops.core.streaming import map_in_order

from .sqnr import energy

QK_K = 256
K_BLOCK_BYTES = {"Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}
_EPS = 1e-15  # GROUP_MAX_EPS, compared in fp32
_MAGIC = 12582912.0  # 1.5 * 2^23
# super-blocks per step: the temporaries of the searches stay within a few MB
_CHUNK = {"Q2_K": 1024, "Q3_K": 4096, "Q4_K": 1024, "Q5_K": 1024, "Q6_K": 256}


def nearest_int(v: torch.Tensor) -> torch.Tensor:
    """ggml's ``nearest_int``: round half to even through the 1.5 * 2^23 trick, as int32."""
    return ((v + _MAGIC).view(torch.int32) & 0x007FFFFF) - 0x00400000


def _f32(v: float) -> float:
    """A C float literal or float expression evaluated in fp32."""
    return float(np.float32(v))


def _f16(v: torch.Tensor) -> torch.Tensor:
    """fp32 -> fp16 -> fp32, as ggml stores and reads back a scale."""
    return v.to(torch.float16).float()


def _div(a, b) -> torch.Tensor:
    """a / b as one IEEE fp32 division. torch turns ``number / tensor`` into ``reciprocal(tensor) * number``
    (two roundings), and on CUDA ``tensor / number`` into a multiplication by the inverse: both operands are
    made full tensors here."""
    if not isinstance(a, torch.Tensor):
        a = torch.full_like(b, a)
    if not isinstance(b, torch.Tensor):
        b = torch.full_like(a, b)
    return a / b


def _sqrt(v: torch.Tensor) -> torch.Tensor:
    """C's ``sqrtf``, correctly rounded (torch's CPU sqrt may be 1 ulp off; fp64 then fp32 rounds correctly)."""
    return torch.sqrt(v.double()).float()


def _seq(t: torch.Tensor, dim: int = 0, start_with_first: bool = False) -> torch.Tensor:
    """``s = 0; for i: s += t[i]`` along ``dim`` in fp32, in that order (``start_with_first``: ``s = t[0]``)."""
    t = t.movedim(dim, 0)
    acc = t[0].clone() if start_with_first else t[0] + 0.0
    for i in range(1, t.shape[0]):
        acc.add_(t[i])
    return acc


def _running_max(t: torch.Tensor) -> torch.Tensor:
    """``m = 0; for j: if (t[j] > m) m = t[j]`` over dim 1 (so never -0.0)."""
    m = t.amax(1)
    return torch.where(m > 0, m, 0.0)


def _signed_absmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max, amax) over dim 0 as ggml's loops find them: the first value of largest magnitude, with its sign."""
    ax = x.abs()
    idx = ax.argmax(0, keepdim=True)  # the first maximum
    return x.gather(0, idx).squeeze(0), ax.gather(0, idx).squeeze(0)


def _steps(first: int, last: int, skip_zero: bool = False) -> list[int]:
    return [i for i in range(first, last + 1) if not (skip_zero and i == 0)]


# --------------------------------------------------------------------------------------------
# the searches, on batches: x is (n, S), n values of S sub-blocks


def make_qx_quants(x: torch.Tensor, nmax: int, qw: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``make_qx_quants(n, nmax, x, L, rmse_type=1, qw)``: a symmetric scale per column, codes in [0, 2 nmax).
    Weights ``qw`` or, without them, x^2. The 18 trial scales depend only on the block, so they are evaluated
    together and then compared in ggml's order. ``iscale * x`` lies in [-nmax - 1, nmax + 1], where
    ``torch.round`` equals ``nearest_int``."""
    n, S = x.shape
    mx, amax = _signed_absmax(x)
    zero = amax < _f32(_EPS)
    w = x * x if qw is None else qw
    wx = w * x
    ks = _steps(-9, 9, skip_zero=True)
    c = torch.tensor([-float(nmax)] + [-_f32(nmax + _f32(_f32(0.1) * k)) for k in ks], device=x.device)
    iscale = c[:, None] / mx[None, :]  # (1 + K, S): the first is ggml's starting scale
    lk = torch.mul(iscale[:, None, :], x[None]).round_().clamp_(-nmax, nmax - 1)  # (1 + K, n, S)
    P = torch.empty(2, *lk.shape, device=x.device)
    torch.mul(wx, lk, out=P[0])
    torch.mul(w, lk, out=P[1]).mul_(lk)
    sumlx_k, suml2_k = _seq(P, dim=2)
    sumlx, suml2 = sumlx_k[0], suml2_k[0]
    scale = torch.where(suml2 != 0, sumlx / suml2, torch.zeros_like(sumlx))
    best = scale * sumlx
    idx = torch.zeros_like(mx, dtype=torch.int64)
    for k in range(1, len(ks) + 1):
        s2, sx = suml2_k[k], sumlx_k[k]
        upd = (s2 > 0) & (sx * sx > best * s2)
        scale = torch.where(upd, sx / s2, scale)
        best = torch.where(upd, scale * sx, best)
        idx = torch.where(upd, k, idx)
    L = lk.gather(0, idx[None, None, :].expand(1, n, S)).squeeze(0)
    L = torch.where(zero, 0, L.to(torch.int32) + nmax)
    return torch.where(zero, 0.0, scale), L


def make_q3_quants(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``make_q3_quants(n, nmax, x, L, do_rmse=true)``: the least-squares scale, codes refined one at a time."""
    mx, amax = _signed_absmax(x)
    zero = amax < _f32(_EPS)
    L = nearest_int(_div(-float(nmax), mx) * x).clamp_(-nmax, nmax - 1).float()
    w = x * x
    wx = w * x
    sumlx = _seq(wx * L)
    suml2 = _seq(w * L * L)
    n = x.shape[0]
    for _ in range(5):  # a pass that changes nothing leaves the state as it was: ggml stops there, so do we
        changed = torch.zeros_like(zero)
        for i in range(n):
            wi, wxi, li = w[i], wx[i], L[i]
            slx = sumlx - wxi * li
            sl2 = suml2 - wi * li * li
            new_l = nearest_int(x[i] * sl2 / slx).clamp_(-nmax, nmax - 1).float()
            slx2 = slx + wxi * new_l
            sl22 = sl2 + wi * new_l * new_l
            ok = (slx > 0) & (new_l != li) & (sl22 > 0) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
            L[i] = torch.where(ok, new_l, li)
            sumlx = torch.where(ok, slx2, sumlx)
            suml2 = torch.where(ok, sl22, suml2)
            changed |= ok
        if not bool(changed.any()):
            break
    scale = torch.where(suml2 > 0, sumlx / suml2, torch.zeros_like(sumlx))
    return torch.where(zero, 0.0, scale), torch.where(zero, 0, L.to(torch.int32) + nmax)


def make_qkx_quants(
    x: torch.Tensor, w: torch.Tensor, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``make_qkx2_quants`` / ``make_qkx3_quants`` (the same search; qkx3's default weights are passed in):
    (scale, the_min, codes in [0, nmax]) per column, ``x ~ scale * L - the_min``.

    Each trial scale is computed from the minimum accepted so far, so the trials run one after the other
    (each on every column at once). ``iscale * (x - min)`` lies in [-1, nmax + 1] here, where ``torch.round``
    equals ``nearest_int``."""
    n, S = x.shape
    mn = x.amin(0)
    mx = x.amax(0)
    sum_w, sum_x = _seq(torch.stack([w, w * x]), dim=1, start_with_first=True)
    mn = torch.where(mn > 0, 0.0, mn)
    # ggml keeps the first of equal minima (``x[i] < min``): a minimum of zero has the sign of the first zero,
    # which ends up in the block's stored minimum (-0.0 or +0.0)
    is_zero = x == 0
    first_zero = x.gather(0, is_zero.to(torch.uint8).argmax(0, keepdim=True)).squeeze(0)
    mn = torch.where((mn == 0) & is_zero.any(0), first_zero, mn)
    mn0 = mn
    flat = mx == mn
    xm = torch.empty_like(x)
    buf = torch.empty_like(x)
    P = torch.empty(3, n, S, device=x.device)

    def codes(iscale, m):
        torch.sub(x, m, out=xm)
        return torch.mul(xm, iscale).round_().clamp_(0, nmax)

    def err(scale, m, L):
        torch.mul(L, scale, out=buf).add_(m).sub_(x)
        (buf.abs_() if use_mad else buf.square_()).mul_(w)
        return _seq(buf)

    iscale = _div(float(nmax), mx - mn)
    scale = _div(1.0, iscale)
    L = codes(iscale, mn)
    best = err(scale, mn, L)
    # the codes kept are those of the best trial: remembered by the (iscale, min) that made them and made
    # again at the end, instead of a full-size select per trial
    best_is, best_mn = iscale, mn
    for k in range(nstep + 1):
        a = _f32(_f32(_f32(rmin) + _f32(_f32(rdelta) * k)) + nmax)
        isk = _div(a, mx - mn)
        lk = codes(isk, mn)  # min: the last one accepted
        torch.mul(w, lk, out=P[0])
        torch.mul(P[0], lk, out=P[1])
        torch.mul(P[0], x, out=P[2])
        sum_l, sum_l2, sum_xl = _seq(P, dim=1)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        pos = this_min > 0
        this_min = torch.where(pos, 0.0, this_min)
        this_scale = torch.where(pos, sum_xl / sum_l2, this_scale)
        cur = err(this_scale, this_min, lk)
        upd = (D > 0) & (cur < best)
        best = torch.where(upd, cur, best)
        scale = torch.where(upd, this_scale, scale)
        best_is = torch.where(upd, isk, best_is)
        best_mn = torch.where(upd, mn, best_mn)
        mn = torch.where(upd, this_min, mn)
    L = codes(best_is, best_mn).to(torch.int32)
    return torch.where(flat, 0.0, scale), torch.where(flat, -mn0, -mn), torch.where(flat, 0, L)


def make_qp_quants(x: torch.Tensor, nmax: int, qw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``make_qp_quants``: a positive scale for non-negative values (the sub-block scales), weighted by ``qw``;
    codes as ggml's uint8 array holds them."""
    mx = x.amax(0).clamp(min=0)
    zero = mx < _f32(_EPS)
    iscale = _div(float(nmax), mx)
    L = nearest_int(iscale * x) & 0xFF
    scale = _div(1.0, iscale)
    diff = x - scale * L.float()
    best_mse = _seq(qw * diff * diff)
    ks = _steps(-4, 4, skip_zero=True)
    c = torch.tensor([_f32(_f32(_f32(0.1) * k) + nmax) for k in ks])
    isk = c[:, None] / mx[None, :]
    lk = nearest_int(isk[:, None, :] * x[None]).clamp_(max=nmax).float()
    diff = x - _div(1.0, isk)[:, None, :] * lk
    mse = _seq(qw * diff * diff, dim=1)
    for k in range(len(ks)):
        upd = mse[k] < best_mse
        best_mse = torch.where(upd, mse[k], best_mse)
        iscale = torch.where(upd, isk[k], iscale)
    li = nearest_int(iscale * x).clamp_(max=nmax)
    L = (li & 0xFF).float()  # a uint8 array in ggml; the sums below use the int codes
    wx = qw * x
    sumlx = _seq(wx * li.float())
    suml2 = _seq(qw * li.float() * li.float())
    for _ in range(5):
        changed = torch.zeros_like(zero)
        for i in range(x.shape[0]):
            wi, wxi, li = qw[i], wx[i], L[i]
            slx = sumlx - wxi * li
            sl2 = suml2 - wi * li * li
            new_l = nearest_int(x[i] * sl2 / slx).clamp_(max=nmax).float()
            slx2 = slx + wxi * new_l
            sl22 = sl2 + wi * new_l * new_l
            ok = (slx > 0) & (sl2 > 0) & (new_l != li) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
            L[i] = torch.where(ok, (new_l.to(torch.int32) & 0xFF).float(), li)
            sumlx = torch.where(ok, slx2, sumlx)
            suml2 = torch.where(ok, sl22, suml2)
            changed |= ok
        if not bool(changed.any()):
            break
    scale = torch.where(suml2 > 0, sumlx / suml2, torch.zeros_like(sumlx))
    return torch.where(zero, 0.0, scale), torch.where(zero, 0, L.to(torch.int32))


# --------------------------------------------------------------------------------------------
# one type: fp32 super-blocks (nb, 256) [and their importance weights] -> (nb, bytes) uint8


def _sub(x: torch.Tensor, n: int) -> torch.Tensor:
    """(nb, 256) -> (n, nb * 256/n): element-major, sub-block j of super-block b in column b * 256/n + j."""
    return x.reshape(-1, n).t().contiguous()


def _unsub(t: torch.Tensor, nb: int) -> torch.Tensor:
    return t.t().reshape(nb, QK_K)


def _requantize(x: torch.Tensor, L: torch.Tensor, d: torch.Tensor, dm: torch.Tensor | None, lo: int, hi: int, n: int):
    """The last pass of every type: codes from the stored (fp16) scales, ``nearest_int((x + dm) / d)``; a
    sub-block whose scale is 0 keeps the codes of its search. d, dm: (nb, 256/n) effective scales."""
    nb = x.shape[0]
    xs = x.reshape(nb, -1, n)
    v = xs if dm is None else xs + dm[..., None]
    q = nearest_int(v / d[..., None]).clamp_(lo, hi)
    keep = (d == 0)[..., None]
    return torch.where(keep, L.reshape(nb, -1, n), q).reshape(nb, QK_K)


def _sum_x2_super(x: torch.Tensor) -> torch.Tensor:
    return _seq((x * x).t())  # sequential over the 256 values of each super-block


def _pack_6bit_scales(ls: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    """Q4_K/Q5_K: 8 scales and 8 mins of 6 bits -> 12 bytes (the inverse of ``get_scale_min_k4``)."""
    lo = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    mid = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    hi = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return torch.cat([lo, mid, hi], 1)


def _pack_2bit(L: torch.Tensor) -> torch.Tensor:
    """Q2_K/Q3_K low bits: for each half of 128, byte l holds values l, l+32, l+64, l+96 (2 bits each)."""
    q = L.reshape(-1, 2, 4, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64)


def _bytes_f16(v: torch.Tensor) -> torch.Tensor:
    return v.to(torch.float16).reshape(-1, 1).view(torch.uint8)


def _q2_k(x: torch.Tensor, qw: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    nb = x.shape[0]
    xs = _sub(x, 16)
    if qw is None:
        scales, mins, L = make_qkx_quants(xs, xs.abs(), 3, -0.5, 0.1, 15, True)
        sc, mn = scales.reshape(nb, 16), mins.reshape(nb, 16)
        max_scale = _running_max(sc)
        max_min = _running_max(mn)
        has_s, has_m = max_scale > 0, max_min > 0
        ls = torch.where(has_s[:, None], nearest_int(_div(15.0, max_scale)[:, None] * sc), 0) & 0xFF
        lm = torch.where(has_m[:, None], nearest_int(_div(15.0, max_min)[:, None] * mn), 0)
        d = torch.where(has_s, _div(max_scale, 15.0), 0.0)
        dmin = torch.where(has_m, _div(max_min, 15.0), 0.0)
    else:
        sigma2 = _sum_x2_super(x) / float(QK_K)
        w = _sub(qw * _sqrt(sigma2[:, None] + x * x), 16)
        scales, mins, L = make_qkx_quants(xs, w, 3, -0.9, 0.05, 36, False)
        sw = _seq(w).reshape(nb, 16).t()
        d, ls = make_qp_quants(scales.reshape(nb, 16).t(), 15, sw)
        dmin, lm = make_qp_quants(mins.reshape(nb, 16).t(), 15, sw)
        ls, lm = ls.t(), lm.t()
    scb = (ls | (lm << 4)) & 0xFF
    d16, dmin16 = _f16(d), _f16(dmin)
    L = _requantize(x, _unsub(L, nb), d16[:, None] * (scb & 0xF).float(), dmin16[:, None] * (scb >> 4).float(), 0, 3, 16)
    out = torch.cat([scb.to(torch.uint8), _pack_2bit(L).to(torch.uint8), _bytes_f16(d), _bytes_f16(dmin)], 1)
    return out, L


def _q3_k(x: torch.Tensor, qw: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    nb = x.shape[0]
    xs = _sub(x, 16)
    if qw is None:
        scales, L = make_q3_quants(xs, 4)
        sc = scales.reshape(nb, 16)
        max_scale, _ = _signed_absmax(sc.t())
        has = max_scale != 0
        iscale = _div(-32.0, max_scale)
        l6 = torch.where(has[:, None], _int8(nearest_int(iscale[:, None] * sc)).clamp_(-32, 31) + 32, 0)
        d = torch.where(has, _div(1.0, iscale), 0.0)
    else:
        sigma2 = 2 * _sum_x2_super(x) / float(QK_K)
        w = _sub(qw * _sqrt(sigma2[:, None] + x * x), 16)
        sw = _seq(w)
        scales, L = make_qx_quants(xs, 4, w)
        d, l6 = make_qx_quants(scales.reshape(nb, 16).t(), 32, sw.reshape(nb, 16).t())
        l6 = l6.t()
    low = (l6[:, :8] & 0xF) | ((l6[:, 8:] & 0xF) << 4)
    hi = (l6 >> 4).reshape(nb, 4, 4)  # [q, r] = scale 4q + r
    high = hi[:, 0] | (hi[:, 1] << 2) | (hi[:, 2] << 4) | (hi[:, 3] << 6)
    d16 = _f16(d)
    L = _requantize(x, _unsub(L, nb) - 4, d16[:, None] * (l6 - 32).float(), None, -4, 3, 16) + 4
    h = (L > 3).to(torch.int32)
    hmask = (h.reshape(nb, 8, 32) << torch.arange(8, dtype=torch.int32)[None, :, None]).sum(1)
    L = L - 4 * h
    parts = [hmask, _pack_2bit(L), low, high]
    return torch.cat([p.to(torch.uint8) for p in parts] + [_bytes_f16(d)], 1), L


def _int8(v: torch.Tensor) -> torch.Tensor:
    """A C ``int8_t`` assignment of an int: wraps modulo 256."""
    return ((v + 128) & 0xFF) - 128


def _q45_k(x: torch.Tensor, qw: torch.Tensor | None, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    nb = x.shape[0]
    xs = _sub(x, 32)
    if qw is None:
        av_x = _sqrt(_seq(xs * xs) / 32.0)
        w = av_x + xs.abs()
        rmin, rdelta, nstep = (-1.0, 0.1, 20) if nmax == 15 else (-0.5, 0.1, 15)
        scales, mins, L = make_qkx_quants(xs, w, nmax, rmin, rdelta, nstep, False)
        sc, mn = scales.reshape(nb, 8), mins.reshape(nb, 8)
        max_scale = _running_max(sc)
        max_min = _running_max(mn)
        inv_s = torch.where(max_scale > 0, _div(63.0, max_scale), 0.0)
        inv_m = torch.where(max_min > 0, _div(63.0, max_min), 0.0)
        ls = (nearest_int(inv_s[:, None] * sc) & 0xFF).clamp_(max=63)
        lm = (nearest_int(inv_m[:, None] * mn) & 0xFF).clamp_(max=63)
        d, dmin = _div(max_scale, 63.0), _div(max_min, 63.0)
    else:
        sigma2 = 2 * _sum_x2_super(x) / float(QK_K)
        w = _sub(qw * _sqrt(sigma2[:, None] + x * x), 32)
        scales, mins, L = make_qkx_quants(xs, w, nmax, -0.9, 0.05, 36, False)
        sw = _seq(w).reshape(nb, 8).t()
        d, ls = make_qp_quants(scales.reshape(nb, 8).t(), 63, sw)
        dmin, lm = make_qp_quants(mins.reshape(nb, 8).t(), 63, sw)
        ls, lm = ls.t(), lm.t()
        if nmax == 31:  # Q5_K clamps, Q4_K does not
            ls, lm = ls.clamp(max=63), lm.clamp(max=63)
    packed = _pack_6bit_scales(ls, lm) & 0xFF
    ls, lm = _unpack_6bit_scales(packed)  # what get_scale_min_k4 reads back
    d16, dmin16 = _f16(d), _f16(dmin)
    L = _requantize(x, _unsub(L, nb), d16[:, None] * ls.float(), dmin16[:, None] * lm.float(), 0, nmax, 32)
    q = L.reshape(nb, 4, 2, 32)  # [chunk of 64, half, l]
    qs = ((q[:, :, 0] & 0xF) | ((q[:, :, 1] & 0xF) << 4)).reshape(nb, 128)
    parts = [_bytes_f16(d), _bytes_f16(dmin), packed.to(torch.uint8)]
    if nmax == 31:
        bit = (q >> 4).to(torch.int32)  # (nb, 4, 2, 32)
        shift = (2 * torch.arange(4, dtype=torch.int32))[None, :, None, None] + torch.arange(2, dtype=torch.int32)[
            None, None, :, None
        ]
        parts.append((bit << shift).sum((1, 2)).to(torch.uint8))
    parts.append(qs.to(torch.uint8))
    return torch.cat(parts, 1), L


def _q6_k(x: torch.Tensor, qw: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    nb = x.shape[0]
    xs = _sub(x, 16)
    scales, L = make_qx_quants(xs, 32, None if qw is None else _sub(qw, 16))
    sc = scales.reshape(nb, 16)
    max_scale, max_abs = _signed_absmax(sc.t())
    zero = max_abs < _f32(_EPS)
    iscale = _div(-128.0, max_scale)
    d = torch.where(zero, 0.0, _div(1.0, iscale))
    ls = torch.where(zero[:, None], 0, _int8(nearest_int(iscale[:, None] * sc).clamp_(max=127)))
    L = _requantize(x, _unsub(L, nb) - 32, _f16(d)[:, None] * ls.float(), None, -32, 31, 16) + 32
    L = torch.where(zero[:, None], 0, L)
    return _pack_q6(L, ls, d), L


def _pack_q6(L: torch.Tensor, ls: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    q = L.reshape(-1, 2, 4, 32)  # [half of 128, quarter, l]
    ql = torch.cat([(q[:, :, 0] & 0xF) | ((q[:, :, 2] & 0xF) << 4), (q[:, :, 1] & 0xF) | ((q[:, :, 3] & 0xF) << 4)], 2)
    h = q >> 4
    qh = h[:, :, 0] | (h[:, :, 1] << 2) | (h[:, :, 2] << 4) | (h[:, :, 3] << 6)
    parts = [ql.reshape(-1, 128), qh.reshape(-1, 64), ls & 0xFF]
    return torch.cat([p.to(torch.uint8) for p in parts] + [_bytes_f16(d)], 1)


_TYPES = {
    "Q2_K": _q2_k,
    "Q3_K": _q3_k,
    "Q4_K": lambda x, qw: _q45_k(x, qw, 15),
    "Q5_K": lambda x, qw: _q45_k(x, qw, 31),
    "Q6_K": _q6_k,
}


def quantize_kblocks(
    x: torch.Tensor,
    qtype: str,
    imatrix: torch.Tensor | None = None,
    use_triton: bool | None = None,
    error: list | None = None,
) -> torch.Tensor:
    """A 2-D float tensor (row length a multiple of 256) -> uint8 (rows, row_bytes) in ggml's layout.

    ``imatrix``: one importance weight per column (llama-quantize's ``--imatrix``), or None. With ``error=[]``,
    appends (signal energy, noise energy) of the dequantized blocks against ``x``."""
    if qtype not in _TYPES:
        raise ValueError(f"unsupported k-quant type {qtype}")
    rows, cols = x.shape
    if cols % QK_K:
        raise ValueError(f"row length {cols} is not a multiple of the super-block size {QK_K}")
    from modelsurgeon.kernels import should_use_triton

    if qtype == "Q6_K" and imatrix is None and error is None and should_use_triton(x.device, use_triton):
        from modelsurgeon.kernels.kquants import quantize_q6_k

        return quantize_q6_k(x)
    xb = x.reshape(-1, QK_K)
    nb = xb.shape[0]
    per_row = cols // QK_K
    qw_all = None
    if imatrix is not None:
        qw_all = imatrix.to(device=x.device, dtype=torch.float32).reshape(1, per_row, QK_K)
    out = torch.empty(nb, K_BLOCK_BYTES[qtype], dtype=torch.uint8, device=x.device)
    step = _CHUNK[qtype]
    if qw_all is not None:
        step = max(per_row, step // per_row * per_row)  # whole rows, so the weights line up

    def chunk(s: int) -> tuple[float, float]:
        c = xb[s : s + step].float()
        qw = None if qw_all is None else qw_all.expand(c.shape[0] // per_row, -1, -1).reshape(-1, QK_K)
        blocks, _ = _TYPES[qtype](c, qw)
        out[s : s + step] = blocks
        if error is None:
            return 0.0, 0.0
        return energy(c), energy(dequantize_kblocks(blocks, qtype).sub_(c))

    # the chunks are independent: on the CPU they run on the shared worker pool (one torch thread each)
    energies = map_in_order(chunk, range(0, nb, step), x.device)
    if error is not None:  # summed in chunk order, whatever the number of workers
        error.append((sum(e[0] for e in energies), sum(e[1] for e in energies)))
    return out.reshape(rows, per_row * K_BLOCK_BYTES[qtype])


# --------------------------------------------------------------------------------------------
# reading blocks back (ggml's dequantize_row_q*_K)


def _unpack_2bit(qs: torch.Tensor) -> torch.Tensor:
    """(nb, 64) -> (nb, 256): value 128 h + 32 s + l is bits 2s of byte 32 h + l."""
    q = qs.to(torch.int32).reshape(-1, 2, 1, 32)
    return ((q >> (2 * torch.arange(4, dtype=torch.int32, device=qs.device))[None, None, :, None]) & 3).reshape(-1, QK_K)


def _unpack_6bit_scales(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = s.to(torch.int32)
    ls = torch.cat([s[:, :4] & 63, (s[:, 8:] & 0xF) | ((s[:, :4] >> 6) << 4)], 1)
    lm = torch.cat([s[:, 4:8] & 63, (s[:, 8:] >> 4) | ((s[:, 4:8] >> 6) << 4)], 1)
    return ls, lm


def _f16_at(b: torch.Tensor, pos: int) -> torch.Tensor:
    return b[:, pos : pos + 2].contiguous().view(torch.float16).float()  # (nb, 1)


def dequantize_kblocks(blocks: torch.Tensor, qtype: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """ggml's dequantization of k-quant blocks, in fp32: (nb, 256), or ``shape``."""
    b = blocks.reshape(-1, K_BLOCK_BYTES[qtype])
    nb = b.shape[0]
    if qtype == "Q2_K":
        sc = b[:, :16].to(torch.int32)
        q = _unpack_2bit(b[:, 16:80]).reshape(nb, 16, 16).float()
        d, dmin = _f16_at(b, 80), _f16_at(b, 82)
        y = (d * (sc & 0xF).float())[..., None] * q - (dmin * (sc >> 4).float())[..., None]
    elif qtype == "Q3_K":
        hm = b[:, :32].to(torch.int32)
        low = _unpack_2bit(b[:, 32:96])
        high = (hm[:, None, :] >> torch.arange(8, dtype=torch.int32, device=b.device)[None, :, None]) & 1
        q = (low - 4 * (1 - high.reshape(nb, QK_K))).reshape(nb, 16, 16).float()
        s = b[:, 96:108].to(torch.int32)
        low4 = torch.cat([s[:, :8] & 0xF, s[:, :8] >> 4], 1)
        hi2 = ((s[:, 8:12, None] >> (2 * torch.arange(4, device=b.device))[None, None, :]) & 3).transpose(1, 2).reshape(nb, 16)
        sc = (low4 | (hi2 << 4)) - 32
        d = _f16_at(b, 108)
        y = (d * sc.float())[..., None] * q
    elif qtype in ("Q4_K", "Q5_K"):
        d, dmin = _f16_at(b, 0), _f16_at(b, 2)
        ls, lm = _unpack_6bit_scales(b[:, 4:16])
        qs = b[:, -128:].to(torch.int32).reshape(nb, 4, 1, 32)
        q = (qs >> torch.tensor([0, 4], dtype=torch.int32, device=b.device)[None, None, :, None]) & 0xF
        if qtype == "Q5_K":
            qh = b[:, 16:48].to(torch.int32).reshape(nb, 1, 1, 32)
            shift = (2 * torch.arange(4, device=b.device))[:, None] + torch.arange(2, device=b.device)[None, :]
            q = q + (((qh >> shift[None, :, :, None]) & 1) << 4)
        y = (d * ls.float())[..., None] * q.reshape(nb, 8, 32).float() - (dmin * lm.float())[..., None]
    elif qtype == "Q6_K":
        ql = b[:, :128].to(torch.int32).reshape(nb, 2, 2, 32)  # [half, first/second 32, l]
        qh = b[:, 128:192].to(torch.int32).reshape(nb, 2, 1, 32)
        sc = b[:, 192:208].view(torch.int8).float()
        d = _f16_at(b, 208)
        low = torch.cat([ql & 0xF, ql >> 4], 2)  # [half, quarter 0..3, l]
        high = (qh >> (2 * torch.arange(4, device=b.device))[None, None, :, None]) & 3
        q = ((low | (high << 4)) - 32).reshape(nb, 16, 16).float()
        y = (d * sc)[..., None] * q
    else:
        raise ValueError(f"unsupported k-quant type {qtype}")
    y = y.reshape(nb, QK_K)
    return y if shape is None else y.reshape(shape)


# --------------------------------------------------------------------------------------------
# the legacy types with an importance matrix (quantize_row_q4_0_impl ... quantize_row_q5_1_impl)

_LEGACY_SEARCH = {"Q4_0": (8, False), "Q4_1": (15, True), "Q5_0": (16, False), "Q5_1": (31, True)}


def quantize_legacy_imatrix(x: torch.Tensor, qtype: str, imatrix: torch.Tensor) -> torch.Tensor:
    """Q4_0, Q4_1, Q5_0, Q5_1 blocks of 32 under an importance matrix, as ``llama-quantize --imatrix`` writes
    them: the weights are ``imatrix * sqrt(sigma2 + x^2)`` with sigma2 the row's mean square, and the block's
    scale (and minimum) come from the searches above instead of the plain max/min rule."""
    from .gguf_blocks import BLOCK, pack_blocks

    rows, cols = x.shape
    nmax, has_min = _LEGACY_SEARCH[qtype]
    out = torch.empty(rows, cols // BLOCK, _legacy_bytes(qtype), dtype=torch.uint8, device=x.device)
    step = max(1, (1 << 16) // cols)
    qw_row = imatrix.to(device=x.device, dtype=torch.float32).reshape(1, cols)
    for s in range(0, rows, step):
        c = x[s : s + step].float()
        n = c.shape[0]
        sigma2 = _div(_seq((c * c).t()), float(cols))
        w = _sub32(qw_row * _sqrt(sigma2[:, None] + c * c))
        xs = _sub32(c)
        if has_min:
            d, the_min, L = make_qkx_quants(xs, w, nmax, -0.9, 0.05, 36, False)
            m = -the_min  # ggml stores -the_min: the block minimum itself
        else:
            d, L = make_qx_quants(xs, nmax, w)
            m = None
        q = L.t().reshape(-1, BLOCK)
        blocks = pack_blocks(q, d.reshape(-1, 1), None if m is None else m.reshape(-1, 1), qtype)
        out[s : s + n] = blocks.reshape(n, cols // BLOCK, -1)
    return out.reshape(rows, -1)


def _sub32(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, 32).t().contiguous()


def _legacy_bytes(qtype: str) -> int:
    from .gguf_blocks import BLOCK_BYTES

    return BLOCK_BYTES[qtype]
