"""Write quantized weights as compressed-tensors 0.20 checkpoints (what vLLM and transformers load).

Per quantized Linear ``<prefix>.weight`` (tensor names, dtypes and shapes as compressed-tensors 0.20 writes
them; checked against the library in tests/ops/quantize/formats/test_compressed_tensors.py):

    pack-quantized  (w4a16, w8a16)  weight_packed int32 (out, ceil(in*b/32))   weight_scale (out, groups)
                                    weight_shape int64 (2,)                     weight_zero_point int32 (ceil(out*b/32), groups), asymmetric only
    int-quantized   (w8a8)          weight int8 (out, in)                       weight_scale (out, 1) [+ weight_zero_point int8]
    float-quantized (fp8)           weight float8_e4m3fn (out, in)              weight_scale (out, 1)
    float-quantized (fp8-block)     weight float8_e4m3fn (out, in)              weight_scale (ceil(out/128), ceil(in/128))
    nvfp4-pack-quantized (nvfp4, nvfp4a16)  weight_packed uint8 (out, in/2)     weight_scale float8_e4m3fn (out, in/16),
                                                                                weight_global_scale float32 (1,)
    mxfp4-pack-quantized (mxfp4)    weight_packed uint8 (out, in/2)             weight_scale uint8 E8M0 (out, in/32)

Integer and fp8 scales are stored in the weight's dtype. Symmetric zero points are not written ("vLLM does not support
loading zero point parameters for symmetric schemes"). ``config.json`` gets the ``quantization_config``
that ``ModelCompressor.update_config`` writes.
"""

from __future__ import annotations

import math

import torch

from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.core.names import LM_HEAD, NOT_LINEAR, module_of
from modelsurgeon.ops.io.writer import TensorSpec
from modelsurgeon.ops.quantize.pack import pack_int32, packed_cols
from modelsurgeon.ops.quantize.quant import scale_dtype_for
from modelsurgeon.ops.quantize.schemes import QuantizedWeight, QuantSpec

CT_VERSION = "0.20.0"  # the compressed-tensors release whose on-disk format this reproduces


def module_name(tensor_name: str) -> str:
    """The Linear module a quantized weight belongs to: its tensors are named ``<module>.weight_packed`` and so on."""
    module = module_of(tensor_name)
    if module is None:
        raise SurgeonError(
            f"{tensor_name} is not a Linear weight (its name does not end in .weight); compressed-tensors quantizes Linear layers",
            "leave it out with --ignore, or use --format dense",
        )
    return module


def weight_args(spec: QuantSpec) -> dict:
    s = spec.scheme
    if s.family in _FLOAT_WEIGHTS:
        return dict(_FLOAT_WEIGHTS[s.family])
    channel = spec.group_size == -1
    return {
        "dynamic": False,
        "group_size": None if channel else spec.group_size,
        "num_bits": s.bits,
        "strategy": "channel" if channel else "group",
        "symmetric": spec.symmetric,
        "type": "float" if s.family == "fp8" else "int",
    }


# --- issue 13: the weights' args of the FP8-block and FP4 schemes, as the library's presets write them
_FLOAT_WEIGHTS = {
    "fp8_block": {
        "block_structure": [128, 128],
        "dynamic": False,
        "group_size": None,
        "num_bits": 8,
        "strategy": "block",
        "symmetric": True,
        "type": "float",
    },
    "nvfp4": {
        "dynamic": False,
        "group_size": 16,
        "num_bits": 4,
        "scale_dtype": "torch.float8_e4m3fn",
        "strategy": "tensor_group",
        "symmetric": True,
        "type": "float",
    },
    "mxfp4": {
        "dynamic": False,
        "group_size": 32,
        "num_bits": 4,
        "scale_dtype": "torch.uint8",
        "strategy": "group",
        "symmetric": True,
        "type": "float",
    },
}


def _group(spec: QuantSpec, targets: list[str]) -> dict:
    return {
        "format": spec.scheme.ct_format,
        "input_activations": dict(spec.scheme.activations) if spec.scheme.activations else None,
        "output_activations": None,
        "targets": targets,
        "weights": weight_args(spec),
    }


def quantization_config(spec: QuantSpec, ignore: list[str], overridden: dict[str, QuantSpec] | None = None) -> dict:
    """``config.json``'s quantization_config: one group targeting ``Linear`` with ``spec``, then, for the
    weights that per-tensor overrides give another spec (``overridden``: weight name -> spec), one group per
    spec naming its modules exactly. compressed-tensors matches an exact name before a class name, so those
    modules take their own group; the format is ``mixed-precision`` when the groups' formats differ."""
    groups = [_group(spec, ["Linear"])]
    by_spec: dict[int, tuple[QuantSpec, list[str]]] = {}
    for name, s in (overridden or {}).items():
        by_spec.setdefault(id(s), (s, []))[1].append(module_name(name))
    groups += [_group(s, mods) for s, mods in by_spec.values()]
    formats = {g["format"] for g in groups}
    fmt = formats.pop() if len(formats) == 1 else "mixed-precision"
    return {
        "config_groups": {f"group_{i}": g for i, g in enumerate(groups)},
        "format": fmt,
        "global_compression_ratio": None,
        "ignore": list(ignore),
        "kv_cache_scheme": None,
        "moe_sparsity_config": None,
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
        "sparsity_config": {},
        "transform_config": {},
        "version": CT_VERSION,
    }


