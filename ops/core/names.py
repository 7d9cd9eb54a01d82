"""Tensor-name conventions: the one place that knows what a name says about a tensor.

Checkpoints carry no types beyond dtype and shape, so every command reads roles from names: which
2-D weights are linear layers (the default target of prune and quantize), which are embeddings or
the LM head (left alone, or aligned by vocabulary in a merge), which are MoE routers (left alone), which layer a tensor belongs to, and
which names may hold the same tensor as a tied embedding. Families import these; none keeps its own.
"""

from __future__ import annotations

import re

# 2-D weights that are not linear layers: embeddings, heads that tie to them, norms.
NOT_LINEAR = re.compile(
    r"(embed|wte\.|wpe\.|word_embeddings|position_embeddings|token_type_embeddings|lm_head|shared\.weight|"
    r"(^|\.)output\.weight$|norm|ln_f|ln_\d)",
    re.IGNORECASE,
)
# MoE routers (which expert a token goes to): tiny, sensitive, left alone by default by prune and quantize, as
# every peer does (llama.cpp keeps ffn_gate_inp in F32; llm-compressor ignores "re:.*mlp.gate$").
ROUTER = re.compile(
    r"((^|\.)(mlp|block_sparse_moe|moe|feed_forward)\.(gate|router)\.weight$|shared_expert_gate\.weight$|"
    r"(^|\.)router(\.(classifier|layer|linear))?\.weight$)"
)
# Vocabulary- or position-indexed tensors before the first layer (a merge aligns them by token).
EMBEDDING = re.compile(r"embed|(^|\.)(wte|wpe)\.|word_embeddings|position_embeddings|token_type_embeddings", re.IGNORECASE)
# The layer number in a name: model.layers.3.mlp..., encoder.layer.3..., transformer.h.3..., blocks.3...
LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?=\.|$)")
_ANY_INDEX = re.compile(r"\.(\d+)(?=\.)")
# config.json keys that hold the number of layers, in the order architectures use them.
NUM_LAYERS_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
# Where a tied LM head's weights live when config.json says tie_word_embeddings.
LM_HEAD = "lm_head.weight"
TIED_EMBEDDINGS = ("model.embed_tokens.weight", "transformer.wte.weight", "model.embed_in.weight")


def is_linear_weight(name: str) -> bool:
    """A name that reads as the weight of a linear layer (shape and dtype are checked by the caller)."""
    return name.endswith("weight") and not NOT_LINEAR.search(name) and not ROUTER.search(name)


def layer_span(name: str) -> tuple[int, int, int] | None:
    """(layer index, start, end) of the layer number in a tensor name, or None.

    Falls back to the first ``.N.`` in the name for layouts without a known layer word."""
    m = LAYER.search(name) or _ANY_INDEX.search(name)
    return (int(m.group(1)), m.start(1), m.end(1)) if m else None


def layer_index(name: str) -> int | None:
    span = layer_span(name)
    return span[0] if span else None


def with_layer(name: str, span: tuple[int, int, int], index: int) -> str:
    """``name`` with the layer number at ``span`` replaced by ``index``."""
    return name[: span[1]] + str(index) + name[span[2] :]


def module_of(weight_name: str) -> str | None:
    """``model.layers.0.mlp.up_proj`` for ``model.layers.0.mlp.up_proj.weight``; None for a non-weight."""
    return weight_name[: -len(".weight")] if weight_name.endswith(".weight") else None


def tied_head_source(names, config: dict | None, default_tied: bool = False) -> str | None:
    """The embedding an LM head ties to, when config.json (or ``default_tied``) says heads are tied."""
    if not (config or {}).get("tie_word_embeddings", default_tied):
        return None
    return next((e for e in TIED_EMBEDDINGS if e in names), None)


def parent_module(tensor_name: str) -> str:
    """The module that holds a tensor: its name without the last part (``model.norm`` for
    ``model.norm.weight``, ``...q_proj`` for ``...q_proj.bias``)."""
    return tensor_name.rsplit(".", 1)[0] if "." in tensor_name else tensor_name
