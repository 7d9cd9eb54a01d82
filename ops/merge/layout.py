"""The layout of a merge's output: which tensors it has, in which order, and what each is made of.

- ``models:``: the output has the tensors of the base model (else the first model), in its order; each
  merges the same-named tensor of every participant. Gradients are evaluated at t = layer / (layers - 1)
  (t = 1 for a single layer, 0 for tensors outside the layers), as mergekit does for its known
  architectures. Tensors the other models have beyond it are left out, with a warning.
- ``slices:``: layers are restacked: each slice contributes its layer range, merged position by position
  across its sources (t runs from 0 to 1 over the slice), renumbered consecutively. Tensors outside the
  layers come from the reference model (the base, else the first slice's first source): the embeddings
  merged as the first slice merges, everything else as the last slice does. config.json's layer count
  is updated. A multi-module model (``modules.py``) is refused: its slices belong under ``modules:``.
- ``modules:`` (a vision-language or encoder-decoder model): the reference model's tensors are split
  into its modules (``modules.py``) and each module is laid out from its own ``models:`` or ``slices:``
  as above, over its own tensors (layers counted within the module, its parameters between a slice's
  and the recipe's). A module the recipe does not name is copied from the reference model, with a
  warning (mergekit leaves its tensors out, which leaves a checkpoint transformers cannot load whole).

A tensor's layer is the number after ``layers.``/``layer.``/``h.``/``blocks.`` in its name (else its
first ``.N.``; ``ops.core.names.layer_span``). Each output tensor goes through ``JobBuilder.add``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelsurgeon.ops.core.names import EMBEDDING, NUM_LAYERS_KEYS, layer_span, with_layer
from modelsurgeon.recipes.base import did_you_mean
from modelsurgeon.recipes.merge import ModelInput, ModelRef, ModuleDef, SliceDef

from .jobs import Job, JobBuilder, Source
from .modules import assign, config_get, module_specs


@dataclass
class Layout:
    """What the layout decided besides the jobs."""

    config_model: int = 0  # supplies config.json (and the output's tensor list for models:)
    tokenizer_model: int = 0  # supplies the tokenizer files and the vocabulary order
    config_updates: dict[str, Any] = field(default_factory=dict)  # written over config.json ("a.b" sets a nested key)
    tokenizer: Any = None  # a built tokenizer (transformers), written instead of the tokenizer model's files
    chat_template: str | None = None  # resolved Jinja text


def lay_out(b: JobBuilder, warnings: list[str]) -> Layout:
    """Fill ``b.jobs`` for the recipe's layout; problems go to ``b.problems``."""
    if b.recipe.modules is not None:
        return _modules(b, warnings)
    return _slices(b, warnings) if b.recipe.slices is not None else _models(b, warnings)


def _models(b: JobBuilder, warnings: list[str]) -> Layout:
    r, models = b.recipe, b.models
    listed = list(r.models)
    layout = Layout(config_model=models.index_of(r.base_model if r.base_model is not None else listed[0].model))
    layout.tokenizer_model = tokenizer_model(b, layout.config_model)
    ref = layout.config_model
    names = list(models.ck(ref).names())
    layers = {n: models.num_layers(ref) for n in names}
    specs = module_specs(models.ck(ref).config, names)
    if specs is not None:  # a multi-module model: layers counted within each module, as mergekit does
        groups, _ = assign(names, specs)
        for spec in specs:
            count = _count_layers(groups[spec.name]) if spec.layered else None
            layers.update({n: count for n in groups[spec.name]})
    _models_part(b, listed, names, ref, layers, "models", warnings)
    return layout


def _models_part(
    b: JobBuilder,
    listed: list[ModelInput],
    names: list[str],
    ref: int,
    layers: dict[str, int | None],
    where: str,
    warnings: list[str],
    module: ModuleDef | None = None,
) -> None:
    """Every tensor of ``names`` (the reference model's) merged across ``listed`` (and the base), at
    t = layer / (``layers[name]`` - 1); a name whose layer count is None has no layers (t = 0)."""
    r, method, models = b.recipe, b.method, b.models
    base_in, others = split_base(b, listed, r.base_model, where, may_add=True)
    count_check(b, len(others), where)
    if method.base == "unused" and r.base_model is not None and not any(m.model.same_as(r.base_model) for m in listed):
        warnings.append(f"{method.name} does not merge base_model {r.base_model}; it supplies config.json and the tokenizer only")
    participants = [models.index_of(m.model) for m in ([base_in] if base_in is not None else []) + others]
    for name in names:
        n = layers.get(name)
        span = layer_span(name) if n is not None else None
        t = 0.0 if span is None else (span[0] / (n - 1) if n > 1 else 1.0)
        b.add(
            name, (ref, name), [(m, name) for m in participants], has_base=base_in is not None, t=t, inputs=others, module=module
        )
    if module is None:
        _note_extras(b, participants, set(names), ref, warnings)


