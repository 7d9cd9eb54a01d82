"""The architectures ``--format gguf`` writes: one table, what llama.cpp's ``convert_hf_to_gguf.py`` does per model.

Each row says, for a Hugging Face ``architectures`` name: the GGUF architecture, which hyperparameters go into
the file (as the names of gguf-py ``GGUFWriter.add_*`` methods, so keys and value types are gguf-py's own), and
the few tensor changes the converter makes (Llama's q/k RoPE row permutation, Gemma's ``1 + w`` norms, experts
stacked into one 3-D ``*_exps`` tensor, llama3's ``rope_freqs``, Phi-3's long/short RoPE factors). Tensor names
come from gguf-py's ``TensorNameMap``, the converter's own table. Adding an architecture is a row here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from modelsurgeon.ops.core.errors import SurgeonError

# --------------------------------------------------------------------------------------------
# hyperparameters: config.json, with the converter's fallbacks between names


class HParams:
    """config.json as the converter reads it: ``text_config`` lifted to the top, RoPE settings in one dict."""

    def __init__(self, config: dict):
        cfg = dict(config)
        if isinstance(cfg.get("text_config"), dict):
            cfg = {**cfg, **cfg["text_config"]}
        self.cfg = cfg
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        theta = self.find("global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta", "rotary_emb_base")
        local = self.find("local_rope_theta", "rope_local_theta", "rope_theta_local", "swa_rope_theta", "rope_local_base_freq")
        partial = self.find("partial_rotary_factor", "rope_pct", "rope_percent")
        orig = self.find("original_max_position_embeddings")
        if "full_attention" not in rope and "sliding_attention" not in rope:
            if local is not None:
                rope["sliding_attention"] = {"rope_theta": local}
            if "rope_theta" not in rope and theta is not None:
                rope["rope_theta"] = theta
            if "rope_type" not in rope and rope.get("type") is not None:
                rope["rope_type"] = rope["type"]
            if "partial_rotary_factor" not in rope and partial is not None:
                rope["partial_rotary_factor"] = partial
            if "original_max_position_embeddings" not in rope and orig is not None:
                rope["original_max_position_embeddings"] = orig
        self.rope_all = rope
        self.rope = rope.get("full_attention", rope)

    def find(self, *names: str, default=None):
        for n in names:
            if n in self.cfg:
                return self.cfg[n]
        return default

    def __getitem__(self, name: str):
        if name not in self.cfg:
            raise SurgeonError(f"config.json has no {name!r}, which the GGUF file needs", "fix config.json")
        return self.cfg[name]

    @property
    def block_count(self) -> int:
        return int(self.find("n_layers", "num_hidden_layers", "n_layer", "num_layers"))

    def head_dim(self) -> int:
        return int(self.find("head_dim") or self["hidden_size"] // self["num_attention_heads"])


# One metadata entry: (GGUFWriter method, value from the hyperparameters; None = not written)
Entry = tuple[str, Callable[[HParams], object]]


def _base_entries(h: HParams) -> list[tuple[str, tuple]]:
    """``TextModel.set_gguf_parameters``: what every text model writes, in the converter's order."""
    out: list[tuple[str, tuple]] = [("add_block_count", (h.block_count,))]
    for method, names in (
        (
            "add_context_length",
            ("max_position_embeddings", "n_ctx", "n_positions", "max_length", "max_sequence_length", "model_max_length"),
        ),
        ("add_embedding_length", ("hidden_size", "n_embd", "dim")),
        (
            "add_feed_forward_length",
            ("prefix_dense_intermediate_size", "dense_intermediate_size", "intermediate_size", "n_inner", "hidden_dim"),
        ),
        ("add_head_count", ("num_attention_heads", "n_head", "n_heads")),
        ("add_head_count_kv", ("num_key_value_heads", "n_kv_heads")),
    ):
        if (v := h.find(*names)) is not None:
            out.append((method, (v,)))
    if h.cfg.get("is_causal") is False:
        out.append(("add_causal_attention", (False,)))
    out += rope_scaling_entries(h)
    if (theta := h.rope.get("rope_theta")) is not None:
        out.append(("add_rope_freq_base", (theta,)))
    if (local := h.rope_all.get("sliding_attention", {}).get("rope_theta")) is not None:
        out.append(("add_rope_freq_base_swa", (local,)))
    if (eps := h.find("rms_norm_eps", "norm_eps")) is not None:
        out.append(("add_layer_norm_rms_eps", (eps,)))
    if (eps := h.find("layer_norm_eps", "layer_norm_epsilon", "norm_epsilon")) is not None:
        out.append(("add_layer_norm_eps", (eps,)))
    if (n := h.find("num_local_experts", "num_experts", "n_routed_experts")) is not None:
        out.append(("add_expert_count", (n,)))
    if (n := h.find("num_experts_per_tok", "num_experts_per_token", "top_k_experts")) is not None:
        out.append(("add_expert_used_count", (n,)))
    if (hd := h.cfg.get("head_dim")) is not None:
        out += [("add_key_length", (hd,)), ("add_value_length", (hd,))]
    return out


