"""Read compressed-tensors checkpoints (llm-compressor's output, and ours): every weight format decoded on read.

``config.json``'s ``quantization_config`` (``quant_method: compressed-tensors``) names a format per config group
and the weights' quantization args; each quantized Linear ``<m>`` stores, by format:

    pack-quantized        <m>.weight_packed int32 (rows, ceil(cols*b/32)), <m>.weight_scale, <m>.weight_shape,
                          [<m>.weight_zero_point int32 packed along rows], [<m>.weight_g_idx]
    int-/naive-quantized  <m>.weight int8 (rows, cols), <m>.weight_scale, [<m>.weight_zero_point int8]
    float-quantized       <m>.weight float8_e4m3fn, <m>.weight_scale: tensor (1,), channel (rows, 1),
                          group (rows, cols/g) or block (ceil(rows/bh), ceil(cols/bw))
    nvfp4-pack-quantized  <m>.weight_packed uint8 (rows, cols/2), <m>.weight_scale float8_e4m3fn (rows, cols/16),
                          <m>.weight_global_scale float32 (1,)
    mxfp4-pack-quantized  <m>.weight_packed uint8 (rows, cols/2), <m>.weight_scale uint8 E8M0 (rows, cols/32)

Values are what the library's decompressors give (``compressors/*/base.py decompress``): ``(q - zero) * scale``
rounded once to the scale's dtype for the integer and fp8 formats, and ``q * (scale / global_scale)`` rounded
to bfloat16 for the FP4 ones (the library unpacks FP4 into bfloat16). Static activation scales
(``input_scale`` ...) describe a serving setting, not a weight: the view leaves them out.

Anything the config and the tensors disagree on (a missing part, a shape that does not fit the strategy,
a format this reader does not know) is one ``CheckpointError`` naming the tensor, before a value is read.
"""

from __future__ import annotations

import functools
import math
import re

import torch

from modelsurgeon.ops.core.errors import CheckpointError
from modelsurgeon.ops.core.patterns import UserPattern

from ..checkpoint import Checkpoint, TensorInfo
from .codecs import e8m0_to_float, expand_blocks, expand_groups, unpack_fp4, unpack_int32
from .view import QuantizedView, StoredTensor

FORMATS = (
    "pack-quantized",
    "int-quantized",
    "naive-quantized",
    "float-quantized",
    "nvfp4-pack-quantized",
    "mxfp4-pack-quantized",
    "dense",
)
# per-module tensors that are not weights: static activation and kv-cache scales, symmetric zero points
_HIDDEN = re.compile(r"\.(input|output)_(scale|zero_point|global_scale)$|\.(k|v|q)_scale$|\.(k|v)_zero_point$")
_PARTS = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx", "weight_global_scale")


def is_compressed_tensors(ck: Checkpoint) -> bool:
    qc = (ck.config or {}).get("quantization_config") or {}
    return qc.get("quant_method") == "compressed-tensors"


def open_view(ck: Checkpoint) -> Checkpoint:
    qc = ck.config["quantization_config"]
    label = ck.label
    sparsity = qc.get("sparsity_config") or {}
    if sparsity.get("format") not in (None, "dense"):
        raise CheckpointError(
            f"{label} is stored with compressed-tensors sparsity format {sparsity.get('format')!r}, which is not read yet",
            "decompress it with compressed-tensors (ModelCompressor.decompress) first",
        )
    if qc.get("quantization_status") not in (None, "compressed", "frozen"):
        raise CheckpointError(f"{label}: quantization_status {qc.get('quantization_status')!r} is not a saved state")
    groups = qc.get("config_groups") or {}
    if not isinstance(groups, dict) or not groups:
        raise CheckpointError(f"{label}: quantization_config has no config_groups", "the config.json is incomplete")
    ignore = list(qc.get("ignore") or [])
    infos = {i.name: i for i in ck.infos()}
    stored: dict[str, StoredTensor] = {}
    hidden = {n for n in infos if _HIDDEN.search(n)}
    for module in _quantized_modules(infos):
        group_name, group = _group_for(module, groups, ignore, label)
        fmt = group.get("format") or qc.get("format")
        if fmt == "mixed-precision" or fmt is None:
            raise CheckpointError(f"{label}: config group {group_name} names no format for {module}", "fix config.json")
        if fmt not in FORMATS:
            raise CheckpointError(
                f"{label}: {module} is stored as compressed-tensors format {fmt!r}, which this reader does not know",
                f"known: {', '.join(FORMATS)}",
            )
        if fmt == "dense":
            continue
        args = group.get("weights") or {}
        st = _stored(module, fmt, args, infos, label, ck.get)
        stored[st.name] = st
        hidden |= {f"{module}.{p}" for p in _PARTS if f"{module}.{p}" in infos and f"{module}.{p}" not in st.parts.values()}
    config = {k: v for k, v in ck.config.items() if k != "quantization_config"}
    return QuantizedView(ck, stored, hidden, "compressed-tensors", config, qc)


