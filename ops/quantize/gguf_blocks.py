"""GGUF (ggml) block quantization: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, byte for byte as ggml writes them.

Layouts (``ggml/src/ggml-common.h``), each block covering 32 consecutive values of a row:

    Q8_0  34 B: f16 d | i8 qs[32]                  d = amax/127,   q = round_half_away(x/d)
    Q4_0  18 B: f16 d | u8 qs[16]                  d = max/-8,     q = min(15, trunc(x/d + 8.5))
    Q4_1  20 B: f16 d | f16 m | u8 qs[16]          d = (max-min)/15, m = min, q = trunc((x-m)/d + 0.5)
    Q5_0  22 B: f16 d | u32 qh | u8 qs[16]         d = max/-16,    q = min(31, trunc(x/d + 16.5))
    Q5_1  24 B: f16 d | f16 m | u32 qh | u8 qs[16] d = (max-min)/31

``max`` is the signed value of largest magnitude (the first one on ties). 4-bit nibbles pair element
``j`` (low nibble) with element ``j + 16`` (high nibble); bit 4 of element ``j`` goes to bit ``j`` of ``qh``.
Codes are computed with the fp32 ``d`` and its fp32 reciprocal, and only ``d`` (and ``m``) are stored as
fp16, as ``quantize_row_*_ref`` in ggml and ``gguf.quants`` do; every operation here is the same IEEE fp32
operation in the same order, so the bytes are identical (a test checks it against ``gguf.quants.quantize``).

``quantize_blocks`` is the reference and the CPU path; ``kernels/gguf_blocks.py`` has Q8_0 and Q4_0 in Triton.
It also hands the k-quant super-block types (Q2_K ... Q6_K, ``kquants.py``) and the importance-weighted
variants of Q4_0 ... Q5_1 (``--imatrix``) to ``kquants.py``, so callers see one entry point for every type.
"""

from __future__ import annotations

import torch

from modelsurgeon.kernels import should_use_triton

from .sqnr import energy

BLOCK = 32
BLOCK_BYTES = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24}
# (qmin, qmax, offset): a block dequantizes to d * (q - offset) (+ m for the _1 types)
CODE_RANGE = {"Q8_0": (-128, 127, 0), "Q4_0": (0, 15, 8), "Q4_1": (0, 15, 0), "Q5_0": (0, 31, 16), "Q5_1": (0, 31, 0)}
HAS_MIN = {"Q4_1", "Q5_1"}
_CHUNK_BLOCKS = 1 << 13  # 1 MiB of fp32 per step: the temporaries stay in cache


def block_size(qtype: str) -> int:
    """Values per block: 32 for the legacy types, 256 for the k-quants."""
    from .kquants import K_BLOCK_BYTES, QK_K

    return QK_K if qtype in K_BLOCK_BYTES else BLOCK


def type_bytes(qtype: str) -> int:
    """Bytes per block."""
    from .kquants import K_BLOCK_BYTES

    return K_BLOCK_BYTES[qtype] if qtype in K_BLOCK_BYTES else BLOCK_BYTES[qtype]


def bits_per_weight(qtype: str) -> float:
    return type_bytes(qtype) * 8 / block_size(qtype)


def row_bytes(cols: int, qtype: str) -> int:
    return cols // block_size(qtype) * type_bytes(qtype)


def _inv(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d == 0, torch.zeros_like(d), 1.0 / d)


def _f16_bytes(v: torch.Tensor) -> torch.Tensor:
    return v.to(torch.float16).view(torch.uint8)  # (nb, 1) -> (nb, 2), little-endian


def _signed_absmax(x: torch.Tensor, mx: torch.Tensor, mn: torch.Tensor) -> torch.Tensor:
    """The value of largest magnitude, keeping its sign; on a +a/-a tie the first one, as ggml picks."""
    out = torch.where(mx >= -mn, mx, mn)
    tie = (mx == -mn).squeeze(-1)  # +a and -a both present, or an all-zero block (its first zero keeps its sign)
    if bool(tie.any()):
        rows = tie.nonzero().squeeze(-1)
        sub = x[rows]
        out[rows] = sub.gather(-1, sub.abs().argmax(-1, keepdim=True))  # argmax returns the first maximum
    return out