def rope_scaling_entries(h: HParams) -> list[tuple[str, tuple]]:
    """RoPE scaling keys. ``llama3`` writes none: its factors go into the ``rope_freqs`` tensor."""
    import gguf

    kind = h.rope.get("rope_type")
    factor = h.rope.get("factor")
    if kind is None:
        return []
    if kind == "linear" and factor is not None:
        return [("add_rope_scaling_type", (gguf.RopeScalingType.LINEAR,)), ("add_rope_scaling_factor", (factor,))]
    if kind == "yarn" and factor is not None:
        out = [
            ("add_rope_scaling_type", (gguf.RopeScalingType.YARN,)),
            ("add_rope_scaling_factor", (factor,)),
            ("add_rope_scaling_orig_ctx_len", (h.rope["original_max_position_embeddings"],)),
        ]
        for key, method in (
            ("extrapolation_factor", "add_rope_scaling_yarn_ext_factor"),
            ("attention_factor", "add_rope_scaling_yarn_attn_factor"),
            ("beta_fast", "add_rope_scaling_yarn_beta_fast"),
            ("beta_slow", "add_rope_scaling_yarn_beta_slow"),
        ):
            v = h.rope.get(key, h.rope.get("attn_factor") if key == "attention_factor" else None)
            if v is not None:
                out.append((method, (v,)))
        return out
    if kind in ("su", "longrope"):
        return [("add_rope_scaling_type", (gguf.RopeScalingType.LONGROPE,))]
    if kind.lower() in ("llama3", "default"):
        return []
    raise SurgeonError(
        f"--format gguf does not handle RoPE scaling {kind!r}", "supported: linear, yarn, llama3, longrope (Phi-3), none"
    )


def _llama_entries(h: HParams) -> list[tuple[str, tuple]]:
    return [*_base_entries(h), ("add_vocab_size", (h["vocab_size"],)), ("add_rope_dimension_count", (h.head_dim(),))]


def _qwen2moe_entries(h: HParams) -> list[tuple[str, tuple]]:
    out = _base_entries(h)
    if (n := h.cfg.get("moe_intermediate_size")) is not None:
        out.append(("add_expert_feed_forward_length", (n,)))
    if (n := h.cfg.get("shared_expert_intermediate_size")) is not None:
        out.append(("add_expert_shared_feed_forward_length", (n,)))
    return out


def _gemma2_entries(h: HParams) -> list[tuple[str, tuple]]:
    return [
        ("add_context_length", (h["max_position_embeddings"],)),
        ("add_embedding_length", (h["hidden_size"],)),
        ("add_block_count", (h.block_count,)),
        ("add_feed_forward_length", (h["intermediate_size"],)),
        ("add_head_count", (h["num_attention_heads"],)),
        ("add_head_count_kv", (h.find("num_key_value_heads", "num_attention_heads"),)),
        ("add_layer_norm_rms_eps", (h["rms_norm_eps"],)),
        ("add_key_length", (h["head_dim"],)),
        ("add_value_length", (h["head_dim"],)),
        ("add_attn_logit_softcapping", (h["attn_logit_softcapping"],)),
        ("add_final_logit_softcapping", (h["final_logit_softcapping"],)),
        ("add_sliding_window", (h["sliding_window"],)),
    ]