def _quantized_modules(infos: dict[str, TensorInfo]) -> list[str]:
    """Modules holding quantized parts (a scale, packed codes, or an integer/fp8 weight), in checkpoint order."""
    out: dict[str, None] = {}
    for n, info in infos.items():
        for suffix in (".weight_scale", ".weight_packed"):
            if n.endswith(suffix):
                out[n[: -len(suffix)]] = None
        if n.endswith(".weight") and info.dtype in ("I8", "U8", "F8_E4M3", "F8_E5M2"):
            out[n[: -len(".weight")]] = None
    return list(out)


@functools.lru_cache(maxsize=256)
def _file_pattern(pattern: str) -> UserPattern:
    return UserPattern(pattern, "quantization_config target", usage=False)  # from the file: bounded in time


def _matches(target: str, module: str) -> bool:
    if target.startswith("re:"):
        return _file_pattern(target[3:]).match(module) is not None
    return target == module or module.endswith("." + target)


def _group_for(module: str, groups: dict, ignore: list[str], label: str) -> tuple[str, dict]:
    """The config group quantizing ``module``: one naming it (a name or ``re:`` pattern) first, then one that
    targets a module class (``Linear``: the class is not in the file, so any module with a scale fits)."""
    by_class = None
    for gname, g in groups.items():
        targets = (g or {}).get("targets") or []
        if any(_matches(t, module) for t in targets if t.startswith("re:") or "." in t):
            return gname, g
        if by_class is None and any(not t.startswith("re:") and "." not in t for t in targets):
            by_class = (gname, g)
    if by_class is None:
        listed = " ignored" if any(_matches(t, module) for t in ignore) else ""
        raise CheckpointError(
            f"{label}: {module} holds quantized tensors but no config group targets it{listed}",
            "quantization_config does not describe this checkpoint; fix config.json",
        )
    return by_class


def _need(infos: dict[str, TensorInfo], name: str, fmt: str, label: str, dtypes: tuple[str, ...] | None = None) -> TensorInfo:
    info = infos.get(name)
    if info is None:
        raise CheckpointError(f"{label}: {fmt} needs {name}, which is missing", "the checkpoint and its config.json disagree")
    if dtypes is not None and info.dtype not in dtypes:
        raise CheckpointError(
            f"{label}: {name} is {info.dtype} but {fmt} stores it as {' or '.join(dtypes)}",
            "the checkpoint and its config.json disagree",
        )
    return info


def _describe(args: dict) -> tuple[str, dict]:
    kind = "float" if args.get("type") == "float" else "int"
    bits = args.get("num_bits")
    strategy = args.get("strategy")
    details = {"num_bits": bits, "type": kind, "strategy": strategy, "symmetric": args.get("symmetric", True)}
    what = f"{kind}{bits} {strategy}"
    if strategy in ("group", "tensor_group"):
        details["group_size"] = args.get("group_size")
        what += f" {args.get('group_size')}"
    if strategy == "block":
        details["block_structure"] = args.get("block_structure")
        what += " {}x{}".format(*(args.get("block_structure") or ["?", "?"]))
    what += " symmetric" if args.get("symmetric", True) else " asymmetric"
    return what, details