def block_params(x: torch.Tensor, qtype: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ggml's fp32 block parameters: d, and the minimum m for the _1 types."""
    mx = x.amax(-1, keepdim=True)
    mn = x.amin(-1, keepdim=True)
    if qtype == "Q8_0":
        return (torch.maximum(mx, -mn) + 0.0) / 127, None  # + 0.0 turns -0.0 into +0.0, as |x| does
    _, qmax, off = CODE_RANGE[qtype]
    if qtype in HAS_MIN:
        return (mx - mn) / qmax, mn
    return _signed_absmax(x, mx, mn) / -off, None


def block_codes(x: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, qtype: str, buf: torch.Tensor) -> torch.Tensor:
    """ggml's codes for fp32 blocks x, in the stored range (Q8_0: integer-valued fp32; the others uint8). Each step is one IEEE fp32 operation, in ggml's order; float -> int conversion truncates toward zero."""
    qmin, qmax, off = CODE_RANGE[qtype]
    inv = _inv(d)
    if qtype == "Q8_0":
        # round half away from zero of v = x/d: with a = |2v| (exact), |q| = floor((floor(a) + 1) / 2), with v's
        # sign. Every step is exact on these small integers, and each runs vectorized (torch's int32 shifts and
        # float trunc do not: they took three times as long)
        torch.mul(x, inv * 2, out=buf)
        mag = buf.abs().floor_().add_(1).mul_(0.5).floor_()
        return mag.copysign_(buf)
    if m is None:  # Q4_0, Q5_0: trunc(x/d + off + 0.5), at least 0.5 - tiny here, so trunc is floor
        torch.mul(x, inv, out=buf).add_(off + 0.5)
    else:  # Q4_1, Q5_1: trunc((x - m)/d + 0.5)
        torch.sub(x, m, out=buf).mul_(inv).add_(0.5)
    return buf.to(torch.uint8).clamp_(max=qmax)  # in [0, qmax + 1.5) here: the conversion truncates


def pack_blocks(
    q: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, qtype: str, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Codes (nb, 32) in the type's stored range and fp32 d (and m) -> (nb, bytes) uint8 in ggml's layout."""
    nb = q.shape[0]
    if out is None:
        out = torch.empty(nb, BLOCK_BYTES[qtype], dtype=torch.uint8, device=q.device)
    out[:, 0:2] = _f16_bytes(d)
    pos = 2
    if m is not None:
        out[:, 2:4] = _f16_bytes(m)
        pos = 4
    if qtype == "Q8_0":
        out[:, 2:] = q.to(torch.int8).view(torch.uint8)
        return out
    q = q.to(torch.uint8)  # codes are 0..31 here
    if qtype in ("Q5_0", "Q5_1"):
        # bit 4 of element j -> bit j of a little-endian u32: gather 8 one-bit bytes into one byte at a time.
        # With bytes b_0..b_7 of a u64 each 0 or 1, x * 0x0102040810204080 puts sum(b_i << i) in the top byte
        # (every b_i lands on its own bit, so nothing carries); the multiplication wraps, as intended.
        hi = ((q >> 4) & 1).contiguous().view(torch.int64)  # (nb, 4): 8 codes per u64
        packed = ((hi * 0x0102040810204080) >> 56) & 0xFF
        out[:, pos : pos + 4] = packed.to(torch.uint8)
        pos += 4
    # element j in the low nibble, element j + 16 in the high nibble (uint8 << 4 drops bit 4)
    out[:, pos : pos + 16] = (q[:, :16] & 15) | (q[:, 16:] << 4)
    return out


def quantize_blocks(
    x: torch.Tensor,
    qtype: str,
    use_triton: bool | None = None,
    error: list | None = None,
    imatrix: torch.Tensor | None = None,
) -> torch.Tensor:
    """A 2-D float tensor (row length a multiple of the block size) -> uint8 (rows, row_bytes) in ggml's layout.

    With ``error=[]``, appends (signal energy, noise energy) of the dequantized blocks against ``x``.
    ``imatrix`` (one importance weight per column) weights the search of every type but Q8_0, as
    ``llama-quantize --imatrix`` does.
    """
    from . import kquants

    if qtype in kquants.K_BLOCK_BYTES:
        return kquants.quantize_kblocks(x, qtype, imatrix, use_triton, error)
    if imatrix is not None and qtype != "Q8_0":
        out = kquants.quantize_legacy_imatrix(x, qtype, imatrix)
        if error is not None:
            error.append(_error_of(x, out, qtype))
        return out
    if qtype not in BLOCK_BYTES:
        raise ValueError(f"unsupported GGUF block type {qtype}")
    rows, cols = x.shape
    if cols % BLOCK:
        raise ValueError(f"row length {cols} is not a multiple of the block size {BLOCK}")
    if qtype in ("Q8_0", "Q4_0") and should_use_triton(x.device, use_triton) and error is None:
        from modelsurgeon.kernels.gguf_blocks import quantize_blocks as kernel

        return kernel(x, qtype)
    xb = x.reshape(-1, BLOCK)
    out = torch.empty(xb.shape[0], BLOCK_BYTES[qtype], dtype=torch.uint8, device=x.device)
    buf = torch.empty(min(xb.shape[0], _CHUNK_BLOCKS), BLOCK, dtype=torch.float32, device=x.device)
    sig = noise = 0.0
    for s in range(0, xb.shape[0], _CHUNK_BLOCKS):
        c = xb[s : s + _CHUNK_BLOCKS].float()
        d, m = block_params(c, qtype)
        q = block_codes(c, d, m, qtype, buf[: c.shape[0]])
        pack_blocks(q, d, m, qtype, out[s : s + _CHUNK_BLOCKS])
        if error is not None:  # fp32 dot products, fp64 where they overflow
            sig += energy(c)
            noise += energy(_dequant_codes(q, d, m, qtype).sub_(c))
    if error is not None:
        error.append((sig, noise))
    return out.reshape(rows, row_bytes(cols, qtype))


def _error_of(x: torch.Tensor, blocks: torch.Tensor, qtype: str) -> tuple[float, float]:
    sig = noise = 0.0
    rows = max(1, _CHUNK_BLOCKS * BLOCK // x.shape[1])
    for s in range(0, x.shape[0], rows):
        c = x[s : s + rows].float()
        sig += energy(c)
        noise += energy(dequantize_blocks(blocks[s : s + rows], qtype, tuple(c.shape)).sub_(c))
    return sig, noise


def _dequant_codes(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, qtype: str) -> torch.Tensor:
    """What ggml reads back: fp16 d (and m) times the code."""
    off = CODE_RANGE[qtype][2]
    x = d.to(torch.float16).float() * (q.float() - off if off else q.float())
    return x if m is None else x + m.to(torch.float16).float()


def unpack_blocks(blocks: torch.Tensor, qtype: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(codes (nb, 32) int16 in the stored range, d (nb, 1) fp32, m (nb, 1) fp32 or None)."""
    b = blocks.reshape(-1, BLOCK_BYTES[qtype])
    d = b[:, 0:2].contiguous().view(torch.float16).float()
    m = b[:, 2:4].contiguous().view(torch.float16).float() if qtype in HAS_MIN else None
    pos = 4 if m is not None else 2
    if qtype == "Q8_0":
        return b[:, 2:].contiguous().view(torch.int8).to(torch.int16), d, None
    if qtype in ("Q5_0", "Q5_1"):
        qh = b[:, pos : pos + 4].to(torch.int64)
        word = qh[:, 0] | (qh[:, 1] << 8) | (qh[:, 2] << 16) | (qh[:, 3] << 24)
        high = ((word.unsqueeze(-1) >> torch.arange(32, device=b.device)) & 1).to(torch.int16) << 4
        pos += 4
    else:
        high = None
    qs = b[:, pos : pos + 16].to(torch.int16)
    q = torch.cat([qs & 15, qs >> 4], dim=1)
    if high is not None:
        q = q | high
    return q, d, m


def dequantize_blocks(blocks: torch.Tensor, qtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """ggml's dequantization: ``d * (q - offset)`` (+ ``m``), in fp32 (k-quants: ``kquants.py``)."""
    from . import kquants

    if qtype in kquants.K_BLOCK_BYTES:
        return kquants.dequantize_kblocks(blocks, qtype, shape)
    q, d, m = unpack_blocks(blocks, qtype)
    off = CODE_RANGE[qtype][2]
    x = d * (q - off).float()
    if m is not None:
        x = x + m
    return x.reshape(shape)
