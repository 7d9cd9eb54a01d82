"""Write a Llama-family checkpoint as one GGUF file that llama.cpp loads, streaming tensor by tensor.

What ``convert_hf_to_gguf.py`` does for ``LlamaForCausalLM``, without the script: the ``llama.*``
hyperparameters, the tokenizer (``gguf_tokenizer.py``), HF -> GGUF tensor names, and the row permutation of
``q_proj``/``k_proj`` that turns Hugging Face's rotate-half RoPE layout into ggml's interleaved one
(``w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2)``). Norms are written F32 (ggml needs it);
other tensors that are not quantized keep their dtype (F32, F16 or BF16).

The GGUF header (metadata and every tensor's name, type, shape and offset) is known from the plan, so
gguf-py's ``GGUFWriter`` writes it first and then each tensor's bytes as the tensor is produced.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.quantize.gguf_blocks import row_bytes

SUPPORTED = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_LAYER_MAP = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.bias": "attn_output.bias",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOP_MAP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_SKIP = re.compile(r"rotary_emb\.inv_freq$")
_FILE_TYPE = {"Q8_0": 7, "Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9}  # gguf.LlamaFileType.MOSTLY_*


def gguf_name(hf_name: str) -> str | None:
    """The GGUF tensor name of a Hugging Face Llama tensor; None for tensors the file does not carry."""
    if _SKIP.search(hf_name):
        return None
    if hf_name in _TOP_MAP:
        return _TOP_MAP[hf_name]
    m = _LAYER.match(hf_name)
    if m and m.group(2) in _LAYER_MAP:
        return f"blk.{m.group(1)}.{_LAYER_MAP[m.group(2)]}"
    raise SurgeonError(
        f"{hf_name} has no GGUF name in the llama layout",
        "this checkpoint is not a plain Llama; use --format dense or compressed-tensors",
    )


def check_architecture(config: dict | None, label: str) -> str:
    supported = ", ".join(f"{k} ({v})" for k, v in SUPPORTED.items())
    if not config:
        raise SurgeonError(f"{label} has no config.json, which --format gguf needs", f"supported: {supported}")
    mt = config.get("model_type")
    if not isinstance(mt, str) or mt not in SUPPORTED:
        archs = config.get("architectures")
        arch = ", ".join(map(str, archs)) if isinstance(archs, list) and archs else "unknown"
        raise SurgeonError(
            f"--format gguf does not support {label} (model_type {mt!r}, {arch})", f"supported architectures: {supported}"
        )
    check_config_numbers(config, label)
    return mt


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
    a string or an absurd value is one line here rather than a crash later."""
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


def _rope(config: dict) -> tuple[float, dict | None]:
    params = config.get("rope_parameters") or {}
    theta = config.get("rope_theta") or params.get("rope_theta") or 10000.0
    scaling = config.get("rope_scaling") or (params if params.get("rope_type", "default") != "default" else None)
    return float(theta), scaling


def hyperparameters(config: dict) -> dict:
    """``llama.*`` metadata from config.json (the keys llama.cpp's ``load_hparams`` reads)."""
    n_head = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // n_head)
    theta, scaling = _rope(config)
    kv = {
        "llama.context_length": int(config.get("max_position_embeddings") or 2048),
        "llama.embedding_length": hidden,
        "llama.block_count": int(config["num_hidden_layers"]),
        "llama.feed_forward_length": int(config["intermediate_size"]),
        "llama.attention.head_count": n_head,
        "llama.attention.head_count_kv": int(config.get("num_key_value_heads") or n_head),
        "llama.rope.dimension_count": head_dim,
        "llama.rope.freq_base": theta,
        "llama.attention.layer_norm_rms_epsilon": float(config.get("rms_norm_eps", 1e-6)),
        "llama.vocab_size": int(config["vocab_size"]),
    }
    if head_dim != hidden // n_head:
        kv["llama.attention.key_length"] = head_dim
        kv["llama.attention.value_length"] = head_dim
    if scaling:
        kind = scaling.get("rope_type") or scaling.get("type")
        if kind != "linear":
            raise SurgeonError(f"--format gguf does not handle rope scaling {kind!r} yet", "only linear rope scaling is written")
        kv["llama.rope.scaling.type"] = "linear"
        kv["llama.rope.scaling.factor"] = float(scaling["factor"])
    return kv


