"""GGUF <-> transformers: tensor names, config keys and the RoPE row order, for the architectures we map.

The one table both directions can share (ops/io is below every family): the GGUF reader maps a file back to
the transformers layout with it, as transformers' own GGUF loader does (``modeling_gguf_pytorch_utils.py``,
``integrations/ggml.py``: ``GGUF_CONFIG_MAPPING``, ``LlamaTensorProcessor``), and a writer may map forward.

    hf_name("llama", "blk.3.attn_q.weight") == "model.layers.3.self_attn.q_proj.weight"
    gguf_name("model.layers.3.self_attn.q_proj.weight") == "blk.3.attn_q.weight"
    hf_config(metadata) -> config.json for transformers

Llama and Mistral files hold q/k rows in ggml's interleaved RoPE order (``convert_hf_to_gguf.py`` permutes
them); ``unpermute_rows`` undoes that. Qwen2/Qwen3 files are converted without the permutation.
"""

from __future__ import annotations

import re

from modelsurgeon.ops.core.errors import CheckpointError

# GGUF general.architecture -> (transformers model_type, architectures[0], q/k rows permuted)
ARCHITECTURES = {
    "llama": ("llama", "LlamaForCausalLM", True),
    "mistral": ("mistral", "MistralForCausalLM", True),
    "qwen2": ("qwen2", "Qwen2ForCausalLM", False),
    "qwen3": ("qwen3", "Qwen3ForCausalLM", False),
}
TOP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# tensors a GGUF file may hold that have no transformers parameter (transformers' loader drops them too)
SKIPPED = re.compile(r"^rope_freqs\.weight$|\.rope_freqs\.weight$")
_BLK = re.compile(r"^blk\.(\d+)\.(.+)$")
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_HF_TO_GGUF_LAYER = {v: k for k, v in LAYER.items()}
_HF_TO_GGUF_TOP = {v: k for k, v in TOP.items()}

# GGUF metadata key (after "<arch>.") -> config.json key, as transformers' GGUF_CONFIG_MAPPING
CONFIG_KEYS = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "embedding_length": "hidden_size",
    "rope.freq_base": "rope_theta",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "vocab_size": "vocab_size",
}
TOKEN_KEYS = {
    "tokenizer.ggml.bos_token_id": "bos_token_id",
    "tokenizer.ggml.eos_token_id": "eos_token_id",
    "tokenizer.ggml.unknown_token_id": "unk_token_id",
    "tokenizer.ggml.padding_token_id": "pad_token_id",
}


def supported() -> str:
    return ", ".join(ARCHITECTURES)


def architecture(metadata: dict, label: str) -> str:
    """The mapped architecture of a GGUF file (``llama`` files named Mistral read as ``mistral``, as in
    transformers), or an error listing the supported ones."""
    arch = metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"{label} is a GGUF file of architecture {arch!r}, which has no transformers mapping here",
            f"supported architectures: {supported()}",
        )
    name = str(metadata.get("general.name") or "")
    return "mistral" if arch == "llama" and "mistral" in name.lower() else arch


def hf_name(gguf: str) -> str | None:
    """The transformers name of a GGUF tensor; None for one transformers does not load (rope_freqs)."""
    if SKIPPED.search(gguf):
        return None
    if gguf in TOP:
        return TOP[gguf]
    m = _BLK.match(gguf)
    if m and m.group(2) in LAYER:
        return f"model.layers.{m.group(1)}.{LAYER[m.group(2)]}"
    raise KeyError(gguf)


def gguf_name(hf: str) -> str | None:
    """The GGUF name of a transformers tensor of these architectures (None for rotary buffers)."""
    if hf.endswith("rotary_emb.inv_freq"):
        return None
    if hf in _HF_TO_GGUF_TOP:
        return _HF_TO_GGUF_TOP[hf]
    m = _HF_LAYER.match(hf)
    if m and m.group(2) in _HF_TO_GGUF_LAYER:
        return f"blk.{m.group(1)}.{_HF_TO_GGUF_LAYER[m.group(2)]}"
    raise KeyError(hf)


def hf_config(metadata: dict, arch: str, tensor_names: list[str]) -> dict:
    """config.json for transformers from GGUF metadata (the keys transformers' GGUF loader maps)."""
    gguf_arch = metadata["general.architecture"]
    model_type, cls, _ = ARCHITECTURES[arch]
    cfg: dict = {"architectures": [cls], "model_type": model_type}
    for key, hf in CONFIG_KEYS.items():
        if f"{gguf_arch}.{key}" in metadata:
            cfg[hf] = metadata[f"{gguf_arch}.{key}"]
    if arch in ("llama", "mistral") and f"{gguf_arch}.rope.dimension_count" in metadata:
        cfg["head_dim"] = metadata[f"{gguf_arch}.rope.dimension_count"]
    if arch == "qwen3" and f"{gguf_arch}.attention.key_length" in metadata:
        cfg["head_dim"] = metadata[f"{gguf_arch}.attention.key_length"]
    for key, hf in TOKEN_KEYS.items():
        if key in metadata:
            cfg[hf] = metadata[key]
    if "vocab_size" not in cfg and "tokenizer.ggml.tokens" in metadata:
        cfg["vocab_size"] = len(metadata["tokenizer.ggml.tokens"])
    scaling = metadata.get(f"{gguf_arch}.rope.scaling.type")
    if scaling == "linear" and f"{gguf_arch}.rope.scaling.factor" in metadata:
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": float(metadata[f"{gguf_arch}.rope.scaling.factor"])}
    cfg["tie_word_embeddings"] = "output.weight" not in tensor_names
    cfg["torch_dtype"] = "float32"  # gguf-py dequantizes every type to float32
    return cfg


def unpermute_rows(w, n_head: int):
    """ggml's interleaved RoPE rows -> transformers' rotate-half order (the inverse of convert_hf_to_gguf's
    ``permute``; transformers' ``LlamaTensorProcessor._reverse_permute_weights``). Works on numpy or torch."""
    rows = w.shape[0]
    dim = rows // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def heads_for(arch: str, gguf: str, config: dict) -> int | None:
    """Heads whose RoPE rows a tensor holds, when the file permuted them (q and k of Llama/Mistral)."""
    if not ARCHITECTURES[arch][2]:
        return None
    if ".attn_q." in gguf:
        return int(config["num_attention_heads"])
    if ".attn_k." in gguf:
        return int(config.get("num_key_value_heads") or config["num_attention_heads"])
    return None