def _slices(b: JobBuilder, warnings: list[str]) -> Layout:
    r, models = b.recipe, b.models
    layout = Layout(config_model=models.index_of(r.base_model if r.base_model is not None else r.slices[0].sources[0].model))
    layout.tokenizer_model = tokenizer_model(b, layout.config_model)
    ref_ck = models.ck(layout.config_model)
    specs = module_specs(ref_ck.config, ref_ck.names())
    if specs is not None:
        b.problems.add(
            f"{models[layout.config_model].label} is a multi-module model ({', '.join(s.name for s in specs)}) and slices: "
            "would restack their layers together; put the slices under their module with modules: (as mergekit asks)"
        )
        return layout
    origins = _slices_part(b, r.slices, list(ref_ck.names()), layout.config_model, "slices")
    if origins is None:
        return layout
    key = next((k for k in NUM_LAYERS_KEYS if isinstance((ref_ck.config or {}).get(k), int)), None)
    if key is not None:
        _set_layers(layout, ref_ck.config, key, origins)
    else:
        warnings.append("config.json names no layer count; it is copied unchanged")
    return layout


PER_LAYER_KEYS = ("layer_types",)  # config.json lists with one entry per layer, restacked with the layers


def _set_layers(layout: Layout, config: dict | None, key: str, origins: list[int]) -> None:
    """config.json's layer count at ``key`` (a dotted path), and its per-layer lists beside it, for output
    layers made from source layers ``origins``."""
    old = config_get(config, key)
    layout.config_updates[key] = len(origins)
    parent = key.rpartition(".")[0]
    for k in PER_LAYER_KEYS:
        path = f"{parent}.{k}" if parent else k
        values = config_get(config, path)
        if isinstance(values, list) and len(values) == old and all(i < old for i in origins):
            layout.config_updates[path] = [values[i] for i in origins]


def _slices_part(
    b: JobBuilder,
    slices: tuple[SliceDef, ...],
    names: list[str],
    ref: int,
    where: str,
    module: ModuleDef | None = None,
    module_names: dict[int, list[str]] | None = None,
) -> list[int] | None:
    """The layers of ``slices`` restacked, and the other tensors of ``names`` (the reference model's)
    merged as the first slice (embeddings) or the last (the rest); for each output layer the source layer
    it comes from (the first source's), or None after a problem. ``module_names``: within a module, each
    model's tensors of that module."""
    r, models = b.recipe, b.models
    plans = []
    for si, s in enumerate(slices):
        at = f"{where}[{si}]"
        base_in, others = split_base(b, list(s.sources), s.base_model or r.base_model, at, may_add=False)
        count_check(b, len(others), at)
        for src in s.sources:
            idx = models.index_of(src.model)
            n = models.num_layers(idx) if module_names is None else _count_layers(module_names[idx])
            if src.layer_range[1] > n:
                b.problems.add(f"{at}: layer_range {list(src.layer_range)} of {src.model} goes past its {n} layers")
        plans.append((s, base_in, others))
    if b.problems:
        return None
    outside = [n for n in names if layer_span(n) is None]
    _non_layer(b, ref, [n for n in outside if EMBEDDING.search(n)], plans[0], module)
    origins: list[int] = []
    for s, base_in, others in plans:
        length = s.sources[0].layer_range[1] - s.sources[0].layer_range[0]
        for i in range(length):
            _layer(b, s, base_in, others, i, len(origins), i / (length - 1) if length > 1 else 1.0, module, module_names)
            origins.append(s.sources[0].layer_range[0] + i)
    _non_layer(b, ref, [n for n in outside if not EMBEDDING.search(n)], plans[-1], module)
    return origins


def _count_layers(names: list[str]) -> int:
    found = [sp[0] for n in names if (sp := layer_span(n))]
    return max(found) + 1 if found else 0


