"""The layout of a merge's output: which tensors it has, in which order, and what each is made of.

- ``models:``: the output has the tensors of the base model (else the first model), in its order; each
  merges the same-named tensor of every participant. Gradients are evaluated at t = layer / (layers - 1)
  (t = 1 for a single layer, 0 for tensors outside the layers), as mergekit does for its known
  architectures. Tensors the other models have beyond it are left out, with a warning.
- ``slices:``: layers are restacked: each slice contributes its layer range, merged position by position
  across its sources (t runs from 0 to 1 over the slice), renumbered consecutively. Tensors outside the
  layers come from the reference model (the base, else the first slice's first source): the embeddings
  merged as the first slice merges, everything else as the last slice does. config.json's layer count
  is updated.

A tensor's layer is the number after ``layers.``/``layer.``/``h.``/``blocks.`` in its name (else its
first ``.N.``; ``ops.core.names.layer_span``). Each output tensor goes through ``JobBuilder.add``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelsurgeon.ops.core.names import EMBEDDING, NUM_LAYERS_KEYS, layer_span, with_layer
from modelsurgeon.recipes.merge import ModelInput, ModelRef, SliceDef

from .jobs import JobBuilder


@dataclass
class Layout:
    """What the layout decided besides the jobs."""

    config_model: int = 0  # supplies config.json (and the output's tensor list for models:)
    tokenizer_model: int = 0  # supplies the tokenizer files and the vocabulary order
    config_updates: dict[str, Any] = field(default_factory=dict)  # written over config.json
    tokenizer: Any = None  # a built tokenizer (transformers), written instead of the tokenizer model's files
    chat_template: str | None = None  # resolved Jinja text


def lay_out(b: JobBuilder, warnings: list[str]) -> Layout:
    """Fill ``b.jobs`` for the recipe's layout; problems go to ``b.problems``."""
    return _slices(b, warnings) if b.recipe.slices is not None else _models(b, warnings)


def _models(b: JobBuilder, warnings: list[str]) -> Layout:
    r, method, models = b.recipe, b.method, b.models
    listed = list(r.models)
    base_in, others = split_base(b, listed, r.base_model, "models", may_add=True)
    count_check(b, len(others), "models")
    if method.base == "unused" and r.base_model is not None and not any(m.model.same_as(r.base_model) for m in listed):
        warnings.append(f"{method.name} does not merge base_model {r.base_model}; it supplies config.json and the tokenizer only")
    layout = Layout(config_model=models.index_of(r.base_model if r.base_model is not None else listed[0].model))
    layout.tokenizer_model = tokenizer_model(b, layout.config_model)
    ref = layout.config_model
    participants = [models.index_of(m.model) for m in ([base_in] if base_in is not None else []) + others]
    layers = models.num_layers(ref)
    for name in models.ck(ref).names():
        span = layer_span(name)
        t = 0.0 if span is None else (span[0] / (layers - 1) if layers > 1 else 1.0)
        b.add(name, (ref, name), [(m, name) for m in participants], has_base=base_in is not None, t=t, inputs=others)
    _note_extras(b, participants, set(models.ck(ref).names()), ref, warnings)
    return layout


def _slices(b: JobBuilder, warnings: list[str]) -> Layout:
    r, models = b.recipe, b.models
    layout = Layout(config_model=models.index_of(r.base_model if r.base_model is not None else r.slices[0].sources[0].model))
    layout.tokenizer_model = tokenizer_model(b, layout.config_model)
    plans = []
    for si, s in enumerate(r.slices):
        where = f"slices[{si}]"
        base_in, others = split_base(b, list(s.sources), s.base_model or r.base_model, where, may_add=False)
        count_check(b, len(others), where)
        for src in s.sources:
            n = models.num_layers(models.index_of(src.model))
            if src.layer_range[1] > n:
                b.problems.add(f"{where}: layer_range {list(src.layer_range)} of {src.model} goes past its {n} layers")
        plans.append((s, base_in, others))
    if b.problems:
        return layout
    ref_ck = models.ck(layout.config_model)
    outside = [n for n in ref_ck.names() if layer_span(n) is None]
    _non_layer(b, layout.config_model, [n for n in outside if EMBEDDING.search(n)], plans[0])
    out_layer = 0
    for s, base_in, others in plans:
        length = s.sources[0].layer_range[1] - s.sources[0].layer_range[0]
        for i in range(length):
            _layer(b, s, base_in, others, i, out_layer, i / (length - 1) if length > 1 else 1.0)
            out_layer += 1
    _non_layer(b, layout.config_model, [n for n in outside if not EMBEDDING.search(n)], plans[-1])
    key = next((k for k in NUM_LAYERS_KEYS if isinstance((ref_ck.config or {}).get(k), int)), None)
    if key is not None:
        layout.config_updates[key] = out_layer
    else:
        warnings.append("config.json names no layer count; it is copied unchanged")
    return layout


