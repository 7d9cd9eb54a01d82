"""Quantization schemes: the registry, a scheme's settings for one run, and one weight through a scheme.

    spec = QuantSpec(get_scheme("w4a16"), group_size=128, symmetric=True)
    qw = quantize_weight(w, spec)           # parts (codes, scales...), the dequantized weight, bits per weight

Each scheme is the torch-free rules the settings check (``recipes/quantize.py SCHEME_RULES``: defaults and
what it accepts) plus what only the implementation needs: bits, the compressed-tensors and GGUF details, a
summary and its source. The math lives in a file per kind, imported only when a weight is quantized:

    quant.py        integer group-wise round-to-nearest (w4a16, w8a16, w8a8); its kernel is kernels/quant.py
    hqq.py          half-quadratic refinement of the integer and GGUF parameters (--optimizer hqq)
    fp8.py          fp8 e4m3, one scale per output channel
    nf4.py          the NormalFloat-4 code book, absmax per block
    binary.py       sign times the error-minimising scale per group
    gguf_blocks.py  ggml's Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 blocks, byte for byte
    kquants.py      ggml's k-quant super-blocks Q2_K ... Q6_K (and the --imatrix searches), byte for byte

so this module imports no torch: the CLI lists the schemes in its help without loading it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from modelsurgeon.ops.core.registry import Registry
from modelsurgeon.recipes.quantize import SCHEME_RULES, HQQConfig, SchemeRules

from .sqnr import error_stats

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, kw_only=True)
class Scheme(SchemeRules):
    """A named quantization scheme: its rules (name, family, default group size and symmetry, formats, what it
    accepts) and what the implementation needs."""

    bits: int
    summary: str
    url: str = ""
    ct_format: str | None = None  # compressed-tensors format name
    activations: dict | None = None  # compressed-tensors input_activations
    gguf_type: str | None = None


_REGISTRY: Registry[Scheme] = Registry("quantization scheme")


def register(scheme: Scheme) -> Scheme:
    return _REGISTRY.add(scheme.name, scheme)


def get_scheme(name: str) -> Scheme:
    return _REGISTRY.lookup(name.strip().lower())


def schemes() -> list[Scheme]:
    return list(_REGISTRY.values())


def block_scheme(qtype: str) -> Scheme:
    """The scheme that writes GGUF block type ``qtype`` (Q6_K: the q6_k mixture, whose block type it is)."""
    for s in _REGISTRY.values():
        if s.gguf_type == qtype:
            return s
    raise KeyError(qtype)


def _scheme(name: str, bits: int, summary: str, **implementation) -> Scheme:
    """The scheme ``name`` with its rules from ``SCHEME_RULES``, so each fact is written once."""
    rules = SCHEME_RULES[name]
    return register(
        Scheme(**{f.name: getattr(rules, f.name) for f in fields(rules)}, bits=bits, summary=summary, **implementation)
    )


_CT_URL = "https://github.com/vllm-project/compressed-tensors"
_TOKEN_ACT = {"dynamic": True, "group_size": None, "num_bits": 8, "strategy": "token", "symmetric": True}
_scheme("w4a16", 4, "int4 weights, group 128, symmetric (compressed-tensors W4A16)", ct_format="pack-quantized", url=_CT_URL)
_scheme("w8a16", 8, "int8 weights, group 128, symmetric (compressed-tensors W8A16)", ct_format="pack-quantized", url=_CT_URL)
_scheme(
    "w8a8",
    8,
    "int8 weights per channel + dynamic int8 activations per token (W8A8)",
    ct_format="int-quantized",
    activations={**_TOKEN_ACT, "type": "int"},
    url=_CT_URL,
)
_scheme(
    "fp8",
    8,
    "fp8 e4m3 weights per channel + dynamic fp8 activations per token (FP8_DYNAMIC)",
    ct_format="float-quantized",
    activations={**_TOKEN_ACT, "type": "float"},
    url=_CT_URL,
)
_scheme("nf4", 4, "4-bit NormalFloat code book, absmax per block of 64 (bitsandbytes)", url="https://arxiv.org/abs/2305.14314")
_scheme(
    "binary", 1, "1 bit: sign times the error-minimising scale mean|w| per group of 128", url="https://arxiv.org/abs/2402.10193"
)
_GGUF_URL = "https://github.com/ggml-org/ggml/blob/master/docs/gguf.md"
for _name, _bits, _summary in (
    ("q8_0", 8, "GGUF Q8_0: int8, one fp16 scale per block of 32 (8.5 bpw)"),
    ("q4_0", 4, "GGUF Q4_0: 4 bits, one fp16 scale per block of 32 (4.5 bpw)"),
    ("q4_1", 4, "GGUF Q4_1: 4 bits, fp16 scale and minimum per block of 32 (5.0 bpw)"),
    ("q5_0", 5, "GGUF Q5_0: 5 bits, one fp16 scale per block of 32 (5.5 bpw)"),
    ("q5_1", 5, "GGUF Q5_1: 5 bits, fp16 scale and minimum per block of 32 (6.0 bpw)"),
):
    _scheme(_name, _bits, _summary, gguf_type=_name.upper(), url=_GGUF_URL)

# --- GGUF (issue 12): unquantized GGUF files ------------------------------------------------------------------
for _name, _bits, _summary in (
    ("f32", 32, "GGUF with float32 weights (llama.cpp's converter --outtype f32)"),
    ("f16", 16, "GGUF with float16 weights (llama.cpp's converter --outtype f16)"),
    ("bf16", 16, "GGUF with bfloat16 weights (llama.cpp's converter --outtype bf16)"),
):
    _scheme(_name, _bits, _summary, gguf_type=_name.upper(), url=_GGUF_URL)

# --- GGUF (issue 12): k-quants. A mixture picks each tensor's block type as llama-quantize does
# (formats/gguf_types.py); q3_k, q4_k, q5_k put one block type on the selected weights, like q4_0 ---------
_KQ_URL = "https://github.com/ggml-org/llama.cpp/pull/1684"
for _name, _bits, _summary in (
    ("q3_k", 3, "GGUF Q3_K on every selected weight: 3 bits, 6-bit scales per 16, super-blocks of 256 (3.44 bpw)"),
    ("q4_k", 4, "GGUF Q4_K on every selected weight: 4 bits, 6-bit scale and min per 32, super-blocks of 256 (4.5 bpw)"),
    ("q5_k", 5, "GGUF Q5_K on every selected weight: 5 bits, 6-bit scale and min per 32, super-blocks of 256 (5.5 bpw)"),
):
    _scheme(_name, _bits, _summary, gguf_type=_name.upper(), url=_KQ_URL)
for _name, _bits, _summary in (
    ("q2_k", 2, "llama-quantize's Q2_K mixture: Q2_K, attention V / FFN down / output in Q3_K-Q6_K"),
    ("q3_k_s", 3, "llama-quantize's Q3_K_S mixture: Q3_K, output Q6_K"),
    ("q3_k_m", 3, "llama-quantize's Q3_K_M mixture: Q3_K, attention V / output Q4_K-Q6_K, early FFN down Q5_K"),
    ("q3_k_l", 3, "llama-quantize's Q3_K_L mixture: Q3_K, attention V / FFN down / attention output Q5_K"),
    ("q4_k_s", 4, "llama-quantize's Q4_K_S mixture: Q4_K, early attention V / FFN down Q5_K, output Q6_K"),
    ("q4_k_m", 4, "llama-quantize's Q4_K_M mixture (its default): Q4_K, half of attention V and FFN down Q6_K"),
    ("q5_k_s", 5, "llama-quantize's Q5_K_S mixture: Q5_K, output Q6_K"),
    ("q5_k_m", 5, "llama-quantize's Q5_K_M mixture: Q5_K, half of attention V and FFN down Q6_K"),
    ("q6_k", 6, "llama-quantize's Q6_K: Q6_K everywhere, embeddings and output included (6.56 bpw)"),
):
    _scheme(_name, _bits, _summary, gguf_type=_name.upper(), url=_KQ_URL)

# --- issue 13: FP8 blocks, FP4 (NVFP4, MXFP4) and 2/3-bit integers, as compressed-tensors writes them
_FP8_GROUP_ACT = {"dynamic": True, "group_size": 128, "num_bits": 8, "strategy": "group", "symmetric": True, "type": "float"}
_FP4_ACT = {
    "dynamic": "local",
    "group_size": 16,
    "num_bits": 4,
    "observer": "static_minmax",
    "scale_dtype": "torch.float8_e4m3fn",
    "strategy": "tensor_group",
    "symmetric": True,
    "type": "float",
}
_MX_ACT = {
    "dynamic": True,
    "group_size": 32,
    "num_bits": 4,
    "scale_dtype": "torch.uint8",
    "strategy": "group",
    "symmetric": True,
    "type": "float",
}
_scheme("w2a16", 2, "int2 weights, group 128, symmetric (compressed-tensors W2A16)", ct_format="pack-quantized", url=_CT_URL)
_scheme("w3a16", 3, "int3 weights, group 128, symmetric (compressed-tensors W3A16)", ct_format="pack-quantized", url=_CT_URL)
_scheme(
    "fp8-block",
    8,
    "fp8 e4m3 weights per 128x128 block + dynamic fp8 activations per group of 128 (FP8_BLOCK, DeepSeek-V3)",
    ct_format="float-quantized",
    activations=_FP8_GROUP_ACT,
    url=_CT_URL,
)
_scheme(
    "nvfp4",
    4,
    "FP4 E2M1 weights and activations, FP8 E4M3 scale per 16 + a global scale (NVFP4)",
    ct_format="nvfp4-pack-quantized",
    activations=_FP4_ACT,
    url=_CT_URL,
)
_scheme(
    "nvfp4a16",
    4,
    "FP4 E2M1 weights, FP8 E4M3 scale per 16 + a global scale (NVFP4A16)",
    ct_format="nvfp4-pack-quantized",
    url=_CT_URL,
)
_scheme(
    "mxfp4",
    4,
    "FP4 E2M1 weights and activations, E8M0 power-of-two scale per 32 (MXFP4, OCP microscaling)",
    ct_format="mxfp4-pack-quantized",
    activations=_MX_ACT,
    url=_CT_URL,
)

if list(_REGISTRY) != list(SCHEME_RULES):  # a scheme the settings accept must have an implementation, and back
    raise RuntimeError(
        f"ops/quantize/schemes.py registers {list(_REGISTRY)} but recipes/quantize.py SCHEME_RULES has {list(SCHEME_RULES)}"
    )


# --------------------------------------------------------------------------------------------
# one weight through a scheme


@dataclass(frozen=True)
class QuantSpec:
    """A scheme with its settings resolved for one run."""

    scheme: Scheme
    group_size: int  # -1 = one group per row
    symmetric: bool
    hqq: HQQConfig | None = None  # when --optimizer hqq

    def group_for(self, cols: int) -> int:
        return cols if self.group_size == -1 else self.group_size

    def bits_per_weight(self, shape: tuple[int, ...], scale_bytes: int) -> float:
        """Payload bits per weight: codes plus scales (and zero points), not counting the format's framing."""
        s = self.scheme
        cols = shape[-1]
        g = self.group_for(cols)
        if s.family == "gguf":
            from .gguf_blocks import bits_per_weight

            return bits_per_weight(s.gguf_type)
        if s.family == "nf4":
            return s.bits + 32 / g  # fp32 absmax per block
        per_group = scale_bytes * 8 + (0 if self.symmetric else s.bits)
        return s.bits + per_group / g