def ignore_list(infos, quantized: set[str], config: dict | None) -> list[str]:
    """Linear modules left unquantized, so that the loader does not expect quantized tensors for them.

    Every 2-D float ``*.weight`` that is not quantized and is not an embedding or a norm, plus ``lm_head``
    when the head is tied to the embeddings (its module exists although the checkpoint has no tensor).
    """
    out = []
    for info in infos:
        module = module_of(info.name)
        if info.name in quantized or module is None or len(info.shape) != 2 or not info.is_float:
            continue
        if NOT_LINEAR.search(info.name) and "lm_head" not in info.name and not info.name.endswith("output.weight"):
            continue
        out.append(module)
    names = {i.name for i in infos}
    if LM_HEAD not in names and (config or {}).get("tie_word_embeddings"):
        out.append(module_of(LM_HEAD))
    return out


def output_specs(name: str, shape: tuple[int, ...], dtype: torch.dtype, spec: QuantSpec) -> list[TensorSpec]:
    prefix = module_name(name)
    rows, cols = shape
    sd = scale_dtype_for(dtype)
    groups = 1 if spec.group_size == -1 else cols // spec.group_size
    b = spec.scheme.bits
    fmt = spec.scheme.ct_format
    if fmt == "pack-quantized":
        out = [
            TensorSpec(f"{prefix}.weight_packed", (rows, packed_cols(cols, b)), torch.int32),
            TensorSpec(f"{prefix}.weight_scale", (rows, groups), sd),
        ]
        if not spec.symmetric:
            out.append(TensorSpec(f"{prefix}.weight_zero_point", (packed_cols(rows, b), groups), torch.int32))
        out.append(TensorSpec(f"{prefix}.weight_shape", (2,), torch.int64))
        return out
    if fmt == "int-quantized":
        out = [TensorSpec(f"{prefix}.weight", (rows, cols), torch.int8), TensorSpec(f"{prefix}.weight_scale", (rows, groups), sd)]
        if not spec.symmetric:
            out.append(TensorSpec(f"{prefix}.weight_zero_point", (rows, groups), torch.int8))
        return out
    if fmt == "float-quantized" and spec.scheme.family == "fp8":
        return [
            TensorSpec(f"{prefix}.weight", (rows, cols), torch.float8_e4m3fn),
            TensorSpec(f"{prefix}.weight_scale", (rows, 1), sd),
        ]
    if fmt == "float-quantized" and spec.scheme.family == "fp8_block":
        return [
            TensorSpec(f"{prefix}.weight", (rows, cols), torch.float8_e4m3fn),
            TensorSpec(f"{prefix}.weight_scale", (math.ceil(rows / 128), math.ceil(cols / 128)), sd),
        ]
    if fmt == "nvfp4-pack-quantized":
        return [
            TensorSpec(f"{prefix}.weight_packed", (rows, cols // 2), torch.uint8),
            TensorSpec(f"{prefix}.weight_scale", (rows, cols // 16), torch.float8_e4m3fn),
            TensorSpec(f"{prefix}.weight_global_scale", (1,), torch.float32),
            *([TensorSpec(f"{prefix}.input_global_scale", (1,), torch.float32)] if spec.scheme.activations else []),
        ]
    if fmt == "mxfp4-pack-quantized":
        return [
            TensorSpec(f"{prefix}.weight_packed", (rows, cols // 2), torch.uint8),
            TensorSpec(f"{prefix}.weight_scale", (rows, cols // 32), torch.uint8),
        ]
    raise ValueError(f"no compressed-tensors format for {spec.scheme.name}")


def output_tensors(
    name: str, qw: QuantizedWeight, spec: QuantSpec, use_triton: bool | None = None
) -> list[tuple[str, torch.Tensor]]:
    """The tensors of ``output_specs``, in the same order, on the CPU."""
    prefix = module_name(name)
    p = qw.parts
    codes = p.get("codes")
    fmt = spec.scheme.ct_format
    if fmt == "pack-quantized":
        b = spec.scheme.bits
        out = [(f"{prefix}.weight_packed", pack_int32(codes, b, 1, use_triton)), (f"{prefix}.weight_scale", p["scale"])]
        if not spec.symmetric:
            out.append((f"{prefix}.weight_zero_point", pack_int32(p["zero"], b, 0, use_triton)))
        out.append((f"{prefix}.weight_shape", torch.tensor(list(codes.shape), dtype=torch.int64)))
    elif fmt == "int-quantized":
        out = [(f"{prefix}.weight", codes), (f"{prefix}.weight_scale", p["scale"])]
        if not spec.symmetric:
            out.append((f"{prefix}.weight_zero_point", p["zero"]))
    elif fmt == "nvfp4-pack-quantized":
        out = [
            (f"{prefix}.weight_packed", p["packed"]),
            (f"{prefix}.weight_scale", p["scale"]),
            (f"{prefix}.weight_global_scale", p["global_scale"]),
        ]
        if spec.scheme.activations:  # W4A4: data-free, so no calibrated activation range (see the plan's note)
            out.append((f"{prefix}.input_global_scale", torch.ones(1, dtype=torch.float32)))
    elif fmt == "mxfp4-pack-quantized":
        out = [(f"{prefix}.weight_packed", p["packed"]), (f"{prefix}.weight_scale", p["scale"])]
    else:
        out = [(f"{prefix}.weight", codes), (f"{prefix}.weight_scale", p["scale"])]
    return [(n, t.cpu()) for n, t in out]
