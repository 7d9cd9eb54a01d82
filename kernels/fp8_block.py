"""Triton: FP8 E4M3 codes of a weight with one scale per (bh, bw) block. Reference: ``ops/quantize/fp8_block.py
fp8_block_encode`` (code = fp8(clamp(wd(x / scale), -448, 448)), the division rounded to the weight dtype)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _e4m3_bits(v):
    """Round-to-nearest-even fp32 -> float8_e4m3fn bit pattern, for |v| <= 448. Done with integer ops: the
    interpreter's fp8 cast does not round (126.3 -> 64), and this way every backend gives torch's bytes."""
    bits = v.to(tl.int32, bitcast=True)
    sign = ((bits >> 24) & 0x80).to(tl.int32)
    exp = (bits >> 23) & 0xFF
    mant = bits & 0x7FFFFF
    # normal e4m3 (|v| >= 2^-6): keep 3 of 23 mantissa bits, ties to even; a carry bumps the exponent
    m3 = mant >> 20
    rem = mant & 0xFFFFF
    up = (rem > 0x80000) | ((rem == 0x80000) & ((m3 & 1) == 1))
    normal = ((exp - 127 + 7) << 3) + m3 + up.to(tl.int32)
    # subnormal e4m3 (|v| < 2^-6): multiples of 2^-9; |v| * 512 < 8 is exact, + 2^23 rounds it to an integer
    a = tl.abs(v) * 512.0
    sub = ((a + 8388608.0) - 8388608.0).to(tl.int32)
    code = tl.where(exp - 127 >= -6, normal, sub)
    return (code | sign).to(tl.uint8)


@triton.jit
def _round_to(v, WD: tl.constexpr):
    """fp32 -> the nearest bfloat16 (WD 1) or float16 (WD 2) value, ties to even, as fp32. Integer and
    power-of-two arithmetic only: the interpreter's casts to these dtypes truncate."""
    if WD == 1:
        b = v.to(tl.int32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) & -65536
        return b.to(tl.float32, bitcast=True)
    elif WD == 2:
        b = v.to(tl.int32, bitcast=True)
        e = tl.maximum(((b >> 23) & 0xFF) - 127, -14)  # float16 keeps 10 bits below the exponent, down to 2^-24
        q = ((e - 10 + 127) << 23).to(tl.float32, bitcast=True)
        inv_q = ((127 + 10 - e) << 23).to(tl.float32, bitcast=True)
        t = (tl.abs(v) * inv_q + 8388608.0) - 8388608.0  # < 2^11: adding 2^23 rounds to an integer, ties to even
        r = t * q
        return tl.where(b < 0, -r, r)
    else:
        return v


@triton.jit
def _fp8_block_encode_kernel(
    out_ptr, x_ptr, scale_ptr, rows, cols, scale_cols,
    BH: tl.constexpr, BW: tl.constexpr, WD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    mask = (r[:, None] < rows) & (c[None, :] < cols)
    x = tl.load(x_ptr + r[:, None] * cols + c[None, :], mask=mask, other=0.0)
    s = tl.load(scale_ptr + (r // BH)[:, None] * scale_cols + (c // BW)[None, :], mask=mask, other=1.0)
    v = _round_to(tl.div_rn(x.to(tl.float32), s.to(tl.float32)), WD)  # IEEE division, then the weight dtype
    v = tl.minimum(tl.maximum(v, -448.0), 448.0)
    tl.store(out_ptr + r[:, None] * cols + c[None, :], _e4m3_bits(v), mask=mask)


_WD = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def fp8_block_encode(x: torch.Tensor, scale: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    rows, cols = x.shape
    x = x.contiguous()
    scale = scale.contiguous()
    out = torch.empty(rows, cols, dtype=torch.uint8, device=x.device)
    block_c = min(128, triton.next_power_of_2(max(cols, 1)))
    block_r = max(1, min(16, triton.next_power_of_2(rows)))
    grid = (triton.cdiv(rows, block_r), triton.cdiv(cols, block_c))
    _fp8_block_encode_kernel[grid](
        out, x, scale, rows, cols, scale.shape[1], BH=block[0], BW=block[1], WD=_WD[x.dtype], BLOCK_R=block_r, BLOCK_C=block_c
    )
    return out.view(torch.float8_e4m3fn)