@dataclass
class QuantizedWeight:
    """One weight after a scheme: its parts (codes, scales...) and the dequantized tensor."""

    parts: dict[str, torch.Tensor]
    dequantized: torch.Tensor | None
    bits_per_weight: float
    extra: dict = field(default_factory=dict)


def quantize_weight(
    w: torch.Tensor,
    spec: QuantSpec,
    use_triton: bool | None = None,
    need_dequant: bool = True,
    imatrix: torch.Tensor | None = None,
) -> QuantizedWeight:
    """Quantize one 2-D float weight (on any device) and dequantize it back into its own dtype.

    Sets ``extra["signal"]``, ``extra["noise"]`` (energies of ``w`` and of the error). With
    ``need_dequant=False`` a scheme may skip materialising ``dequantized`` (GGUF measures its error per chunk).
    ``imatrix`` (GGUF types only): one importance weight per column, as llama-quantize's ``--imatrix``.
    """
    if imatrix is not None:
        if spec.scheme.family != "gguf":
            raise ValueError("an importance matrix applies to the GGUF types only")
        qw = _gguf_family(w, spec, use_triton, need_dequant, imatrix)
    else:
        qw = _FAMILIES[spec.scheme.family](w, spec, use_triton, need_dequant)
    import torch

    deq = qw.dequantized
    if deq is not None and deq.is_floating_point():
        # a value at the top of its dtype (fp16 65504) can round one step up when dequantized, past the
        # largest finite value: saturate, as the format's own max does, instead of writing inf
        fi = torch.finfo(deq.dtype)
        deq.clamp_(fi.min, fi.max)
    if "noise" not in qw.extra:
        qw.extra["signal"], qw.extra["noise"] = error_stats(w, qw.dequantized)
    return qw


