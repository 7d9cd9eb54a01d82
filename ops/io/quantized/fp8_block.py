"""Read FP8 checkpoints with block scales, as DeepSeek-V3/R1 and the Qwen FP8 releases ship them.

``config.json``: ``quantization_config = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
"weight_block_size": [128, 128]}``. Each quantized Linear ``<m>`` stores ``<m>.weight`` as float8_e4m3fn and
``<m>.weight_scale_inv`` as float32 of shape ``(ceil(rows/bh), ceil(cols/bw))``: despite its name, the factor
that multiplies the codes back (DeepSeek's ``weight_dequant``: ``y = x * s`` per block, in fp32, then the model
dtype). Without ``weight_block_size`` the scale is one value per tensor (``weight_scale_inv`` or
``weight_scale``). Static activation scales (``input_scale``) are left out of the view.
"""

from __future__ import annotations

import math

import torch

from modelsurgeon.ops.core.errors import CheckpointError

from ..checkpoint import Checkpoint, torch_dtype_to_st
from .codecs import expand_blocks
from .view import QuantizedView, StoredTensor

_FP8 = ("F8_E4M3", "F8_E5M2")


def is_fp8_block(ck: Checkpoint) -> bool:
    qc = (ck.config or {}).get("quantization_config") or {}
    return qc.get("quant_method") == "fp8"


def model_dtype(config: dict, default: str = "BF16") -> str:
    """The float dtype config.json names (``torch_dtype`` or ``dtype``), in safetensors spelling."""
    name = config.get("torch_dtype") or config.get("dtype")
    dt = getattr(torch, str(name), None) if isinstance(name, str) else None
    if isinstance(dt, torch.dtype) and dt.is_floating_point and dt.itemsize >= 2:
        return torch_dtype_to_st(dt)
    return default


def open_view(ck: Checkpoint) -> Checkpoint:
    qc = ck.config["quantization_config"]
    label = ck.label
    block = qc.get("weight_block_size")
    if block is not None and not (
        isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)
    ):
        raise CheckpointError(f"{label}: weight_block_size {block!r} is not [rows, cols]", "fix config.json")
    fmt = qc.get("fmt", "e4m3")
    if fmt not in ("e4m3", "e5m2"):
        raise CheckpointError(f"{label}: fp8 fmt {fmt!r} is unknown", "known: e4m3, e5m2")
    dtype = model_dtype(ck.config)
    infos = {i.name: i for i in ck.infos()}
    stored: dict[str, StoredTensor] = {}
    hidden = {n for n in infos if n.endswith((".input_scale", ".activation_scale"))}
    for name, info in infos.items():
        if info.dtype not in _FP8 or not name.endswith(".weight"):
            continue
        module = name[: -len(".weight")]
        scale = infos.get(f"{module}.weight_scale_inv") or infos.get(f"{module}.weight_scale")
        if scale is None:
            raise CheckpointError(
                f"{label}: {name} is {info.dtype} but {module}.weight_scale_inv is missing",
                "the checkpoint and its quantization_config disagree",
            )
        if len(info.shape) != 2:
            raise CheckpointError(f"{label}: {name} is {len(info.shape)}-D; fp8 weights are 2-D")
        rows, cols = info.shape
        if block is not None:
            want = (math.ceil(rows / block[0]), math.ceil(cols / block[1]))
            if scale.shape != want:
                raise CheckpointError(
                    f"{label}: {scale.name} has shape {list(scale.shape)} but {block[0]}x{block[1]} blocks of a "
                    f"{rows}x{cols} weight need {list(want)}",
                    "the checkpoint and its quantization_config disagree",
                )
            scheme, details = f"fp8 {fmt} block {block[0]}x{block[1]}", {"block_structure": list(block)}
        elif scale.numel == 1:
            scheme, details = f"fp8 {fmt} per tensor", {}
        elif scale.shape in ((rows, 1), (rows,)):
            scheme, details = f"fp8 {fmt} per channel", {}
        else:
            raise CheckpointError(
                f"{label}: {scale.name} has shape {list(scale.shape)}, which is no fp8 scale of a {rows}x{cols} weight",
                "set weight_block_size in quantization_config, or fix the checkpoint",
            )
        stored[name] = StoredTensor(
            name,
            "fp8 block" if block is not None else "fp8",
            scheme,
            {"codes": name, "scale": scale.name},
            (rows, cols),
            dtype,
            _decoder(tuple(block) if block else None, rows, cols),
            name,
            details,
            block[0] if block else 1,
        )
    config = {k: v for k, v in ck.config.items() if k != "quantization_config"}
    return QuantizedView(ck, stored, hidden, "fp8", config, qc)


def fp8_block_dequantize(
    codes: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] | None, dtype: torch.dtype
) -> torch.Tensor:
    """The reference formula: ``codes * scale`` per block (or per tensor/row) in fp32, then ``dtype``."""
    s = scale.float()
    if block is not None:
        s = expand_blocks(s, tuple(codes.shape), block)
    elif s.numel() == 1:
        s = s.reshape(())
    else:
        s = s.reshape(-1, 1)
    return (codes.float() * s).to(dtype)


def _decoder(block, rows, cols):
    def decode(p: dict[str, torch.Tensor], dtype: torch.dtype, r0: int, r1: int) -> torch.Tensor:
        scale = p["scale"]
        if block is not None:
            scale = scale[r0 // block[0] : -(-r1 // block[0])]
        elif scale.numel() > 1:
            scale = scale.reshape(-1, 1)[r0:r1]
        return fp8_block_dequantize(p["codes"][r0:r1], scale, block, dtype)

    return decode
