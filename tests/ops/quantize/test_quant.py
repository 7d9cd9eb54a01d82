"""The quantization references against the libraries they reproduce (compressed-tensors, bitsandbytes' code
book) and against their own definitions (binary's optimal scale, HQQ never worse than round-to-nearest)."""

from __future__ import annotations

import pytest
import torch

from modelsurgeon.ops.core.errors import UsageError
from modelsurgeon.ops.quantize.binary import binary_dequantize, binary_quantize
from modelsurgeon.ops.quantize.fp8 import fp8_quantize
from modelsurgeon.ops.quantize.nf4 import NF4_CODE, nf4_dequantize, nf4_quantize
from modelsurgeon.ops.quantize.pack import pack_int32, unpack_int32
from modelsurgeon.ops.quantize.quant import group_dequantize, group_quantize, int_range
from modelsurgeon.ops.quantize.schemes import QuantSpec, get_scheme, quantize_weight, schemes
from modelsurgeon.recipes.quantize import HQQConfig

ct_helpers = pytest.importorskip("compressed_tensors.quantization.utils")
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32  # noqa: E402
from compressed_tensors.quantization import QuantizationArgs  # noqa: E402
from compressed_tensors.quantization.lifecycle.forward import dequantize as ct_dequantize  # noqa: E402
from compressed_tensors.quantization.lifecycle.forward import quantize as ct_quantize  # noqa: E402


def _weight(rows=64, cols=512, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.02
    w[torch.rand(rows, cols, generator=g) < 0.01] *= 10  # some outliers, as real weights have
    w[3] = 0
    return w.to(dtype)


def _ct(w, bits, group, symmetric):
    """compressed-tensors' own scale, zero point and codes for w."""
    args = QuantizationArgs(
        num_bits=bits,
        type="int",
        symmetric=symmetric,
        strategy="group" if group > 0 else "channel",
        group_size=group if group > 0 else None,
    )
    wg = w.unflatten(-1, (-1, group)) if group > 0 else w.unsqueeze(1)
    scale, zp = ct_helpers.calculate_qparams(wg.amin(-1), wg.amax(-1), args)
    if group < 0:
        scale, zp = scale.reshape(-1, 1), zp.reshape(-1, 1)
    q = ct_quantize(w, scale, zp, args, dtype=torch.int8)
    return args, scale, zp, q


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits,group,symmetric", [(4, 128, True), (4, 64, False), (8, 128, True), (8, -1, True), (8, -1, False)])
def test_scales_and_zero_points_equal_compressed_tensors(dtype, bits, group, symmetric):
    w = _weight(dtype=dtype)
    codes, scale, zero = group_quantize(w, bits, group, symmetric)
    args, ct_scale, ct_zp, ct_q = _ct(w, bits, group, symmetric)
    assert scale.dtype == ct_scale.dtype == dtype
    assert torch.equal(scale, ct_scale)
    if symmetric:
        assert zero is None
    else:
        assert torch.equal(zero, ct_zp.to(torch.int8))
    # codes: compressed-tensors rounds x/scale to the weight dtype before rounding to an integer; we keep
    # fp32. Where they differ it is by one step, and ours picks the nearest code, so the total error is no
    # larger (element by element the dequantized value's own rounding to the weight dtype can flip a near-tie).
    diff = (codes.to(torch.int16) - ct_q.to(torch.int16)).abs()
    assert int(diff.max()) <= 1
    if dtype == torch.float32:
        assert float((diff > 0).float().mean()) < 1e-3
    ours = group_dequantize(codes, scale, zero, group, torch.float32)
    theirs = ct_dequantize(ct_q, ct_scale, ct_zp if not symmetric else None, args).float()
    err_ours = float((ours - w.float()).double().square().sum())
    err_theirs = float((theirs - w.float()).double().square().sum())
    assert err_ours <= err_theirs * (1 + 1e-6), (err_ours, err_theirs)


@pytest.mark.parametrize("bits", [4, 8])
def test_packing_and_dequantization_equal_compressed_tensors(bits):
    w = _weight(dtype=torch.bfloat16, cols=384)
    codes, scale, zero = group_quantize(w, bits, 128, True)
    assert torch.equal(pack_int32(codes, bits), pack_to_int32(codes, bits))
    assert torch.equal(unpack_int32(pack_int32(codes, bits), bits, 384), codes)
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=True, strategy="group", group_size=128)
    # what transformers computes when it decompresses our checkpoint
    assert torch.equal(group_dequantize(codes, scale, None, 128, torch.bfloat16), ct_dequantize(codes, scale, None, args))