def _int_family(w: torch.Tensor, spec: QuantSpec, use_triton: bool | None, need_dequant: bool) -> QuantizedWeight:
    from .quant import group_dequantize, group_quantize

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
    from .fp8 import fp8_dequantize, fp8_quantize

    codes, scale = fp8_quantize(w)
    return QuantizedWeight(
        {"codes": codes, "scale": scale},
        fp8_dequantize(codes, scale, w.dtype),
        spec.bits_per_weight(tuple(w.shape), scale.element_size()),
    )


def _nf4_family(w: torch.Tensor, spec: QuantSpec, use_triton: bool | None, need_dequant: bool) -> QuantizedWeight:
    from .nf4 import nf4_dequantize, nf4_quantize

    g = spec.group_for(w.shape[-1])
    codes, absmax = nf4_quantize(w, g)
    return QuantizedWeight(
        {"codes": codes, "absmax": absmax}, nf4_dequantize(codes, absmax, g, w.dtype), spec.bits_per_weight(tuple(w.shape), 4)
    )


def _binary_family(w: torch.Tensor, spec: QuantSpec, use_triton: bool | None, need_dequant: bool) -> QuantizedWeight:
    from .binary import binary_dequantize, binary_quantize

    g = spec.group_for(w.shape[-1])
    signs, scale = binary_quantize(w, g)
    return QuantizedWeight(
        {"signs": signs, "scale": scale}, binary_dequantize(signs, scale, g, w.dtype), spec.bits_per_weight(tuple(w.shape), 2)
    )


