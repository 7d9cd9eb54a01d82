"""Read bitsandbytes-serialized checkpoints (transformers' ``save_pretrained`` of a 4-bit or 8-bit model).

4-bit (NF4 or FP4), per Linear ``<m>`` (bitsandbytes ``QuantState.as_dict(packed=True)``):

    <m>.weight                                   uint8 (numel/2, 1): two codes per byte, the first in the HIGH nibble
    <m>.weight.absmax                            float32 per block, or uint8 codes when nested (double quantization)
    <m>.weight.quant_map                         float32 (16,): the NF4 or FP4 code book
    <m>.weight.nested_absmax, .nested_quant_map  the 8-bit blockwise quantization of absmax (nested only)
    <m>.weight.quant_state.bitsandbytes__nf4     uint8 bytes of a JSON object: quant_type, blocksize, dtype, shape,
                                                 nested_blocksize, nested_offset

values: ``quant_map[code] * absmax[block]`` in fp32, then the stored dtype; a nested absmax is itself
``nested_quant_map[code] * nested_absmax[block] + nested_offset`` (bitsandbytes' ``dequantize_4bit``).

8-bit (LLM.int8), per Linear: ``<m>.weight`` int8 (rows, cols) and ``<m>.SCB`` float32 (rows,), values
``weight * SCB / 127`` (``weight_format`` is a layout tag, left out of the view).
"""

from __future__ import annotations

import json
import math

import torch

from modelsurgeon.ops.core.errors import CheckpointError

from ..checkpoint import Checkpoint, torch_dtype_to_st
from .fp8_block import model_dtype
from .view import QuantizedView, StoredTensor

_STATE = ".weight.quant_state.bitsandbytes__"


def is_bitsandbytes(ck: Checkpoint) -> bool:
    qc = (ck.config or {}).get("quantization_config") or {}
    return qc.get("quant_method") == "bitsandbytes" or any(_STATE in n for n in ck.names())


def open_view(ck: Checkpoint) -> Checkpoint:
    label = ck.label
    infos = {i.name: i for i in ck.infos()}
    stored: dict[str, StoredTensor] = {}
    hidden: set[str] = {n for n in infos if n.endswith(".weight_format")}
    dtype8 = model_dtype(ck.config or {}, "F16")
    for name in list(infos):
        if _STATE in name:
            st = _four_bit(ck, name, infos, label)
            stored[st.name] = st
        elif name.endswith(".SCB"):
            module = name[: -len(".SCB")]
            w = infos.get(f"{module}.weight")
            if w is None or w.dtype != "I8" or len(w.shape) != 2:
                raise CheckpointError(
                    f"{label}: {name} has no int8 2-D {module}.weight beside it", "the checkpoint is incomplete"
                )
            if infos[name].shape != (w.shape[0],):
                raise CheckpointError(f"{label}: {name} has shape {list(infos[name].shape)}; {w.shape[0]} row scales expected")
            stored[w.name] = StoredTensor(
                w.name, "bitsandbytes int8", "int8 per row (LLM.int8)", {"codes": w.name, "scale": name}, w.shape, dtype8, _int8
            )
    config = {k: v for k, v in (ck.config or {}).items() if k != "quantization_config"}
    return QuantizedView(ck, stored, hidden, "bitsandbytes", config, (ck.config or {}).get("quantization_config"))