def _check_scale(scale: TensorInfo, rows: int, cols: int, args: dict, fmt: str, label: str) -> None:
    strategy = args.get("strategy")
    if strategy == "tensor":
        ok, want = scale.numel == 1, "one value"
    elif strategy == "channel":
        ok, want = scale.shape in ((rows, 1), (rows,)), f"({rows}, 1)"
    elif strategy in ("group", "tensor_group"):
        g = args.get("group_size")
        if not isinstance(g, int) or g <= 0 or cols % g:
            raise CheckpointError(f"{label}: group_size {g!r} does not divide {scale.name[: -len('_scale')]}'s {cols} columns")
        ok, want = scale.shape == (rows, cols // g), f"({rows}, {cols // g})"
    elif strategy == "block":
        bh, bw = _block(args, label)
        want_shape = (math.ceil(rows / bh), math.ceil(cols / bw))
        ok, want = scale.shape == want_shape, str(want_shape)
    else:
        raise CheckpointError(
            f"{label}: weight strategy {strategy!r} of {fmt} is unknown", "known: tensor, channel, group, block"
        )
    if not ok:
        raise CheckpointError(
            f"{label}: {scale.name} has shape {list(scale.shape)} but a {strategy} scale of a {rows}x{cols} weight is {want}",
            "the checkpoint and its config.json disagree",
        )


def _block(args: dict, label: str) -> tuple[int, int]:
    b = args.get("block_structure")
    if not (isinstance(b, list) and len(b) == 2 and all(isinstance(x, int) and x > 0 for x in b)):
        raise CheckpointError(f"{label}: block strategy with block_structure {b!r}; expected [rows, cols]")
    return b[0], b[1]


def _stored(module: str, fmt: str, args: dict, infos: dict[str, TensorInfo], label: str, read) -> StoredTensor:
    name = f"{module}.weight"
    scheme, details = _describe(args)
    symmetric = args.get("symmetric", True)
    scale = _need(infos, f"{module}.weight_scale", fmt, label)
    parts = {}
    if fmt == "pack-quantized":
        packed = _need(infos, f"{module}.weight_packed", fmt, label, ("I32",))
        shape_info = _need(infos, f"{module}.weight_shape", fmt, label, ("I32", "I64"))
        bits = args.get("num_bits")
        if not isinstance(bits, int) or not 1 <= bits <= 8:
            raise CheckpointError(f"{label}: pack-quantized with num_bits {bits!r}; expected 1 to 8")
        if shape_info.shape != (2,):
            raise CheckpointError(f"{label}: {shape_info.name} has shape {list(shape_info.shape)}, expected [2]")
        rows, cols = (int(v) for v in read(shape_info.name).tolist())  # 16 bytes: the exact row length
        if rows != packed.shape[0]:
            raise CheckpointError(f"{label}: {shape_info.name} says {rows} rows but {packed.name} has {packed.shape[0]}")
        parts = {"codes": packed.name, "scale": scale.name, "shape": shape_info.name}
        want_cols = math.ceil(cols * bits / 32)
        if packed.shape[1] != want_cols:
            raise CheckpointError(
                f"{label}: {packed.name} has {packed.shape[1]} words per row; {cols} {bits}-bit codes need {want_cols}"
            )
    elif fmt in ("int-quantized", "naive-quantized", "float-quantized"):
        dtypes = ("F8_E4M3",) if args.get("type") == "float" else ("I8",)
        if fmt == "naive-quantized":
            dtypes = ("I8", "U8", "F8_E4M3", "F8_E5M2")
        w = _need(infos, name, fmt, label, dtypes)
        if len(w.shape) != 2:
            raise CheckpointError(f"{label}: {name} is {len(w.shape)}-D; quantized weights are 2-D")
        rows, cols = w.shape
        parts = {"codes": w.name, "scale": scale.name}
    elif fmt in ("nvfp4-pack-quantized", "mxfp4-pack-quantized"):
        packed = _need(infos, f"{module}.weight_packed", fmt, label, ("U8",))
        rows, cols = packed.shape[0], packed.shape[1] * 2
        nv = fmt.startswith("nvfp4")
        _need(infos, scale.name, fmt, label, ("F8_E4M3",) if nv else ("U8", "F8_E8M0"))
        parts = {"codes": packed.name, "scale": scale.name}
        if nv:
            gs = _need(infos, f"{module}.weight_global_scale", fmt, label, ("F32", "BF16", "F16"))
            if gs.numel != 1:
                raise CheckpointError(f"{label}: {gs.name} has {gs.numel} values; the global scale is one")
            parts["global_scale"] = gs.name
    else:  # pragma: no cover - FORMATS is checked by the caller
        raise AssertionError(fmt)
    _check_scale(scale, rows, cols, args, fmt, label)
    if not symmetric:
        zp = _need(infos, f"{module}.weight_zero_point", fmt, label)
        parts["zero"] = zp.name
    if f"{module}.weight_g_idx" in infos:
        parts["g_idx"] = f"{module}.weight_g_idx"
    sd = scale.dtype if scale.dtype in ("F16", "BF16", "F32") else "BF16"
    decode, prepare, align = _decoder(fmt, args, rows, cols, symmetric)
    return StoredTensor(
        name, f"compressed-tensors {fmt}", scheme, parts, (rows, cols), sd, decode, parts["codes"], details, align, prepare
    )


def _decoder(fmt: str, args: dict, rows: int, cols: int, symmetric: bool):
    """(decode, prepare, row_align): decode(parts, dtype, r0, r1) gives rows r0:r1 of the weight."""
    bits = args.get("num_bits")
    strategy = args.get("strategy")
    block = tuple(args["block_structure"]) if strategy == "block" else None

    def rows_of(t: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        """The part of a scale (or zero point) that rows r0:r1 use: their rows, their blocks' rows, or the one value."""
        if t.numel() == 1:
            return t.reshape(1, 1)
        if strategy == "block":
            return t.reshape(math.ceil(rows / block[0]), -1)[r0 // block[0] : -(-r1 // block[0])]
        return t.reshape(rows, -1)[r0:r1]

    def widen(s: torch.Tensor, r0: int, r1: int, g_idx: torch.Tensor | None) -> torch.Tensor:
        """Row-sliced scales (or zero points) stretched to each weight of rows r0:r1 (or one that broadcasts)."""
        if strategy == "block":
            return expand_blocks(s, (r1 - r0, cols), block)
        if s.numel() > 1 and strategy in ("group", "tensor_group"):
            return s[:, g_idx.long()] if g_idx is not None else expand_groups(s, cols)
        return s

    def prepare(p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "zero" in p and fmt == "pack-quantized":  # packed along rows: unpack once, then slice
            p = {**p, "zero": unpack_int32(p["zero"], bits, rows, packed_dim=0)}
        return p

    def decode(p: dict[str, torch.Tensor], dtype: torch.dtype, r0: int, r1: int) -> torch.Tensor:
        codes = p["codes"][r0:r1]
        if fmt == "pack-quantized":
            q = unpack_int32(codes, bits, cols).float()
        elif fmt in ("nvfp4-pack-quantized", "mxfp4-pack-quantized"):
            q = unpack_fp4(codes)
        else:
            q = codes.float()
        scale = rows_of(p["scale"], r0, r1)  # converted below for these rows only
        zero = rows_of(p["zero"], r0, r1).float() if "zero" in p else None
        g_idx = p.get("g_idx")
        if fmt == "mxfp4-pack-quantized":
            s = e8m0_to_float(scale)
            out_dtype = torch.bfloat16  # what compressed-tensors decompresses FP4 into
        elif fmt == "nvfp4-pack-quantized":
            s = scale.float() / p["global_scale"].float().reshape(())
            out_dtype = torch.bfloat16
        else:
            s = scale.float()
            out_dtype = scale.dtype if scale.dtype.is_floating_point and scale.element_size() > 1 else torch.bfloat16
        if strategy in ("group", "tensor_group") and g_idx is None and s.numel() > 1:
            # (rows, groups, group size) times (rows, groups, 1): no full-size copy of the scales
            qg = q.reshape(r1 - r0, s.shape[-1], -1)
            if zero is not None:
                qg -= zero.unsqueeze(-1)
            qg *= s.unsqueeze(-1)
            return q.to(out_dtype).to(dtype)
        if zero is not None:
            q -= widen(zero, r0, r1, g_idx)
        return q.mul_(widen(s, r0, r1, g_idx)).to(out_dtype).to(dtype)

    return decode, prepare, block[0] if block else 1
