"""The modules of multi-module models, as mergekit's ``modules:`` recipes name them.

A vision-language model is a text decoder, a vision tower and a projector between them; an
encoder-decoder is an encoder, a decoder and shared embeddings. mergekit names these modules per
architecture (``text_decoder``, ``vision_tower``, ``multi_modal_projector``; ``encoder``, ``decoder``,
``shared``) and a ``modules:`` recipe merges each from its own models or slices. Here a module is the
set of tensors under its name prefixes in the checkpoint (the longest matching prefix wins, so
``visual.merger.`` is the projector and the rest of ``visual.`` the vision tower), with layers numbered
within it (``model.layers.N``, ``visual.blocks.N``), or no layers (a projector: every tensor at t = 0).

The table follows the checkpoints transformers writes for each model type (``config.json``'s
``model_type``); a model type not in it but with tensors under ``language_model.`` is read as a
LLaVA-style model (``language_model.``, ``vision_tower.``/``vision_model.``, ``multi_modal_projector.``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ModuleSpec:
    name: str
    prefixes: tuple[str, ...]
    layered: bool = True  # its tensors are numbered by layer (slices restack them)
    layer_keys: tuple[str, ...] = ()  # config.json paths of its layer count ("text_config.num_hidden_layers")


_TEXT = ("text_config.num_hidden_layers", "num_hidden_layers")
_VISION = ("vision_config.num_hidden_layers",)
_PROJECTOR = ModuleSpec("multi_modal_projector", ("multi_modal_projector.",), layered=False)


def _llava(vision: str = "vision_tower", vision_prefix: str = "vision_tower.") -> tuple[ModuleSpec, ...]:
    return (
        ModuleSpec("text_decoder", ("language_model.",), layer_keys=_TEXT),
        ModuleSpec(vision, (vision_prefix,), layer_keys=_VISION),
        _PROJECTOR,
    )


def _qwen_vl(root: str, text: str, projector: tuple[str, ...]) -> tuple[ModuleSpec, ...]:
    return (
        ModuleSpec("text_decoder", (text, "lm_head."), layer_keys=_TEXT),
        ModuleSpec("vision_tower", (root,), layer_keys=("vision_config.depth",)),
        ModuleSpec("multi_modal_projector", projector, layered=False),
    )


TABLE: dict[str, tuple[ModuleSpec, ...]] = {
    "llava": _llava(),
    "llava_next": _llava(),
    "mistral3": _llava(),
    "gemma3": _llava(),
    "llama4": _llava("vision_model", "vision_model."),
    "qwen2_vl": _qwen_vl("visual.", "model.", ("visual.merger.",)),
    "qwen2_5_vl": _qwen_vl("visual.", "model.", ("visual.merger.",)),
    "qwen3_vl": _qwen_vl(
        "model.visual.", "model.language_model.", ("model.visual.merger.", "model.visual.deepstack_merger_list.")
    ),
    "qwen3_vl_moe": _qwen_vl(
        "model.visual.", "model.language_model.", ("model.visual.merger.", "model.visual.deepstack_merger_list.")
    ),
    "t5": (
        ModuleSpec("encoder", ("encoder.",), layer_keys=("num_layers",)),
        ModuleSpec("decoder", ("decoder.",), layer_keys=("num_decoder_layers",)),
        ModuleSpec("shared", ("shared.", "lm_head."), layered=False),
    ),
    "whisper": (
        ModuleSpec("encoder", ("model.encoder.",), layer_keys=("encoder_layers",)),
        ModuleSpec("decoder", ("model.decoder.", "proj_out."), layer_keys=("decoder_layers",)),
    ),
}


def module_specs(config: dict | None, names: Iterable[str]) -> tuple[ModuleSpec, ...] | None:
    """The modules of a checkpoint (by its config.json and tensor names), or None for a one-module model."""
    mt = (config or {}).get("model_type")
    if mt in TABLE:
        return TABLE[mt]
    names = list(names)
    if any(n.startswith("language_model.") for n in names):
        vision = "vision_model" if any(n.startswith("vision_model.") for n in names) else "vision_tower"
        return _llava(vision, f"{vision}.")
    return None


def assign(names: Iterable[str], specs: tuple[ModuleSpec, ...]) -> tuple[dict[str, list[str]], list[str]]:
    """({module: its tensor names, in checkpoint order}, the names no module claims)."""
    out: dict[str, list[str]] = {s.name: [] for s in specs}
    rest: list[str] = []
    for n in names:
        best, length = None, -1
        for s in specs:
            for p in s.prefixes:
                if n.startswith(p) and len(p) > length:
                    best, length = s.name, len(p)
        (out[best] if best is not None else rest).append(n)
    return out, rest


def config_get(config: dict | None, path: str):
    cur = config or {}
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def config_set(config: dict, path: str, value) -> None:
    """Set a dotted path in a config dict (copying the nested dicts on the way, so the input is untouched)."""
    head, _, rest = path.partition(".")
    if not rest:
        config[head] = value
        return
    sub = dict(config.get(head) or {})
    config_set(sub, rest, value)
    config[head] = sub
