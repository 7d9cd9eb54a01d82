"""Quantization schemes: a registry, and the pure-torch math of each (the spec, the CPU path, the oracle).

Integer schemes follow compressed-tensors 0.20 (``quantization/utils/helpers.py calculate_qparams``,
``lifecycle/forward.py``): min and max of each group are widened to include 0; symmetric
``scale = absmax / ((qmax - qmin) / 2)`` (int4: absmax/7.5, int8: absmax/127.5), asymmetric
``scale = (max - min) / (qmax - qmin)`` and ``zero = clamp(round(qmin - min/scale))``; a zero scale becomes
the scale dtype's eps; ``q = clamp(round(x/scale + zero), qmin, qmax)``; ``x' = (q - zero) * scale`` in the
scale dtype, which is the weight's dtype.

Where we differ on purpose: compressed-tensors rounds ``x/scale`` to the weight dtype before rounding
to an integer (bf16 keeps 8 bits, so about 0.6% of int4 codes of a bf16 weight land one step away from
the nearest). We compute ``x * (1/scale)`` in fp32 with the *stored* scale, so every code is the nearest
one for the scale the consumer reads, and kernel and reference agree bit for bit (the reciprocal is
computed once per group in both). Scales and zero points are computed exactly as compressed-tensors
computes them (same dtype roundings), so ``weight_scale`` and ``weight_zero_point`` are identical.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from modelsurgeon.kernels import should_use_triton
from modelsurgeon.ops.core.registry import Registry

# --------------------------------------------------------------------------------------------
# integer group-wise quantization (w4a16, w8a16, w8a8)


def int_range(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def scale_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """compressed-tensors stores scales in the weight's dtype when it is a float type."""
    return dtype if dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else torch.float16


