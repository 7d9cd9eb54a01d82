"""Write a checkpoint as one GGUF file that llama.cpp loads, streaming tensor by tensor.

What ``convert_hf_to_gguf.py`` does, without the script and without holding the model: the architecture's
hyperparameters and tensor changes (``gguf_arch.py``), the tokenizer (``gguf_tokenizer.py``), gguf-py's general
metadata (name, size label), HF -> GGUF tensor names, and the converter's types for what is not quantized
(norms, 1-D tensors, biases and MoE routers F32; the rest F16/BF16/F32 as the scheme says, or the source's).

The header (metadata and every tensor's name, type, shape and offset) is known from the plan, so gguf-py's
``GGUFWriter`` writes it first and then each tensor's bytes as the tensor is produced. Experts of one layer are
stacked into one 3-D tensor (memory: that tensor), as GGUF stores them.
"""

from __future__ import annotations

import logging
import re
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from modelsurgeon.ops.core.errors import SurgeonError

from .gguf_arch import EXPERT, FUSED_DOWN, FUSED_GATE_UP, Arch, HParams, arch_of, name_map, skipped

FLOAT_TYPES = ("F32", "F16", "BF16")
# gguf.LlamaFileType values of the schemes (general.file_type)
FILE_TYPE = {
    "F32": 0,
    "F16": 1,
    "Q4_0": 2,
    "Q4_1": 3,
    "Q8_0": 7,
    "Q5_0": 8,
    "Q5_1": 9,
    "Q2_K": 10,
    "Q3_K_S": 11,
    "Q3_K_M": 12,
    "Q3_K_L": 13,
    "Q4_K_S": 14,
    "Q4_K_M": 15,
    "Q5_K_S": 16,
    "Q5_K_M": 17,
    "Q6_K": 18,
    "BF16": 32,
    # a single k-quant type on the selected weights: the mixture closest to it
    "Q3_K": 11,
    "Q4_K": 14,
    "Q5_K": 16,
}
# GGUF names that stay F32 whatever the scheme (the converter's list for these architectures)
_ALWAYS_F32 = re.compile(r"(ffn_gate_inp(_shexp)?\.weight|_norm\.weight|^rope_\w+\.weight)$")


def check_architecture(config: dict | None, label: str) -> tuple[str, Arch]:
    name, arch = arch_of(config, label)
    check_config_numbers(config, label)
    return name, arch


_INT_FIELDS = {  # config.json fields the llama metadata is made of: required, then optional
    "num_attention_heads": True,
    "hidden_size": True,
    "num_hidden_layers": True,
    "intermediate_size": True,
    "vocab_size": True,
    "num_key_value_heads": False,
    "head_dim": False,
    "max_position_embeddings": False,
}


def check_config_numbers(config: dict, label: str) -> None:
    """Every number the GGUF metadata takes from config.json is present (when required) and sane, so a null,
    a string or an absurd value is one line here rather than a crash later (``text_config`` lifted, as the
    converter reads it)."""
    if isinstance(config.get("text_config"), dict):
        config = {**config, **config["text_config"]}
    for key, required in _INT_FIELDS.items():
        v = config.get(key)
        if v is None and not required:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 2**31:
            raise SurgeonError(
                f"{label}'s config.json has {key} = {v!r}; --format gguf needs a positive integer below 2**31", "fix config.json"
            )
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    if heads % kv:
        raise SurgeonError(f"{label}'s config.json has {heads} attention heads, not a multiple of {kv} key/value heads")
    for key in ("rms_norm_eps", "rope_theta"):
        v = config.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf")):
            raise SurgeonError(f"{label}'s config.json has {key} = {v!r}; it must be a positive number", "fix config.json")
    for key in ("rope_scaling", "rope_parameters"):
        v = config.get(key)
        if v is not None and not isinstance(v, dict):
            raise SurgeonError(f"{label}'s config.json has {key} = {v!r}; it must be an object or null", "fix config.json")
        for sub in ("factor", "rope_theta"):
            x = (v or {}).get(sub)
            if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x < float("inf")):
                raise SurgeonError(f"{label}'s config.json has {key}.{sub} = {x!r}", "fix config.json")


