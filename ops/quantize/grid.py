"""A scheme's grid, one column at a time: what GPTQ (ops/calibrate/gptq.py) quantizes onto, and AWQ searches with.

    grid = grid_for(spec, torch.bfloat16)           # a QuantSpec of an integer or GGUF scheme, the weight's dtype
    p = grid.params(w[:, 0:128])                    # one group's parameters, from its weights (rows, g)
    codes, deq = grid.quantize(w[:, 0], p)          # one column: its codes and what a loader reads back
    qw = grid.finish(codes, [p, ...], original)     # the QuantizedWeight the formats write (codes and scales as chosen)
    grid.roundtrip(w)                               # round-to-nearest of a whole weight (quantize_weight's result)

The parameters and codes are the scheme's own (``quant.int_params``/``int_encode`` for w4a16, w8a16, w8a8;
``gguf_blocks.block_params`` and ggml's rounding for q8_0, q4_0, q4_1, q5_0, q5_1), and the dequantized value is
the stored one (scales rounded to their stored dtype, GGUF's fp16 ``d``), so GPTQ's error feedback sees what a
loader will compute. Codes of weights that GPTQ's updates pushed past a group's range are clamped.
"""

from __future__ import annotations

import torch

from .gguf_blocks import BLOCK, CODE_RANGE, _dequant_codes, pack_blocks, row_bytes
from .gguf_blocks import block_params as gguf_block_params
from .quant import group_dequantize, int_params, int_range, scale_dtype_for
from .schemes import QuantizedWeight, QuantSpec, quantize_weight
from .sqnr import error_stats

FAMILIES = ("int", "gguf")  # the scheme families a grid exists for (GPTQ and AWQ produce these)


class IntGrid:
    def __init__(self, spec: QuantSpec, dtype: torch.dtype):
        self.spec, self.dtype = spec, dtype
        self.bits = spec.scheme.bits
        self.symmetric = spec.symmetric
        self.scale_dtype = scale_dtype_for(dtype)

    def group_size(self, cols: int) -> int:
        return self.spec.group_for(cols)

    def params(self, wg: torch.Tensor):
        scale, zero = int_params(wg.float().unsqueeze(1), self.bits, self.symmetric, self.scale_dtype)
        return scale[:, 0], None if zero is None else zero[:, 0]

    def quantize(self, col: torch.Tensor, p) -> tuple[torch.Tensor, torch.Tensor]:
        scale, zero = p
        qmin, qmax = int_range(self.bits)
        v = col.float() * (1.0 / scale.float())
        if zero is not None:
            v = v + zero.float()
        codes = v.clamp_(qmin, qmax).round_()
        deq = codes - zero.float() if zero is not None else codes.clone()
        deq = deq.mul_(scale.float()).to(self.scale_dtype).float()
        return codes.to(torch.int8), deq

    def finish(self, codes: torch.Tensor, params: list, original: torch.Tensor) -> QuantizedWeight:
        g = self.spec.group_size
        scale = torch.stack([p[0] for p in params], dim=1)
        zero = None if params[0][1] is None else torch.stack([p[1] for p in params], dim=1).to(torch.int8)
        deq = group_dequantize(codes, scale, zero, g, original.dtype, use_triton=False)
        parts = {"codes": codes, "scale": scale}
        if zero is not None:
            parts["zero"] = zero
        return _weight(parts, deq, self.spec.bits_per_weight(tuple(codes.shape), scale.element_size()), original, deq)

    def roundtrip(self, w: torch.Tensor) -> torch.Tensor:
        return quantize_weight(w.to(self.dtype), self.spec, use_triton=False).dequantized.float()


class GGUFGrid:
    def __init__(self, spec: QuantSpec, dtype: torch.dtype):
        self.spec, self.dtype = spec, dtype
        self.qtype = spec.scheme.gguf_type

    def group_size(self, cols: int) -> int:
        return BLOCK

    def params(self, wg: torch.Tensor):
        return gguf_block_params(wg.float(), self.qtype)

    def quantize(self, col: torch.Tensor, p) -> tuple[torch.Tensor, torch.Tensor]:
        d, m = p
        qmin, qmax, off = CODE_RANGE[self.qtype]
        d1 = d[:, 0]
        inv = torch.where(d1 == 0, torch.zeros_like(d1), 1.0 / d1)
        x = col.float()
        if self.qtype == "Q8_0":
            v = x * inv
            codes = torch.where(v >= 0, torch.floor(v + 0.5), torch.ceil(v - 0.5))  # half away from zero, as roundf
        elif m is None:
            codes = torch.floor(x * inv + (off + 0.5))
        else:
            codes = torch.floor((x - m[:, 0]) * inv + 0.5)
        codes = codes.clamp_(qmin, qmax).to(torch.int32)
        deq = _dequant_codes(codes.unsqueeze(1), d, m, self.qtype)[:, 0]
        return codes, deq

    def finish(self, codes: torch.Tensor, params: list, original: torch.Tensor) -> QuantizedWeight:
        rows, cols = codes.shape
        d = torch.stack([p[0][:, 0] for p in params], dim=1).reshape(-1, 1)
        m = None if params[0][1] is None else torch.stack([p[1][:, 0] for p in params], dim=1).reshape(-1, 1)
        blocks_codes = codes.reshape(-1, BLOCK)
        blocks = pack_blocks(blocks_codes, d, m, self.qtype).reshape(rows, row_bytes(cols, self.qtype))
        deq = _dequant_codes(blocks_codes, d, m, self.qtype).reshape(rows, cols)
        bpw = self.spec.bits_per_weight((rows, cols), 2)
        return _weight({"blocks": blocks}, deq.to(original.dtype), bpw, original, deq)

    def roundtrip(self, w: torch.Tensor) -> torch.Tensor:
        return quantize_weight(w.to(self.dtype), self.spec, use_triton=False).dequantized.float()


def _weight(parts: dict, deq: torch.Tensor, bpw: float, original: torch.Tensor, deq_exact: torch.Tensor) -> QuantizedWeight:
    qw = QuantizedWeight(parts, deq, bpw)
    qw.extra["signal"], qw.extra["noise"] = error_stats(original, deq_exact.to(original.device))
    return qw


def grid_for(spec: QuantSpec, dtype: torch.dtype):
    """The grid of an integer or GGUF scheme for a weight of ``dtype`` (scales are stored in it)."""
    if spec.scheme.family == "int":
        return IntGrid(spec, dtype)
    if spec.scheme.family == "gguf":
        return GGUFGrid(spec, dtype)
    raise ValueError(f"no grid for the {spec.scheme.family} scheme {spec.scheme.name}")