def _groups(x: torch.Tensor, group_size: int) -> torch.Tensor:
    rows, cols = x.shape
    g = cols if group_size == -1 else group_size
    if g <= 0 or cols % g:
        raise ValueError(f"row length {cols} is not a multiple of the group size {g}")
    return x.reshape(rows, cols // g, g)


def int_params(
    xg: torch.Tensor, bits: int, symmetric: bool, scale_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-group (scale in ``scale_dtype``, zero as float or None) for groups ``xg`` of shape (rows, ng, g)."""
    qmin, qmax = int_range(bits)
    x = xg.float()
    mn = x.amin(-1).clamp(max=0)
    mx = x.amax(-1).clamp(min=0)
    # divide by a tensor, not a Python number: CUDA turns division by a scalar into a multiplication
    if symmetric:
        scale = (torch.maximum(-mn, mx) / mx.new_tensor((qmax - qmin) / 2)).to(scale_dtype)
    else:
        # compressed-tensors subtracts in the weight dtype, then divides: round the same way
        scale = ((mx - mn).to(scale_dtype).float() / mx.new_tensor(float(qmax - qmin))).to(scale_dtype)
    eps = torch.finfo(scale_dtype).eps
    zero = None
    if not symmetric:
        # zero = round(qmin - min/scale), each step rounded to the scale dtype as compressed-tensors does;
        # computed before the eps substitution, as there; an all-zero group gives 0/0, which compressed-tensors
        # turns into a zero point of 0 (NaN cast to int8 on x86): we write 0 explicitly
        t = (mn / scale.float()).to(scale_dtype).float()
        z = (qmin - t).to(scale_dtype).float()
        zero = torch.where(torch.isfinite(z), z, torch.zeros_like(z)).clamp(qmin, qmax).round()
    scale = torch.where(scale == 0, torch.tensor(eps, dtype=scale_dtype, device=scale.device), scale)
    return scale, zero


def int_encode(xg: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int) -> torch.Tensor:
    """Codes ``clamp(round(x * (1/scale) + zero))`` as int8, shape (rows, ng*g)."""
    qmin, qmax = int_range(bits)
    recip = 1.0 / scale.float()
    v = xg.float() * recip.unsqueeze(-1)
    if zero is not None:
        v = v + zero.float().unsqueeze(-1)
    return v.clamp_(qmin, qmax).round_().to(torch.int8).reshape(xg.shape[0], -1)


def group_quantize(
    x: torch.Tensor, bits: int, group_size: int, symmetric: bool = True, use_triton: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Round-to-nearest of a 2-D weight: (int8 codes, scale (rows, ngroups) in the scale dtype, int8 zero or None).

    ``group_size`` -1 means one group per row (per-channel).
    """
    if x.dtype != torch.float64 and should_use_triton(x.device, use_triton):
        from modelsurgeon.kernels.quant import group_quantize as kernel

        return kernel(x, bits, group_size, symmetric)
    xg = _groups(x.float(), group_size)  # one fp32 copy, shared by the parameters and the codes
    scale, zero = int_params(xg, bits, symmetric, scale_dtype_for(x.dtype))
    codes = int_encode(xg, scale, zero, bits)
    return codes, scale, None if zero is None else zero.to(torch.int8)


def group_dequantize(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None,
    group_size: int,
    dtype: torch.dtype,
    use_triton: bool | None = None,
) -> torch.Tensor:
    """``(q - zero) * scale`` rounded to the scale dtype (as compressed-tensors decompresses), then ``dtype``."""
    if scale.dtype != torch.float64 and should_use_triton(codes.device, use_triton):
        from modelsurgeon.kernels.quant import group_dequantize as kernel

        return kernel(codes, scale, zero, group_size, dtype)
    qg = _groups(codes, group_size).float()
    if zero is not None:
        qg -= zero.float().unsqueeze(-1)
    out = qg.mul_(scale.float().unsqueeze(-1)).to(scale.dtype)
    return out.reshape(codes.shape).to(dtype)


# --------------------------------------------------------------------------------------------
# fp8 e4m3, one scale per output channel (compressed-tensors FP8_DYNAMIC weights)

FP8_MAX = 448.0


def fp8_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sd = scale_dtype_for(x.dtype)
    xf = x.float()
    scale = (xf.abs().amax(-1, keepdim=True) / FP8_MAX).to(sd)
    scale = torch.where(scale == 0, torch.tensor(torch.finfo(sd).eps, dtype=sd, device=x.device), scale)
    v = (xf * (1.0 / scale.float())).clamp_(-FP8_MAX, FP8_MAX)
    return v.to(torch.float8_e4m3fn), scale


def fp8_dequantize(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (codes.float() * scale.float()).to(scale.dtype).to(dtype)


# --------------------------------------------------------------------------------------------
# NF4 (bitsandbytes): a 16-value code book scaled by each block's absmax

NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)  # fmt: skip


def nf4_quantize(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 codes 0..15 of the flattened tensor, fp32 absmax per block); nearest code via the midpoints."""
    xb = x.float().reshape(-1, block)
    absmax = xb.abs().amax(-1, keepdim=True)
    scaled = xb * torch.where(absmax == 0, torch.zeros_like(absmax), 1.0 / absmax)
    code = torch.tensor(NF4_CODE, dtype=torch.float32, device=x.device)
    codes = torch.bucketize(scaled, (code[1:] + code[:-1]) / 2)
    return codes.to(torch.uint8).reshape(x.shape), absmax.reshape(-1)


def nf4_dequantize(codes: torch.Tensor, absmax: torch.Tensor, block: int, dtype: torch.dtype) -> torch.Tensor:
    code = torch.tensor(NF4_CODE, dtype=torch.float32, device=codes.device)
    vals = code[codes.reshape(-1, block).long()] * absmax.unsqueeze(-1)
    return vals.reshape(codes.shape).to(dtype)


# --------------------------------------------------------------------------------------------
# binary: sign times one scale per group, the scale that minimises the squared error


def binary_quantize(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(bool signs, fp32 scale per group). For fixed signs s, argmin_a |x - a*s|^2 = mean|x| (BitDelta, 2024)."""
    xg = _groups(x, group_size).float()
    return (xg >= 0).reshape(x.shape), xg.abs().mean(-1)


def binary_dequantize(signs: torch.Tensor, scale: torch.Tensor, group_size: int, dtype: torch.dtype) -> torch.Tensor:
    sg = _groups(signs, group_size)
    a = scale.unsqueeze(-1)
    return torch.where(sg, a, -a).reshape(signs.shape).to(dtype)


# --------------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True)
class Scheme:
    """A named quantization scheme and what it needs."""

    name: str
    summary: str
    family: str  # "int" | "fp8" | "nf4" | "binary" | "gguf"
    bits: int
    group_size: int  # the default; -1 = one group per row
    symmetric: bool = True
    formats: tuple[str, ...] = ("dense",)  # formats that can hold it; the first is the default
    group_fixed: bool = False  # the block size is part of the format (GGUF)
    asym_capable: bool = False
    hqq_capable: bool = False
    ct_format: str | None = None  # compressed-tensors format name
    activations: dict | None = None  # compressed-tensors input_activations
    gguf_type: str | None = None
    url: str = ""


_REGISTRY: Registry[Scheme] = Registry("quantization scheme")


def register(scheme: Scheme) -> Scheme:
    return _REGISTRY.add(scheme.name, scheme)


def get_scheme(name: str) -> Scheme:
    return _REGISTRY.lookup(name.strip().lower())


def schemes() -> list[Scheme]:
    return list(_REGISTRY.values())


_CT_URL = "https://github.com/vllm-project/compressed-tensors"
_TOKEN_ACT = {"dynamic": True, "group_size": None, "num_bits": 8, "strategy": "token", "symmetric": True}
register(
    Scheme(
        "w4a16",
        "int4 weights, group 128, symmetric (compressed-tensors W4A16)",
        "int",
        4,
        128,
        formats=("compressed-tensors", "dense"),
        asym_capable=True,
        hqq_capable=True,
        ct_format="pack-quantized",
        url=_CT_URL,
    )
)
register(
    Scheme(
        "w8a16",
        "int8 weights, group 128, symmetric (compressed-tensors W8A16)",
        "int",
        8,
        128,
        formats=("compressed-tensors", "dense"),
        asym_capable=True,
        hqq_capable=True,
        ct_format="pack-quantized",
        url=_CT_URL,
    )
)
register(
    Scheme(
        "w8a8",
        "int8 weights per channel + dynamic int8 activations per token (W8A8)",
        "int",
        8,
        -1,
        formats=("compressed-tensors", "dense"),
        asym_capable=True,
        hqq_capable=True,
        ct_format="int-quantized",
        activations={**_TOKEN_ACT, "type": "int"},
        url=_CT_URL,
    )
)
register(
    Scheme(
        "fp8",
        "fp8 e4m3 weights per channel + dynamic fp8 activations per token (FP8_DYNAMIC)",
        "fp8",
        8,
        -1,
        formats=("compressed-tensors", "dense"),
        group_fixed=True,
        ct_format="float-quantized",
        activations={**_TOKEN_ACT, "type": "float"},
        url=_CT_URL,
    )
)
register(
    Scheme(
        "nf4",
        "4-bit NormalFloat code book, absmax per block of 64 (bitsandbytes)",
        "nf4",
        4,
        64,
        url="https://arxiv.org/abs/2305.14314",
    )
)
register(
    Scheme(
        "binary",
        "1 bit: sign times the error-minimising scale mean|w| per group of 128",
        "binary",
        1,
        128,
        url="https://arxiv.org/abs/2402.10193",
    )
)
_GGUF_URL = "https://github.com/ggml-org/ggml/blob/master/docs/gguf.md"
for _name, _bits, _sym, _summary in (
    ("q8_0", 8, True, "GGUF Q8_0: int8, one fp16 scale per block of 32 (8.5 bpw)"),
    ("q4_0", 4, True, "GGUF Q4_0: 4 bits, one fp16 scale per block of 32 (4.5 bpw)"),
    ("q4_1", 4, False, "GGUF Q4_1: 4 bits, fp16 scale and minimum per block of 32 (5.0 bpw)"),
    ("q5_0", 5, True, "GGUF Q5_0: 5 bits, one fp16 scale per block of 32 (5.5 bpw)"),
    ("q5_1", 5, False, "GGUF Q5_1: 5 bits, fp16 scale and minimum per block of 32 (6.0 bpw)"),
):
    register(
        Scheme(
            _name,
            _summary,
            "gguf",
            _bits,
            32,
            symmetric=_sym,
            formats=("gguf", "dense"),
            group_fixed=True,
            hqq_capable=True,
            gguf_type=_name.upper(),
            url=_GGUF_URL,
        )
    )


# --------------------------------------------------------------------------------------------
# one weight through a scheme


@dataclass(frozen=True)
class QuantSpec:
    """A scheme with its settings resolved for one run."""

    scheme: Scheme
    group_size: int  # -1 = one group per row
    symmetric: bool
    hqq: object | None = None  # recipes.quantize.HQQConfig when --optimizer hqq

    def group_for(self, cols: int) -> int:
        return cols if self.group_size == -1 else self.group_size

    def bits_per_weight(self, shape: tuple[int, ...], scale_bytes: int) -> float:
        """Payload bits per weight: codes plus scales (and zero points), not counting the format's framing."""
        s = self.scheme
        cols = shape[-1]
        g = self.group_for(cols)
        if s.family == "gguf":
            from .gguf_blocks import BLOCK_BYTES

            return BLOCK_BYTES[s.gguf_type] * 8 / 32
        if s.family == "nf4":
            return s.bits + 32 / g  # fp32 absmax per block
        per_group = scale_bytes * 8 + (0 if self.symmetric else s.bits)
        return s.bits + per_group / g


@dataclass
class QuantizedWeight:
    """One weight after a scheme: its parts (codes, scales...) and the dequantized tensor."""

    parts: dict[str, torch.Tensor]
    dequantized: torch.Tensor
    bits_per_weight: float
    extra: dict = field(default_factory=dict)


def quantize_weight(
    w: torch.Tensor, spec: QuantSpec, use_triton: bool | None = None, need_dequant: bool = True
) -> QuantizedWeight:
    """Quantize one 2-D float weight (on any device) and dequantize it back into its own dtype.

    Sets ``extra["signal"]``, ``extra["noise"]`` (energies of ``w`` and of the error). With
    ``need_dequant=False`` a scheme may skip materialising ``dequantized`` (GGUF measures its error per chunk).
    """
    qw = _FAMILIES[spec.scheme.family](w, spec, use_triton, need_dequant)
    if "noise" not in qw.extra:
        qw.extra["signal"], qw.extra["noise"] = error_stats(w, qw.dequantized)
    return qw


def _int_family(w: torch.Tensor, spec: QuantSpec, use_triton: bool | None, need_dequant: bool) -> QuantizedWeight:
    bits, g = spec.scheme.bits, spec.group_size
    if spec.hqq is not None:
        from .hqq import hqq_int_quantize

        codes, scale, zero = hqq_int_quantize(w, bits, g, spec.symmetric, spec.hqq)
    else:
        codes, scale, zero = group_quantize(w, bits, g, spec.symmetric, use_triton)
    deq = group_dequantize(codes, scale, zero, g, w.dtype, use_triton)
    parts = {"codes": codes, "scale": scale}
    if zero is not None:
        parts["zero"] = zero
    return QuantizedWeight(parts, deq, spec.bits_per_weight(tuple(w.shape), scale.element_size()))


def _fp8_family(w: torch.Tensor, spec: QuantSpec, use_triton: bool | None, need_dequant: bool) -> QuantizedWeight:
    codes, scale = fp8_quantize(w)
    return QuantizedWeight(
        {"codes": codes, "scale": scale},
        fp8_dequantize(codes, scale, w.dtype),
        spec.bits_per_weight(tuple(w.shape), scale.element_size()),
    )


def _nf4_family(w: torch.Tensor, spec: QuantSpec, use_triton: bool | None, need_dequant: bool) -> QuantizedWeight:
    g = spec.group_for(w.shape[-1])
    codes, absmax = nf4_quantize(w, g)
    return QuantizedWeight(
        {"codes": codes, "absmax": absmax}, nf4_dequantize(codes, absmax, g, w.dtype), spec.bits_per_weight(tuple(w.shape), 4)
    )


def _binary_family(w: torch.Tensor, spec: QuantSpec, use_triton: bool | None, need_dequant: bool) -> QuantizedWeight:
    g = spec.group_for(w.shape[-1])
    signs, scale = binary_quantize(w, g)
    return QuantizedWeight(
        {"signs": signs, "scale": scale}, binary_dequantize(signs, scale, g, w.dtype), spec.bits_per_weight(tuple(w.shape), 2)
    )


def _gguf_family(w: torch.Tensor, spec: QuantSpec, use_triton: bool | None, need_dequant: bool) -> QuantizedWeight:
    from modelsurgeon.kernels import should_use_triton

    from .gguf_blocks import dequantize_blocks, quantize_blocks

    qtype = spec.scheme.gguf_type
    bpw = spec.bits_per_weight(tuple(w.shape), 2)
    if spec.hqq is None and not need_dequant and not should_use_triton(w.device, use_triton):
        err: list = []
        blocks = quantize_blocks(w, qtype, use_triton=False, error=err)  # measures the error chunk by chunk
        return QuantizedWeight({"blocks": blocks}, None, bpw, {"signal": err[0][0], "noise": err[0][1]})
    if spec.hqq is not None:
        from .hqq import hqq_gguf_quantize

        blocks = hqq_gguf_quantize(w, qtype, spec.hqq)
    else:
        blocks = quantize_blocks(w, qtype, use_triton)
    deq = dequantize_blocks(blocks, qtype, tuple(w.shape)).to(w.dtype)
    return QuantizedWeight({"blocks": blocks}, deq, bpw)


_FAMILIES: dict[str, Callable[[torch.Tensor, QuantSpec, bool | None, bool], QuantizedWeight]] = {
    "int": _int_family,
    "fp8": _fp8_family,
    "nf4": _nf4_family,
    "binary": _binary_family,
    "gguf": _gguf_family,
}


def error_stats(w: torch.Tensor, deq: torch.Tensor) -> tuple[float, float]:
    """(signal energy, noise energy) of ``w`` and ``w - deq``: fp32 sums over chunks of 1M values (torch sums
    pairwise, so each chunk is accurate to ~1e-7), accumulated in Python floats."""
    sig = noise = 0.0
    a, b = w.reshape(-1), deq.reshape(-1)
    step = 1 << 20
    for i in range(0, a.numel(), step):
        x = a[i : i + step].float()
        sig += float(x.square().sum())
        noise += float((x - b[i : i + step].float()).square_().sum())
    return sig, noise


def sqnr_db(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)