def test_fp8_matches_compressed_tensors_scale_and_round_trip():
    w = _weight(dtype=torch.bfloat16)
    codes, scale = fp8_quantize(w)
    args = QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="channel")
    ct_scale, _ = ct_helpers.calculate_qparams(w.amin(-1, keepdim=True), w.amax(-1, keepdim=True), args)
    assert torch.equal(scale, ct_scale) and codes.dtype == torch.float8_e4m3fn
    deq = codes.float() * scale.float()
    rel = float((deq - w.float()).norm() / w.float().norm())
    assert rel < 0.04, rel  # e4m3 keeps 3 mantissa bits: about 2% relative error per value


def test_int_codes_stay_in_range_and_symmetric_extremes():
    w = _weight(dtype=torch.float32)
    for bits in (4, 8):
        qmin, qmax = int_range(bits)
        codes, scale, _ = group_quantize(w, bits, 64, True)
        assert int(codes.min()) >= qmin and int(codes.max()) <= qmax
        # symmetric: scale = absmax / ((qmax - qmin) / 2), so the largest value maps to +-(qmax + 0.5) -> qmax or qmin
        assert torch.equal(
            scale,
            (w.reshape(64, -1, 64).abs().amax(-1) / ((qmax - qmin) / 2)).where(scale != torch.finfo(torch.float32).eps, scale),
        )


def test_nf4_picks_the_nearest_code():
    w = _weight(dtype=torch.float32, rows=16, cols=256)
    codes, absmax = nf4_quantize(w, 64)
    code = torch.tensor(NF4_CODE)
    scaled = w.reshape(-1, 64) / torch.where(absmax == 0, torch.ones_like(absmax), absmax).unsqueeze(-1)
    nearest = (scaled.unsqueeze(-1) - code).abs().argmin(-1)
    got = codes.reshape(-1, 64).long()
    assert float((got == nearest).float().mean()) > 0.999  # differences only at exact midpoints
    assert torch.allclose(nf4_dequantize(codes, absmax, 64, torch.float32).reshape(-1, 64), code[nearest] * absmax.unsqueeze(-1))
    assert len(NF4_CODE) == 16 and NF4_CODE[7] == 0.0 and sorted(NF4_CODE) == list(NF4_CODE)


def test_binary_scale_minimises_the_error():
    w = _weight(dtype=torch.float32, rows=8, cols=256)
    signs, scale = binary_quantize(w, 128)
    deq = binary_dequantize(signs, scale, 128, torch.float32)
    err = (deq - w).square().sum()
    for f in (0.9, 1.1):  # any other scale for the same signs is worse
        assert float((binary_dequantize(signs, scale * f, 128, torch.float32) - w).square().sum()) > float(err)
    assert torch.equal(signs, w >= 0)


@pytest.mark.parametrize(
    "name,group,symmetric",
    [("w4a16", 64, True), ("w4a16", 64, False), ("w8a8", -1, True), ("q4_0", 32, True), ("q4_1", 32, False), ("q5_1", 32, False)],
)
def test_hqq_is_never_worse_than_round_to_nearest(name, group, symmetric):
    w = _weight(dtype=torch.bfloat16, rows=128, cols=512)
    s = get_scheme(name)
    rtn = quantize_weight(w, QuantSpec(s, group, symmetric))
    hqq = quantize_weight(w, QuantSpec(s, group, symmetric, HQQConfig()))
    assert hqq.extra["noise"] <= rtn.extra["noise"]
    if name in ("w4a16", "q4_1"):  # 4-bit with outliers: the refinement finds a real improvement
        assert hqq.extra["noise"] < 0.97 * rtn.extra["noise"], (hqq.extra["noise"], rtn.extra["noise"])


def test_registry_lists_known_schemes_on_unknown_name():
    with pytest.raises(UsageError) as e:
        get_scheme("int3")
    for s in schemes():
        assert s.name in str(e.value)
    assert get_scheme("W4A16").name == "w4a16"


def test_registry_refuses_duplicates():
    from modelsurgeon.ops.quantize.schemes import register

    with pytest.raises(ValueError, match="already registered"):
        register(get_scheme("w4a16"))


def test_bits_per_weight():
    s = get_scheme("w4a16")
    assert QuantSpec(s, 128, True).bits_per_weight((8, 256), 2) == 4 + 16 / 128
    assert QuantSpec(s, 128, False).bits_per_weight((8, 256), 2) == 4 + 20 / 128
    assert QuantSpec(get_scheme("q4_0"), 32, True).bits_per_weight((8, 256), 2) == 4.5
    assert QuantSpec(get_scheme("q5_1"), 32, False).bits_per_weight((8, 256), 2) == 6.0
    assert QuantSpec(get_scheme("nf4"), 64, True).bits_per_weight((8, 256), 4) == 4.5