def _members(b: JobBuilder, base_in: ModelInput | None, others: list[ModelInput]) -> list[tuple[int, ModelInput]]:
    return [(b.models.index_of(mi.model), mi) for mi in ([base_in] if base_in is not None else []) + others]


def _non_layer(b: JobBuilder, ref: int, names: list[str], plan) -> None:
    """Tensors outside the layers, named as in the reference model, merged as ``plan``'s slice merges."""
    s, base_in, others = plan
    members = _members(b, base_in, others)
    for name in names:
        b.add(name, (ref, name), [(m, name) for m, _ in members], has_base=base_in is not None, t=0.0, inputs=others, slice_=s)


def _layer(b: JobBuilder, s: SliceDef, base_in, others, offset: int, out_layer: int, t: float) -> None:
    """Output layer ``out_layer``: layer ``start + offset`` of every source of slice ``s``."""
    members = _members(b, base_in, others)
    lead_idx, lead_in = members[0]
    lead_layer = lead_in.layer_range[0] + offset
    names = [(n, sp) for n in b.models.ck(lead_idx).names() if (sp := layer_span(n)) and sp[0] == lead_layer]
    if not names:
        b.problems.add(f"{lead_in.model} has no tensors for layer {lead_layer}")
        return
    for name, span in names:
        wanted = [(m, with_layer(name, span, mi.layer_range[0] + offset)) for m, mi in members]
        b.add(
            with_layer(name, span, out_layer),
            (lead_idx, name),
            wanted,
            has_base=base_in is not None,
            t=t,
            inputs=others,
            slice_=s,
        )


def split_base(b: JobBuilder, inputs: list[ModelInput], base_ref: ModelRef | None, where: str, may_add: bool):
    """(base input or None, the other inputs) for this method."""
    method = b.method
    if method.base == "unused":
        return None, list(inputs)
    if method.base == "joins":  # the base, when given, is one more model (mergekit's karcher)
        if may_add and base_ref is not None and not any(m.model.same_as(base_ref) for m in inputs):
            return None, [ModelInput(base_ref), *inputs]
        return None, list(inputs)
    pos = next((k for k, m in enumerate(inputs) if m.model.same_as(base_ref)), None)
    if base_ref is None:
        if method.base == "required":
            b.problems.add(f"{method.name} needs a base model: add base_model: to the recipe (or --base)")
        return None, list(inputs)
    others = [m for k, m in enumerate(inputs) if k != pos]
    if pos is not None:
        return inputs[pos], others
    if not may_add:
        b.problems.add(f"{where}: the base model {base_ref} is not among the sources; add it with a layer_range")
        return None, others
    return ModelInput(base_ref), others


def count_check(b: JobBuilder, n_others: int, where: str) -> None:
    lo, hi = b.method.min_models, b.method.max_models
    if n_others < lo or (hi is not None and n_others > hi):
        want = f"exactly {lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
        besides = " besides the base" if b.method.base not in ("unused", "joins") else ""
        b.problems.add(f"{where}: {b.method.name} merges {want} model(s){besides}, got {n_others}")


def tokenizer_model(b: JobBuilder, config_model: int) -> int:
    """The model whose tokenizer (and vocabulary order) the output keeps: tokenizer_source, else the config's."""
    tok = b.recipe.tokenizer_source
    if tok is None or tok in ("base", "union"):
        if tok == "base" and b.recipe.base_model is None:
            b.problems.add("tokenizer_source: base needs a base_model")  # (union starts from the first model)
        return config_model
    ref = ModelRef.parse(tok)
    idx = next((i for i, m in enumerate(b.models) if m.ref.same_as(ref) or m.ref.model == tok), None)
    if idx is None:
        b.problems.add(
            f"tokenizer_source {tok} is not one of the recipe's models; use base or one of: {', '.join(m.label for m in b.models)}"
        )
        return config_model
    return idx


def _note_extras(b: JobBuilder, participants: list[int], out_names: set[str], config_model: int, warnings: list[str]) -> None:
    cfg_label = b.models[config_model].label
    for m in participants:
        extra = [n for n in b.models.ck(m).names() if n not in out_names]
        if extra:
            warnings.append(
                f"{b.models[m].label} has {len(extra)} tensor(s) that {cfg_label} lacks; the output follows {cfg_label} and leaves them out: "
                + ", ".join(extra[:3])
                + (" ..." if len(extra) > 3 else "")
            )