def _modules(b: JobBuilder, warnings: list[str]) -> Layout:
    """Each module of a multi-module model from its own models or slices; unnamed modules copied."""
    r, models = b.recipe, b.models
    first = next(iter(r.modules.values()))
    lead = r.base_model or (first.models[0].model if first.models else first.slices[0].sources[0].model)
    layout = Layout(config_model=models.index_of(lead))
    layout.tokenizer_model = tokenizer_model(b, layout.config_model)
    ref = layout.config_model
    ref_ck = models.ck(ref)
    specs = module_specs(ref_ck.config, ref_ck.names())
    if specs is None:
        b.problems.add(
            f"{r.locate('modules')}: modules: is for multi-module models (vision-language, encoder-decoder) and "
            f"{models[ref].label} (model_type {(ref_ck.config or {}).get('model_type')}) is a one-module model; use models: or slices:"
        )
        return layout
    known = [s.name for s in specs]
    unknown = [name for name in r.modules if name not in known]
    for name in unknown:
        b.problems.add(
            f"{r.locate(f'modules.{name}')}: {models[ref].label} has no module {name!r}; its modules: {', '.join(known)}"
            + did_you_mean(name, known)
        )
    if unknown:
        return layout
    # every model's tensors, by module
    split = {i: assign(m.ck.names(), specs)[0] for i, m in enumerate(models)}
    groups, rest = assign(ref_ck.names(), specs)
    if rest:
        warnings.append(
            f"{len(rest)} tensor(s) of {models[ref].label} belong to none of its modules ({', '.join(known)}); "
            f"copied from it: {', '.join(rest[:3])}" + (" ..." if len(rest) > 3 else "")
        )
    for spec in specs:
        mod = r.modules.get(spec.name)
        names = groups[spec.name]
        if mod is None:
            if names:
                warnings.append(
                    f"the recipe merges no {spec.name} (modules: names {', '.join(r.modules)}); its {len(names)} tensor(s) "
                    f"are copied from {models[ref].label} (mergekit leaves them out)"
                )
            _copy(b, ref, names)
            continue
        where = f"modules.{spec.name}"
        if mod.models is not None:
            count = _count_layers(names) if spec.layered else None
            _models_part(b, list(mod.models), names, ref, dict.fromkeys(names, count), f"{where}.models", warnings, mod)
        else:
            if not spec.layered:
                b.problems.add(f"{r.locate(where)}: {spec.name} has no layers to slice; merge it with models:")
                continue
            module_names = {i: split[i][spec.name] for i in split}
            origins = _slices_part(b, mod.slices, names, ref, f"{where}.slices", mod, module_names)
            if origins is not None:
                for key in spec.layer_keys:
                    if isinstance(config_get(ref_ck.config, key), int):
                        _set_layers(layout, ref_ck.config, key, origins)
    _copy(b, ref, rest)
    return layout


def _copy(b: JobBuilder, ref: int, names: list[str]) -> None:
    """Tensors taken as they are from the reference model (cast to the output dtype when float)."""
    for name in names:
        info = b.models.ck(ref).info(name)
        dtype = b.out_dtype(info.torch_dtype) if info.is_float else info.torch_dtype
        b.jobs.append(Job(name, tuple(info.shape), dtype, None, [Source(ref, name)], copy=True))


def _members(b: JobBuilder, base_in: ModelInput | None, others: list[ModelInput]) -> list[tuple[int, ModelInput]]:
    return [(b.models.index_of(mi.model), mi) for mi in ([base_in] if base_in is not None else []) + others]


def _non_layer(b: JobBuilder, ref: int, names: list[str], plan, module: ModuleDef | None = None) -> None:
    """Tensors outside the layers, named as in the reference model, merged as ``plan``'s slice merges."""
    s, base_in, others = plan
    members = _members(b, base_in, others)
    for name in names:
        b.add(
            name,
            (ref, name),
            [(m, name) for m, _ in members],
            has_base=base_in is not None,
            t=0.0,
            inputs=others,
            slice_=s,
            module=module,
        )


def _layer(
    b: JobBuilder,
    s: SliceDef,
    base_in,
    others,
    offset: int,
    out_layer: int,
    t: float,
    module: ModuleDef | None = None,
    module_names: dict[int, list[str]] | None = None,
) -> None:
    """Output layer ``out_layer``: layer ``start + offset`` of every source of slice ``s`` (of ``module``'s
    tensors, when it is one module's)."""
    members = _members(b, base_in, others)
    lead_idx, lead_in = members[0]
    lead_layer = lead_in.layer_range[0] + offset
    lead_names = b.models.ck(lead_idx).names() if module_names is None else module_names[lead_idx]
    names = [(n, sp) for n in lead_names if (sp := layer_span(n)) and sp[0] == lead_layer]
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
            module=module,
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