def _gemma3_entries(h: HParams) -> list[tuple[str, tuple]]:
    out = _base_entries(h)
    # the converter writes these again with defaults; gguf-py keeps one value per key, the last
    out += [
        ("add_context_length", (h.find("max_position_embeddings", default=131072),)),
        ("add_head_count", (h.find("num_attention_heads", default=8),)),
        ("add_layer_norm_rms_eps", (h.find("rms_norm_eps", default=1e-6),)),
        ("add_key_length", (h.find("head_dim", default=256),)),
        ("add_value_length", (h.find("head_dim", default=256),)),
        ("add_rope_freq_base", (h.rope.get("rope_theta", 1_000_000.0),)),
    ]
    if h.cfg.get("attn_logit_softcapping") is not None:
        raise SurgeonError("this Gemma 3 config sets attn_logit_softcapping, which Gemma 3 does not have; fix config.json")
    if softcap := h.cfg.get("final_logit_softcapping"):
        out.append(("add_final_logit_softcapping", (softcap,)))
    if h.cfg.get("sliding_window_pattern") != 1:
        out.append(("add_sliding_window", (h["sliding_window"],)))
    out.append(("add_head_count_kv", (h.find("num_key_value_heads", default=4),)))
    return out


def _phi3_rope_dims(h: HParams) -> int:
    return int(h.rope.get("partial_rotary_factor", 1.0) * h["hidden_size"]) // h["num_attention_heads"]


def _phi3_entries(h: HParams) -> list[tuple[str, tuple]]:
    out = [
        ("add_context_length", (h.find("n_positions", "max_position_embeddings"),)),
        ("add_rope_scaling_orig_ctx_len", (h.rope["original_max_position_embeddings"],)),
        ("add_embedding_length", (h["hidden_size"],)),
        ("add_feed_forward_length", (h["intermediate_size"],)),
        ("add_block_count", (h.block_count,)),
        ("add_head_count", (h["num_attention_heads"],)),
        ("add_head_count_kv", (h["num_key_value_heads"],)),
        ("add_layer_norm_rms_eps", (h["rms_norm_eps"],)),
        ("add_rope_dimension_count", (_phi3_rope_dims(h),)),
        ("add_rope_freq_base", (h.rope["rope_theta"],)),
        ("add_sliding_window", (h.cfg.get("sliding_window") or 0,)),
    ]
    if h.rope.get("long_factor"):
        out.append(("add_rope_scaling_attn_factors", (_phi3_attn_factor(h),)))
    return out


def _phi3_attn_factor(h: HParams) -> float:
    scale = h.find("n_positions", "max_position_embeddings") / h.rope["original_max_position_embeddings"]
    kind = str(h.rope.get("rope_type", "")).lower()
    if kind in ("su", "longrope"):
        return math.sqrt(1 + math.log(scale) / math.log(h.rope["original_max_position_embeddings"])) if scale > 1 else 1.0
    if kind == "yarn":
        return 0.1 * math.log(scale) + 1.0 if scale > 1 else 1.0
    raise SurgeonError(f"--format gguf does not handle Phi-3 RoPE scaling {kind!r}", "supported: longrope, su, yarn")


# --------------------------------------------------------------------------------------------
# tensors the converter makes from the config


def llama3_rope_freqs(h: HParams) -> list[float] | None:
    """The ``rope_freqs`` factors of llama3 RoPE scaling (``LlamaModel.generate_extra_tensors``), in fp32."""
    import torch

    p = h.rope
    if str(p.get("rope_type", "")).lower() != "llama3":
        return None
    base = p.get("rope_theta", 10000.0)
    dim = h.head_dim()
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor = p.get("factor", 8.0)
    low, high = p.get("low_freq_factor", 1.0), p.get("high_freq_factor", 4.0)
    old_ctx = p.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return out


def phi3_rope_factors(h: HParams) -> dict[str, list[float]]:
    long, short = h.rope.get("long_factor"), h.rope.get("short_factor")
    if not long:
        return {}
    if short is None or len(long) != len(short) or len(long) != _phi3_rope_dims(h) / 2:
        raise SurgeonError(
            "config.json's rope_scaling long_factor/short_factor do not have one factor per RoPE dimension pair",
            "fix config.json",
        )
    return {"rope_factors_long.weight": list(long), "rope_factors_short.weight": list(short)}


def _extra_llama(h: HParams) -> dict[str, list[float]]:
    f = llama3_rope_freqs(h)
    return {"rope_freqs.weight": f} if f is not None else {}