def permute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF rotate-half q/k rows -> ggml's interleaved RoPE order (convert_hf_to_gguf's LlamaModel.permute)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def heads_for(hf_name: str, config: dict) -> int | None:
    if hf_name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
        return int(config["num_attention_heads"])
    if hf_name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
        return int(config.get("num_key_value_heads") or config["num_attention_heads"])
    return None


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of the output file: where it comes from and how it is stored."""

    hf_name: str
    name: str
    shape: tuple[int, ...]
    qtype: str  # Q4_0 ... for quantized; F32, F16, BF16 otherwise

    @property
    def nbytes(self) -> int:
        if self.qtype in ("F32", "F16", "BF16"):
            return int(np.prod(self.shape)) * (4 if self.qtype == "F32" else 2)
        rows = int(np.prod(self.shape[:-1]))
        return rows * row_bytes(self.shape[-1], self.qtype)


def plan_tensors(infos, targets: dict[str, str]) -> list[GGUFTensor]:
    """The file's tensors in checkpoint order; ``targets`` maps each quantized tensor to its GGUF type."""
    out = []
    for info in infos:
        name = gguf_name(info.name)
        if name is None:
            continue
        if info.name in targets:
            out.append(GGUFTensor(info.name, name, tuple(info.shape), targets[info.name]))
        elif len(info.shape) <= 1 or info.dtype in ("F32", "F64") or not info.is_float:
            out.append(GGUFTensor(info.name, name, tuple(info.shape), "F32"))
        else:
            out.append(GGUFTensor(info.name, name, tuple(info.shape), "F16" if info.dtype == "F16" else "BF16"))
    return out


def stored_array(t: GGUFTensor, value: torch.Tensor) -> np.ndarray:
    """A tensor that is not quantized, as the numpy array GGUFWriter writes for its type."""
    v = value.detach().cpu()
    if t.qtype == "F32":
        return v.float().numpy()
    if t.qtype == "F16":
        return v.half().numpy()
    return v.to(torch.bfloat16).contiguous().view(torch.uint8).numpy()  # raw bytes, declared BF16


class StreamingGGUF:
    """GGUFWriter driven in plan order: header first, then each tensor as it arrives."""

    def __init__(self, path: Path, plan: list[GGUFTensor], metadata: dict):
        import gguf

        self._gguf = gguf
        self.writer = gguf.GGUFWriter(str(path), "llama")
        for key, value in metadata.items():
            self._add(key, value)
        for t in plan:
            if t.qtype in ("F32", "F16"):
                dt = np.float32 if t.qtype == "F32" else np.float16
                self.writer.add_tensor_info(t.name, t.shape, np.dtype(dt), t.nbytes)
            else:
                byte_shape = (*t.shape[:-1], t.nbytes // max(1, int(np.prod(t.shape[:-1]))))
                self.writer.add_tensor_info(
                    t.name, byte_shape, np.dtype(np.uint8), t.nbytes, raw_dtype=gguf.GGMLQuantizationType[t.qtype]
                )
        self.writer.write_header_to_file()
        self.writer.write_kv_data_to_file()
        self.writer.write_ti_data_to_file()

    def _add(self, key: str, value) -> None:
        w, T = self.writer, self._gguf.GGUFValueType
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, list):
            if value:  # GGUF has no empty arrays
                sub = T.STRING if isinstance(value[0], str) else T.FLOAT32 if isinstance(value[0], float) else T.INT32
                w.add_key_value(key, value, T.ARRAY, sub_type=sub)
        else:
            raise TypeError(f"cannot write {key}={value!r} to GGUF")

    def write(self, array: np.ndarray) -> None:
        self.writer.write_tensor_data(np.ascontiguousarray(array))

    def close(self) -> None:
        self.writer.close()


def file_metadata(config: dict, qtype: str, name: str, vocab: dict) -> dict:
    import gguf

    from modelsurgeon import __version__

    meta = {
        "general.name": name,
        "general.file_type": _FILE_TYPE[qtype],
        "general.quantization_version": int(gguf.GGML_QUANT_VERSION),
        "modelsurgeon.version": __version__,  # provenance: --force replaces only files that carry it
    }
    meta.update(hyperparameters(config))
    meta.update(vocab)
    return meta


def check_rows(hf_name: str, shape: tuple[int, ...], config: dict) -> str | None:
    """A problem with a tensor's shape for this layout, or None."""
    n = heads_for(hf_name, config)
    if n and shape[0] % (2 * n):
        return f"{hf_name}: {shape[0]} rows cannot be split into {n} RoPE heads"
    return None