def _gguf_family(
    w: torch.Tensor, spec: QuantSpec, use_triton: bool | None, need_dequant: bool, imatrix: torch.Tensor | None = None
) -> QuantizedWeight:
    from modelsurgeon.kernels import should_use_triton

    from .gguf_blocks import dequantize_blocks, quantize_blocks

    qtype = spec.scheme.gguf_type
    bpw = spec.bits_per_weight(tuple(w.shape), 2)
    if spec.hqq is None and not need_dequant and not should_use_triton(w.device, use_triton):
        err: list = []
        blocks = quantize_blocks(w, qtype, use_triton=False, error=err, imatrix=imatrix)  # error chunk by chunk
        return QuantizedWeight({"blocks": blocks}, None, bpw, {"signal": err[0][0], "noise": err[0][1]})
    if spec.hqq is not None:
        from .hqq import hqq_gguf_quantize

        blocks = hqq_gguf_quantize(w, qtype, spec.hqq)
    else:
        blocks = quantize_blocks(w, qtype, use_triton, imatrix=imatrix)
    deq = dequantize_blocks(blocks, qtype, tuple(w.shape)).to(w.dtype)
    return QuantizedWeight({"blocks": blocks}, deq, bpw)


# --- issue 13: the new families


def _fp8_block_family(w: torch.Tensor, spec: QuantSpec, use_triton: bool | None, need_dequant: bool) -> QuantizedWeight:
    from .fp8_block import BLOCK, fp8_block_dequantize, fp8_block_quantize

    codes, scale = fp8_block_quantize(w, use_triton=use_triton)
    bpw = 8 + scale.element_size() * 8 * scale.numel() / w.numel()
    return QuantizedWeight({"codes": codes, "scale": scale}, fp8_block_dequantize(codes, scale, w.dtype, BLOCK), bpw)


def _nvfp4_family(w: torch.Tensor, spec: QuantSpec, use_triton: bool | None, need_dequant: bool) -> QuantizedWeight:
    from .fp4 import nvfp4_dequantize, nvfp4_quantize

    packed, scale, gs = nvfp4_quantize(w, use_triton)
    bpw = 4 + 8 / 16 + 32 / w.numel()
    return QuantizedWeight(
        {"packed": packed, "scale": scale, "global_scale": gs}, nvfp4_dequantize(packed, scale, gs, w.dtype), bpw
    )


def _mxfp4_family(w: torch.Tensor, spec: QuantSpec, use_triton: bool | None, need_dequant: bool) -> QuantizedWeight:
    from .fp4 import mxfp4_dequantize, mxfp4_quantize

    packed, scale = mxfp4_quantize(w, use_triton)
    return QuantizedWeight({"packed": packed, "scale": scale}, mxfp4_dequantize(packed, scale, w.dtype), 4 + 8 / 32)


_FAMILIES: dict[str, Callable[[torch.Tensor, QuantSpec, bool | None, bool], QuantizedWeight]] = {
    "int": _int_family,
    "fp8": _fp8_family,
    "nf4": _nf4_family,
    "binary": _binary_family,
    "gguf": _gguf_family,
    "fp8_block": _fp8_block_family,
    "nvfp4": _nvfp4_family,
    "mxfp4": _mxfp4_family,
}