def _four_bit(ck: Checkpoint, state_name: str, infos: dict, label: str) -> StoredTensor:
    weight = state_name.split(".quant_state.")[0]
    try:
        state = json.loads(bytes(ck.get(state_name).tolist()).decode("utf-8"))
        quant_type, blocksize, shape = state["quant_type"], int(state["blocksize"]), tuple(int(s) for s in state["shape"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(f"{label}: {state_name} is not a bitsandbytes quant state", "the checkpoint is corrupt") from None
    if quant_type not in ("nf4", "fp4"):
        raise CheckpointError(f"{label}: {state_name} names quant_type {quant_type!r}; known: nf4, fp4")
    dt = getattr(torch, str(state.get("dtype", "float16")).replace("torch.", ""), None)
    if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
        raise CheckpointError(f"{label}: {state_name} names dtype {state.get('dtype')!r}")
    numel = math.prod(shape)
    parts = {"codes": weight, "absmax": f"{weight}.absmax", "quant_map": f"{weight}.quant_map", "state": state_name}
    nested = f"{weight}.nested_absmax" in infos
    if nested:
        parts |= {"nested_absmax": f"{weight}.nested_absmax", "nested_quant_map": f"{weight}.nested_quant_map"}
    for n in parts.values():
        if n not in infos:
            raise CheckpointError(
                f"{label}: bitsandbytes {quant_type} needs {n}, which is missing", "the checkpoint is incomplete"
            )
    if infos[weight].numel * 2 != numel + numel % 2:
        raise CheckpointError(f"{label}: {weight} holds {infos[weight].numel * 2} codes but its quant state says {list(shape)}")
    if infos[f"{weight}.absmax"].numel != math.ceil(numel / blocksize):
        raise CheckpointError(
            f"{label}: {weight}.absmax has {infos[f'{weight}.absmax'].numel} values; {math.ceil(numel / blocksize)} blocks expected"
        )
    offset = float(state.get("nested_offset", 0.0))
    nested_block = int(state.get("nested_blocksize", 256))

    cols = math.prod(shape[1:]) if len(shape) > 1 else 1

    def prepare(p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        absmax = p["absmax"]
        if nested:  # the 8-bit blockwise code of absmax, decoded once per read
            codes = absmax.to(torch.long)
            n = codes.numel()
            a = torch.nn.functional.pad(p["nested_quant_map"].float()[codes], (0, -n % nested_block))
            absmax = (a.reshape(-1, nested_block) * p["nested_absmax"].float().reshape(-1, 1)).reshape(-1)[:n] + offset
        table = p["quant_map"].float().clone()
        if quant_type == "fp4":
            table[8] = -0.0  # code 8 is the negative zero (bitsandbytes decodes the sign bit; its saved map says +0)
        return {"codes": p["codes"].reshape(-1), "absmax": absmax.float(), "table": table}

    def decode(p: dict[str, torch.Tensor], out: torch.dtype, r0: int, r1: int) -> torch.Tensor:
        first, last = r0 * cols, min(numel, r1 * cols)  # first is a multiple of the block size (row_align)
        packed = p["codes"][first // 2 : (last + 1) // 2]
        q = torch.stack([packed >> 4, packed & 0x0F], dim=-1).reshape(-1)[: last - first].long()
        vals = p["table"][q]
        n = vals.numel()
        absmax = p["absmax"][first // blocksize : -(-last // blocksize)]
        vals = torch.nn.functional.pad(vals, (0, -n % blocksize)).reshape(-1, blocksize) * absmax.reshape(-1, 1)
        return vals.reshape(-1)[:n].reshape(r1 - r0, *shape[1:]).to(dt).to(out)

    return StoredTensor(
        weight,
        f"bitsandbytes {quant_type}",
        f"{quant_type} block {blocksize}" + (" (double quantized)" if nested else ""),
        parts,
        shape,
        torch_dtype_to_st(dt),
        decode,
        weight,
        {"blocksize": blocksize},
        blocksize // math.gcd(blocksize, cols),  # row ranges start on a block (blocks are even: on a whole byte)
        prepare,
    )


def _int8(p: dict[str, torch.Tensor], dtype: torch.dtype, r0: int, r1: int) -> torch.Tensor:
    # bitsandbytes' int8_vectorwise_dequant: A * SCB * (1/127 as float32), in that order
    return (p["codes"][r0:r1].float() * p["scale"].float().reshape(-1, 1)[r0:r1] * 7.874015718698502e-3).to(dtype)