# --------------------------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class Arch:
    """One architecture as the GGUF file sees it."""

    gguf: str  # general.architecture, and gguf-py's MODEL_ARCH name (upper case)
    entries: Callable[[HParams], list[tuple[str, tuple]]] = _base_entries
    extra_tensors: Callable[[HParams], dict[str, list[float]]] = lambda h: {}
    permute_qk: bool = False  # HF rotate-half q/k rows -> ggml's interleaved RoPE (Llama's converter)
    norm_shift: float = 0.0  # stored norm = shift + w (Gemma's RMSNorm multiplies by 1 + w)
    drop: tuple[str, ...] = ()  # HF tensors the converter leaves out
    trim_vocab: bool = False  # token_embd keeps only the tokenizer's rows (Gemma 3)
    tokenizer: str = "auto"  # auto: tokenizer.model first, else tokenizer.json; spm, bpe: only that; phi3: see vocab_kind
    space_prefix: str = ""  # "config": tokenizer_config's add_prefix_space (Llama); "off-for-spm": False with SentencePiece
    no_bos_for_49152: bool = False  # Llama's converter: a 49152-token vocabulary (Granite, SmolLM) adds no BOS


ARCHS: dict[str, Arch] = {}
for _names, _arch in (
    (
        ("LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM"),
        Arch("llama", _llama_entries, _extra_llama, permute_qk=True, space_prefix="config", no_bos_for_49152=True),
    ),
    (("Qwen2ForCausalLM",), Arch("qwen2")),
    (("Qwen3ForCausalLM",), Arch("qwen3")),
    (("Qwen2MoeForCausalLM",), Arch("qwen2moe", _qwen2moe_entries, tokenizer="bpe")),
    (("Qwen3MoeForCausalLM",), Arch("qwen3moe", _qwen2moe_entries, tokenizer="bpe")),
    (
        ("Gemma2ForCausalLM",),
        Arch("gemma2", _gemma2_entries, norm_shift=1.0, drop=("lm_head.weight",), tokenizer="spm", space_prefix="off-for-spm"),
    ),
    (("Gemma3ForCausalLM",), Arch("gemma3", _gemma3_entries, norm_shift=1.0, trim_vocab=True, space_prefix="off-for-spm")),
    (("Phi3ForCausalLM",), Arch("phi3", _phi3_entries, phi3_rope_factors, tokenizer="phi3")),
):
    for _n in _names:
        ARCHS[_n] = _arch


# config.json without "architectures" (transformers writes none for a model it loaded from a GGUF file)
MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
}


def supported() -> str:
    return ", ".join(ARCHS)


def arch_of(config: dict | None, label: str) -> tuple[str, Arch]:
    """The table row for a config.json, or an error listing what is supported."""
    if not config:
        raise SurgeonError(f"{label} has no config.json, which --format gguf needs", f"supported architectures: {supported()}")
    names = config.get("architectures") or []
    names = [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
    if not names and isinstance(config.get("model_type"), str) and config["model_type"] in MODEL_TYPES:
        names = [MODEL_TYPES[config["model_type"]]]
    for n in names:
        if n in ARCHS:
            return n, ARCHS[n]
    what = ", ".join(names) or f"model_type {config.get('model_type')!r}"
    raise SurgeonError(f"--format gguf does not support {label} ({what})", f"supported architectures: {supported()}")


# --------------------------------------------------------------------------------------------
# HF tensor names -> GGUF names

_SKIP = re.compile(r"(\.attention\.masked_bias|\.attention\.bias|\.rotary_emb\.inv_freq)$")
EXPERT = re.compile(r"^(?P<pre>.+\.experts)\.(?P<x>\d+)\.(?P<w>[A-Za-z0-9_]+)\.weight$")
FUSED_GATE_UP = re.compile(r"^(?P<pre>.+\.experts)\.gate_up_proj(\.weight)?$")
FUSED_DOWN = re.compile(r"^(?P<pre>.+\.experts)\.down_proj$")


def name_map(arch: Arch, h: HParams):
    import gguf

    return gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.gguf.upper()], h.block_count)


def skipped(hf_name: str, arch: Arch) -> bool:
    return bool(_SKIP.search(hf_name)) or hf_name in arch.drop