def permute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF rotate-half q/k rows -> ggml's interleaved RoPE order (convert_hf_to_gguf's LlamaModel.permute)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of the output file: where it comes from, what is done to it, and how it is stored."""

    name: str
    shape: tuple[int, ...]  # torch order (ggml's reversed)
    qtype: str  # F32, F16, BF16, or a block type
    sources: tuple[str, ...] = ()  # HF tensors read (several: experts stacked in this order)
    heads: int = 0  # permute rows for this many RoPE heads
    shift: float = 0.0  # stored = shift + w (Gemma norms)
    rows: tuple[int, int] | None = None  # keep rows [a, b) along dim -2 (fused gate_up halves, Gemma 3 vocab)
    values: tuple[float, ...] | None = None  # made from the config (rope_freqs), no source

    @property
    def hf_name(self) -> str:
        return self.sources[0] if self.sources else self.name

    @property
    def nbytes(self) -> int:
        from modelsurgeon.ops.quantize.gguf_blocks import row_bytes

        if self.qtype in FLOAT_TYPES:
            return int(np.prod(self.shape)) * (4 if self.qtype == "F32" else 2)
        return int(np.prod(self.shape[:-1])) * row_bytes(self.shape[-1], self.qtype)

    @property
    def quantizable(self) -> bool:
        """What llama-quantize may quantize: 2-D+ weights other than norms, routers and config-made tensors."""
        return self.values is None and len(self.shape) >= 2 and not _ALWAYS_F32.search(self.name)


def float_type(name: str, shape: tuple[int, ...], source_dtype: str | None, scheme_float: str | None) -> str:
    """The converter's type for a tensor that is not quantized: F32 for 1-D, norms, routers and non-weights;
    the scheme's float type (f32/f16/bf16 schemes) or else the source's (F16, BF16; F32 for F32/F64)."""
    if len(shape) <= 1 or _ALWAYS_F32.search(name) or not name.endswith(".weight"):
        return "F32"
    if scheme_float is not None:
        return scheme_float
    return {"F16": "F16", "BF16": "BF16"}.get(source_dtype or "", "F32")


def plan_tensors(ck, arch: Arch, config: dict, n_vocab: int | None = None) -> list[GGUFTensor]:
    """The file's tensors in the converter's order (config-made first, then the checkpoint's), before the
    type choice: qtype is the source's float type here (F32/F16/BF16); the caller assigns the scheme's."""
    h = HParams(config)
    tmap = name_map(arch, h)
    n_head = int(h.find("num_attention_heads", "n_head", "n_heads") or 0)
    n_kv = int(h.find("num_key_value_heads", "n_kv_heads") or n_head)
    out: list[GGUFTensor] = []
    for name, values in arch.extra_tensors(h).items():
        out.append(GGUFTensor(name, (len(values),), "F32", values=tuple(float(v) for v in values)))
    experts: dict[str, list[tuple[int, str]]] = {}
    first_of: dict[str, int] = {}

    def gguf_of(hf: str) -> str:
        got = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
        if got is None:
            raise SurgeonError(
                f"{hf} has no GGUF name in the {arch.gguf} layout",
                "the checkpoint does not match its config.json architecture; use --format dense or compressed-tensors",
            )
        return got

    for info in ck.infos():
        hf = info.name
        if skipped(hf, arch):
            continue
        shape = tuple(info.shape)
        dtype = info.dtype
        if m := EXPERT.match(hf):
            key = f"{m['pre']}.{m['w']}.weight"
            if key not in experts:
                first_of[key] = len(out)
                out.append(GGUFTensor(key, shape, dtype))  # placeholder, replaced below
            experts.setdefault(key, []).append((int(m["x"]), hf))
            continue
        if m := FUSED_GATE_UP.match(hf):
            if len(shape) != 3 or shape[-2] % 2:
                raise SurgeonError(f"{hf} has shape {list(shape)}; a fused gate_up expert tensor is (experts, 2*ff, hidden)")
            ff = shape[-2] // 2
            for part, rows in (("gate_proj", (0, ff)), ("up_proj", (ff, 2 * ff))):
                out.append(GGUFTensor(gguf_of(f"{m['pre']}.{part}.weight"), (shape[0], ff, shape[2]), dtype, (hf,), rows=rows))
            continue
        if FUSED_DOWN.match(hf):
            out.append(GGUFTensor(gguf_of(hf + ".weight"), shape, dtype, (hf,)))
            continue
        name = gguf_of(hf)
        heads = 0
        if arch.permute_qk and hf.endswith(("q_proj.weight", "q_proj.bias")):
            heads = n_head
        elif arch.permute_qk and hf.endswith(("k_proj.weight", "k_proj.bias")):
            heads = n_kv
        shift = arch.norm_shift if hf.endswith("norm.weight") else 0.0
        rows = None
        if arch.trim_vocab and "embed_tokens.weight" in hf and n_vocab is not None and n_vocab < shape[0]:
            rows = (0, n_vocab)
            shape = (n_vocab, *shape[1:])
        out.append(GGUFTensor(name, shape, dtype, (hf,), heads, shift, rows))
    # experts: one 3-D tensor per (layer, projection) at the place of its first expert
    n_expected = h.find("num_local_experts", "num_experts", "n_routed_experts")
    for key, members in experts.items():
        members.sort()
        ids = [x for x, _ in members]
        if ids != list(range(len(ids))) or (n_expected is not None and len(ids) != int(n_expected)):
            raise SurgeonError(f"{key}: expert tensors {ids} do not run 0..{(n_expected or len(ids)) - 1}")
        shapes = {tuple(ck.info(n).shape) for _, n in members}
        if len(shapes) != 1:
            raise SurgeonError(f"{key}: the experts have different shapes {sorted(shapes)}")
        (shape,) = shapes
        i = first_of[key]
        out[i] = GGUFTensor(gguf_of(key), (len(ids), *shape), out[i].qtype, tuple(n for _, n in members))
    return out


def with_types(plan: list[GGUFTensor], types: dict[str, str]) -> list[GGUFTensor]:
    from dataclasses import replace

    return [replace(t, qtype=types[t.name]) for t in plan]


# --------------------------------------------------------------------------------------------
# reading one output tensor


def source_tensor(t: GGUFTensor, read) -> torch.Tensor:
    """The tensor as the converter hands it to the writer: stacked, sliced, permuted, shifted; float16 or
    float32 (other dtypes become float32 first, as in the converter)."""
    if t.values is not None:
        return torch.tensor(t.values, dtype=torch.float32)
    parts = []
    for n in t.sources:
        w = read(n)
        if w.dtype not in (torch.float16, torch.float32):
            w = w.float()
        parts.append(w)
    w = torch.stack(parts) if len(parts) > 1 else parts[0]
    if t.rows is not None:
        w = w[..., t.rows[0] : t.rows[1], :] if w.dim() >= 2 else w[t.rows[0] : t.rows[1]]
    if t.heads:
        w = permute_rows(w, t.heads)
    if t.shift:
        w = w + t.shift
    return w.contiguous()


def stored_array(t: GGUFTensor, value: torch.Tensor) -> np.ndarray:
    """A tensor that is not quantized, as the numpy array GGUFWriter writes for its type."""
    v = value.detach().cpu()
    if t.qtype == "F32":
        return v.float().numpy()
    if t.qtype == "F16":
        return v.half().numpy()
    return v.to(torch.bfloat16).contiguous().view(torch.uint8).numpy()  # raw bytes, declared BF16


# --------------------------------------------------------------------------------------------
# the header


@contextmanager
def _quiet_gguf():
    """gguf-py logs each key it overwrites (the converter writes some twice, as we do) and every setting."""
    loggers = [logging.getLogger(n) for n in ("gguf.gguf_writer", "gguf.vocab", "gguf.metadata", "gguf")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def build_writer(
    plan: list[GGUFTensor],
    arch: Arch,
    config: dict,
    folder: Path,
    file_type: str,
    pre_tokenizer: str | None = None,
    extra_metadata=(),
):
    """A gguf-py GGUFWriter holding the whole header (no file yet): tensor infos, then the metadata in the
    converter's order (general.*, hyperparameters, quantization version, tokenizer), then ``extra_metadata``
    ((key, str or int) pairs: llama-quantize's ``quantize.imatrix.*``, our provenance), and ``modelsurgeon.version``."""
    import gguf

    from .gguf_tokenizer import _load_json, add_vocab, vocab_kind

    h = HParams(config)
    with _quiet_gguf():
        w = _writer_class()(None, arch.gguf)
        for t in plan:
            if t.qtype in ("F32", "F16"):
                w.add_tensor_info(t.name, t.shape, np.dtype(np.float32 if t.qtype == "F32" else np.float16), t.nbytes)
            else:
                rows = int(np.prod(t.shape[:-1]))
                byte_shape = (*t.shape[:-1], t.nbytes // max(1, rows))
                w.add_tensor_info(t.name, byte_shape, np.dtype(np.uint8), t.nbytes, raw_dtype=gguf.GGMLQuantizationType[t.qtype])
        w.add_type(gguf.GGUFType.MODEL)
        total, shared, expert, n_expert = w.get_total_parameter_count()
        meta = gguf.Metadata.load(None, folder, None, total)
        if meta.name is None:
            meta.name = folder.name
        if meta.size_label is None and total > 0:
            meta.size_label = gguf.size_label(total, shared, expert, n_expert)
        meta.set_gguf_meta_model(w)
        for method, args in arch.entries(h):
            getattr(w, method)(*args)
        w.add_file_type(FILE_TYPE[file_type])
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        tok_cfg = _load_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
        kind = vocab_kind(folder, arch.tokenizer, tok_cfg)
        if arch.space_prefix == "config" and tok_cfg.get("add_prefix_space") is not None:
            w.add_add_space_prefix(tok_cfg["add_prefix_space"])
        n_tokens = add_vocab(w, folder, config, kind, pre_tokenizer)
        if arch.space_prefix == "off-for-spm" and kind == "spm":
            w.add_add_space_prefix(False)
        if arch.no_bos_for_49152 and int(config.get("vocab_size", 32000)) == 49152:
            w.add_add_bos_token(False)
        from modelsurgeon import __version__

        # provenance (--force replaces only files that carry modelsurgeon.version) after llama-quantize's keys
        set_metadata(w, {**dict(extra_metadata), "modelsurgeon.version": __version__})
    return w, n_tokens


_NUMPY_OF = {
    "B": "<u1",
    "b": "<i1",
    "H": "<u2",
    "h": "<i2",
    "I": "<u4",
    "i": "<i4",
    "Q": "<u8",
    "q": "<i8",
    "f": "<f4",
    "d": "<f8",
}
_U64 = struct.Struct("<Q")


def _pack_long_array(writer, val, sub_type) -> bytes | None:
    """The bytes gguf-py's ``_pack_val`` writes for a long array of strings or numbers (a vocabulary, its
    types and scores, the merges), packed at once; None where its own item-by-item packing should run."""
    import gguf

    if not isinstance(val, list) or len(val) < 256 or writer.endianess != gguf.GGUFEndian.LITTLE:
        return None
    ltype = sub_type if sub_type is not None else gguf.GGUFValueType.get_type(val[0])
    head = struct.pack("<IQ", ltype, len(val))
    if ltype == gguf.GGUFValueType.STRING:
        if not all(type(v) is str for v in val):
            return None
        enc = [v.encode("utf-8") for v in val]
        return head + b"".join(chain.from_iterable(zip(map(_U64.pack, map(len, enc)), enc)))
    fmt = writer._simple_value_packing.get(ltype)
    if fmt not in _NUMPY_OF:
        return None
    want = float if fmt in "fd" else int
    if not all(type(v) is want for v in val):  # bools, mixed types: gguf-py's own checks and errors
        return None
    try:
        with np.errstate(over="ignore"):
            arr = np.asarray(val, dtype=_NUMPY_OF[fmt])
    except (OverflowError, ValueError):
        return None
    if want is float and (np.isinf(arr) != np.isinf(np.asarray(val, dtype=np.float64))).any():
        return None  # a double beyond fp32's range: struct refuses it, numpy would write inf
    return head + arr.tobytes()


def _writer_class():
    """gguf-py's ``GGUFWriter``, packing long metadata arrays at once: the same bytes, in milliseconds where its
    value-by-value packing takes seconds for a 150k-token vocabulary."""
    import gguf

    class Writer(gguf.GGUFWriter):
        def _pack_val(self, val, vtype, add_vtype, sub_type=None):
            fast = _pack_long_array(self, val, sub_type) if vtype == gguf.GGUFValueType.ARRAY else None
            if fast is None:
                return super()._pack_val(val, vtype, add_vtype, sub_type)
            return (struct.pack("<I", vtype) if add_vtype else b"") + fast

    return Writer


def set_metadata(writer, meta: dict) -> None:
    """Add or replace string and integer (u32, as llama-quantize writes them) keys of a GGUFWriter's header."""
    for key, value in meta.items():
        writer.kv_data[0].pop(key, None)
        (writer.add_string if isinstance(value, str) else writer.add_uint32)(key, value)


def metadata_of(writer) -> dict:
    """key -> value of a GGUFWriter's metadata (for tests and the plan's summary)."""
    return {k: v.value for k, v in writer.kv_data[0].items()}


class StreamingGGUF:
    """A header-complete GGUFWriter, written to ``path``: header first, then each tensor as it arrives."""

    def __init__(self, path: Path, writer):
        self.writer = writer
        with _quiet_gguf():
            writer.write_header_to_file(path=Path(path))
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()

    def write(self, array: np.ndarray) -> None:
        self.writer.write_tensor_data(np.ascontiguousarray(array))

    def close(self) -> None:
        self.writer.close()
