"""The merge engine: plan every output tensor and check everything, then stream tensor by tensor.

    plan = plan_merge(recipe, output="out/", seed=0)      # opens headers only; PlanError lists all problems
    result = run_merge(plan)                              # reads, merges and writes one tensor at a time

Planning reads no tensor data: it resolves and opens every model (safetensors headers, configs, LoRA
adapters), lays out the output (``models:``: the base's tensors, or the first model's; ``slices:``:
layers restacked), finds each output tensor in each input (a tied ``lm_head`` falls back to the
embedding), checks shapes, evaluates every parameter for every tensor (gradients across layers, filter
conditions, mergekit's precedence) and checks its range, and creates the output folder object so an
existing output fails before any work. Every problem found is reported at once.

Execution reads the inputs' versions of one tensor (on a thread, one tensor ahead), merges them in
float32 on the chosen device, casts to the output dtype and hands the result to the sharded writer,
which appends it to the current shard. Peak memory is a few times the inputs' versions of the largest
tensor, whatever the model size.

A tensor's layer is the number after ``layers.``/``layer.``/``h.``/``blocks.`` in its name (else its
first ``.N.``); gradients are evaluated at t = layer / (layers - 1) (t = 1 for a single layer, 0 for
tensors outside the layers), as mergekit does for its known architectures.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from modelsurgeon.ops.core.errors import PlanError, SurgeonError
from modelsurgeon.ops.core.names import EMBEDDING, NUM_LAYERS_KEYS, TIED_EMBEDDINGS, layer_span, with_layer
from modelsurgeon.ops.core.streaming import prefetched
from modelsurgeon.ops.io.checkpoint import TOKENIZER_FILES, open_checkpoint
from modelsurgeon.ops.io.output import OutputDir
from modelsurgeon.ops.io.writer import TensorSpec
from modelsurgeon.recipes.merge import MergeRecipe, ModelInput, ModelRef, SliceDef, evaluate

from . import sparsify
from .methods import MergeInputs, MergeMethod, Param, all_param_names, get_method

_MISSING = object()


def torch_dtype(name: str | None) -> torch.dtype | None:
    return None if name is None else getattr(torch, name)


def tensor_seed(seed: int, tensor: str, model: int, block: int = 0) -> int:
    """A seed that depends only on (--seed, tensor name, model position, block of draws): independent of
    the order tensors are processed in and of the device the math runs on."""
    h = hashlib.sha256(f"{seed}\0{tensor}\0{model}\0{block}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


# --------------------------------------------------------------------------------------------
# the plan


@dataclass
class Source:
    model: int  # index into MergePlan.models
    name: str  # tensor name in that model


@dataclass
class Job:
    """One output tensor: where its versions come from and the parameters they merge with."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    base: Source | None
    inputs: list[Source]
    params: dict[str, Any] = field(default_factory=dict)
    model_params: list[dict[str, Any]] = field(default_factory=list)
    copy: bool = False  # a non-float tensor taken as is from inputs[0]
    row_maps: list[torch.Tensor] | None = None  # vocabulary alignment, for [base] + inputs

    @property
    def sources(self) -> list[Source]:
        return ([self.base] if self.base is not None else []) + self.inputs


@dataclass
class OpenModel:
    ref: ModelRef
    ck: Any  # Checkpoint or LoraCheckpoint

    @property
    def label(self) -> str:
        return str(self.ref)


@dataclass
class MergePlan:
    recipe: MergeRecipe
    method: MergeMethod
    models: list[OpenModel]
    jobs: list[Job]
    out: OutputDir | None
    config_model: int
    tokenizer_model: int
    seed: int
    device: torch.device
    max_shard_size: int
    compute_dtype: torch.dtype | None = None
    warnings: list[str] = field(default_factory=list)
    config_updates: dict[str, Any] = field(default_factory=dict)

    def specs(self) -> list[TensorSpec]:
        return [TensorSpec(j.name, j.shape, j.dtype) for j in self.jobs]

    @property
    def output_bytes(self) -> int:
        return sum(s.nbytes for s in self.specs())

    def input_bytes(self, job: Job) -> int:
        return sum(self.models[s.model].ck.info(s.name).nbytes for s in job.sources)

    def peak_estimate(self) -> int:
        """Rough peak memory in bytes above the interpreter: read-ahead inputs (at most 1.5x the largest
        tensor's) plus the largest tensor's workspace (the output, and one byte per entry per model for
        stored random masks when streaming; float32 copies otherwise)."""
        inputs = work = 0
        for j in self.jobs:
            numel = 1
            for d in j.shape:
                numel *= d
            inputs = max(inputs, self.input_bytes(j))
            out = numel * torch.empty((), dtype=j.dtype).element_size()
            if j.copy:
                w = out
            elif self.method.streams and j.row_maps is None:
                w = out + numel * len(j.inputs)
            else:
                w = out + numel * 4 * (len(j.sources) + 3)
            work = max(work, w)
        return int(1.5 * inputs + work)

    def close(self) -> None:
        for m in self.models:
            m.ck.close()

    def summary(self) -> dict:
        merged = sum(1 for j in self.jobs if not j.copy)
        base = self.recipe.base_model
        return {
            "method": self.method.name,
            "base": str(base) if base is not None else None,
            "models": [m.label for m in self.models],
            "tensors": len(self.jobs),
            "merged_tensors": merged,
            "copied_tensors": len(self.jobs) - merged,
            "output_bytes": self.output_bytes,
            "peak_memory_estimate": self.peak_estimate(),
            "dtypes": _dtype_counts(self.jobs),
            "seed": self.seed,
            "device": str(self.device),
            "config_from": self.models[self.config_model].label,
            "tokenizer_from": self.models[self.tokenizer_model].label,
            "warnings": list(self.warnings),
        }


def _dtype_counts(jobs: list[Job]) -> dict[str, int]:
    from modelsurgeon.ops.io.checkpoint import torch_dtype_to_st

    out: dict[str, int] = {}
    for j in jobs:
        k = torch_dtype_to_st(j.dtype)
        n = 1
        for d in j.shape:
            n *= d
        out[k] = out.get(k, 0) + n
    return out


class _Problems:
    """Problems keyed by message, so one mistake repeated over 300 tensors is one line."""

    def __init__(self):
        self._by_msg: dict[str, list[str]] = {}

    def add(self, msg: str, tensor: str | None = None) -> None:
        lst = self._by_msg.setdefault(msg, [])
        if tensor is not None:
            lst.append(tensor)

    def __bool__(self) -> bool:
        return bool(self._by_msg)

    def lines(self) -> list[str]:
        out = []
        for msg, tensors in self._by_msg.items():
            if len(tensors) == 1:
                out.append(f"{tensors[0]}: {msg}")
            elif tensors:
                out.append(f"{msg} (in {len(tensors)} tensors, e.g. {tensors[0]})")
            else:
                out.append(msg)
        return out


def open_model(ref: ModelRef):
    if ref.lora:
        from .lora import open_with_adapter

        return open_with_adapter(ref.model, ref.lora)
    return open_checkpoint(ref.model)


def plan_merge(
    recipe: MergeRecipe,
    *,
    output: str | None,
    force: bool = False,
    seed: int = 0,
    device: torch.device | str = "cpu",
    max_shard_size: int = 5 * 10**9,
    opener: Callable[[ModelRef], Any] = open_model,
) -> MergePlan:
    """Check everything that can be checked before reading a tensor; raise PlanError listing all problems."""
    method = get_method(recipe.merge_method)
    out = OutputDir(output, force) if output is not None else None
    problems = _Problems()
    warnings: list[str] = []

    _check_param_names(recipe, method, problems, warnings)
    # --- open every model (headers only)
    refs = recipe.referenced_models()
    models: list[OpenModel] = []
    failed = False
    for ref in refs:
        try:
            models.append(OpenModel(ref, opener(ref)))
        except PlanError as e:
            failed = True
            for p in e.problems:
                problems.add(p)
        except SurgeonError as e:
            failed = True
            problems.add(f"{ref}: {e}")
    if failed:  # the layout cannot be checked without every model
        for m in models:
            m.ck.close()
        raise PlanError(problems.lines(), "the merge")

    def index_of(ref: ModelRef) -> int:
        return next(i for i, m in enumerate(models) if m.ref.same_as(ref))

    try:
        builder = _Builder(recipe, method, models, index_of, problems, warnings)
        if recipe.slices is not None:
            builder.build_slices()
        else:
            builder.build_models()
        builder.align_vocab()
        if problems:
            raise PlanError(problems.lines(), "the merge")
        plan = MergePlan(
            recipe=recipe,
            method=method,
            models=models,
            jobs=builder.jobs,
            out=out,
            config_model=builder.config_model,
            tokenizer_model=builder.tokenizer_model,
            seed=seed,
            device=torch.device(device),
            max_shard_size=max_shard_size,
            compute_dtype=torch_dtype(recipe.dtype),
            warnings=warnings,
            config_updates=builder.config_updates,
        )
    except BaseException:
        for m in models:
            m.ck.close()
        raise
    return plan


def _check_param_names(recipe: MergeRecipe, method: MergeMethod, problems: _Problems, warnings: list[str]) -> None:
    known_global = {p.name for p in method.params}
    known_model = {p.name for p in method.model_params}
    everywhere = all_param_names()
    takes = ", ".join(sorted(known_global | known_model)) or "no parameters"

    def check(params, path: str, model_level: bool) -> None:
        for name in params:
            where = recipe.locate(f"{path}.{name}")
            if name in known_global | known_model:
                if model_level and name in known_global and name not in known_model:
                    warnings.append(
                        f"{where}: {name} is a global parameter of {method.name}; set per model it is ignored (as in mergekit): move it to parameters:"
                    )
                continue
            if name in everywhere:
                warnings.append(f"{where}: {method.name} does not use {name}; ignored")
            else:
                from modelsurgeon.recipes.merge import did_you_mean

                problems.add(
                    f"{where}: unknown parameter {name!r}; {method.name} takes {takes}"
                    + did_you_mean(name, known_global | known_model)
                )

    check(recipe.parameters, "parameters", False)
    for i, m in enumerate(recipe.models or ()):
        check(m.parameters, f"models[{i}].parameters", True)
    for i, s in enumerate(recipe.slices or ()):
        check(s.parameters, f"slices[{i}].parameters", False)
        for j, src in enumerate(s.sources):
            check(src.parameters, f"slices[{i}].sources[{j}].parameters", True)


def _coerce(p: Param, v):
    """(value, problem) for one evaluated parameter."""
    if p.kind == "bool":
        if isinstance(v, bool):
            return v, None
        if isinstance(v, (int, float)) and v in (0, 1):
            return bool(v), None
        return None, f"must be true or false, got {v!r}"
    if p.kind == "optional_float" and v is None:
        return None, None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None, f"must be a number, got {v!r}"
    v = float(v)
    if p.check is not None:
        bad = p.check(v)
        if bad:
            return None, bad
    return v, None


class _Builder:
    def __init__(self, recipe, method, models, index_of, problems: _Problems, warnings):
        self.recipe: MergeRecipe = recipe
        self.method: MergeMethod = method
        self.models: list[OpenModel] = models
        self.index_of = index_of
        self.problems = problems
        self.warnings = warnings
        self.jobs: list[Job] = []
        self.config_updates: dict[str, Any] = {}
        self.config_model = 0
        self.tokenizer_model = 0
        self._vocab_tensors: set[str] = set()
        self._paths: dict[int, str] = {}  # id(ModelInput or SliceDef) -> where it sits in the recipe
        for i, m in enumerate(recipe.models or ()):
            self._paths[id(m)] = f"models[{i}].parameters"
        for i, sl in enumerate(recipe.slices or ()):
            self._paths[id(sl)] = f"slices[{i}].parameters"
            for j, src in enumerate(sl.sources):
                self._paths[id(src)] = f"slices[{i}].sources[{j}].parameters"

    # --- helpers
    def ck(self, i: int):
        return self.models[i].ck

    def find(self, i: int, name: str) -> str | None:
        """The tensor in model i that plays ``name`` (a tied head falls back to the embedding)."""
        ck = self.ck(i)
        if name in ck:
            return name
        alias = ck.tied_aliases().get(name) if hasattr(ck, "tied_aliases") else None
        if alias is None and name == "lm_head.weight" and (ck.config or {}).get("tie_word_embeddings", True):
            for emb in TIED_EMBEDDINGS:
                if emb in ck:
                    alias = emb
                    break
        return alias

    def num_layers(self, i: int) -> int:
        cfg = self.ck(i).config or {}
        for key in NUM_LAYERS_KEYS:
            if isinstance(cfg.get(key), int):
                return cfg[key]
        idx = [s[0] for n in self.ck(i).names() if (s := layer_span(n))]
        return max(idx) + 1 if idx else 0

    def _where(self, path: str, name: str) -> str:
        if self.recipe.source == "flags":
            flag = {"weight": "--weight", "density": "--density", "t": "--t"}.get(name, f"--param {name}")
            return f"{flag}: "
        return f"{self.recipe.locate(f'{path}.{name}')}: "

    def param_value(self, p: Param, tensor: str, t: float, levels: list, who: str = ""):
        """Evaluate a parameter through the precedence levels (params, path); None: not given, no default."""
        for params, path in levels:
            if params and p.name in params:
                v = evaluate(params[p.name], tensor, t)
                if v is not None:
                    val, bad = _coerce(p, v)
                    if bad:
                        self.problems.add(f"{self._where(path, p.name)}{p.name} {bad}{who}", tensor)
                        return _MISSING
                    return val
        if p.required:
            return None
        return p.default

    def evaluate_params(self, job: Job, t: float, slice_: SliceDef | None, inputs: list[ModelInput]) -> None:
        top = [
            (slice_.parameters, self._paths.get(id(slice_), "slices")) if slice_ else (None, ""),
            (self.recipe.parameters, "parameters"),
        ]
        job.params = {}
        for p in self.method.params:
            v = self.param_value(p, job.name, t, top)
            if v is None:
                hint = "--t" if p.name == "t" else f"--param {p.name}=..."
                where = hint if self.recipe.source == "flags" else "parameters:"
                self.problems.add(f"{self.method.name} needs the parameter {p.name} (set it with {where})")
            job.params[p.name] = v
        job.model_params = []
        for mi in inputs:
            mp = {}
            for p in self.method.model_params:
                v = self.param_value(
                    p, job.name, t, [(mi.parameters, self._paths.get(id(mi), "models"))] + top, f" for {mi.model}"
                )
                if v is None and p.required:
                    self.problems.add(
                        f"{p.name} is required for every model and {mi.model} has none (set it under its parameters:, or under parameters: for all)"
                    )
                mp[p.name] = v
            job.model_params.append(mp)
        if (
            self.method.validate
            and not any(v is None or v is _MISSING for v in job.params.values())
            and not any(
                v is _MISSING or (v is None and self.method.param(k).required) for mp in job.model_params for k, v in mp.items()
            )
        ):
            for msg in self.method.validate(job.params, job.model_params, [str(mi.model) for mi in inputs]):
                self.problems.add(msg, job.name)

    def out_dtype(self, src: torch.dtype, is_float: bool) -> torch.dtype:
        if not is_float:
            return src
        return torch_dtype(self.recipe.out_dtype or self.recipe.dtype) or src

    def count_check(self, n_others: int, where: str) -> None:
        lo, hi = self.method.min_models, self.method.max_models
        if n_others < lo or (hi is not None and n_others > hi):
            want = f"exactly {lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
            besides = " besides the base" if self.method.base != "unused" else ""
            self.problems.add(f"{where}: {self.method.name} merges {want} model(s){besides}, got {n_others}")

    def split_base(self, inputs: list[ModelInput], base_ref: ModelRef | None, where: str, may_add: bool):
        """(base input or None, the other inputs) for this method."""
        if self.method.base == "unused":
            return None, list(inputs)
        pos = next((k for k, m in enumerate(inputs) if m.model.same_as(base_ref)), None)
        if base_ref is None:
            if self.method.base == "required":
                self.problems.add(f"{self.method.name} needs a base model: add base_model: to the recipe (or --base)")
            return None, list(inputs)
        others = [m for k, m in enumerate(inputs) if k != pos]
        if pos is not None:
            return inputs[pos], others
        if not may_add:
            self.problems.add(f"{where}: the base model {base_ref} is not among the sources; add it with a layer_range")
            return None, others
        return ModelInput(base_ref), others

    def check_tensor(self, job: Job) -> None:
        """Every source has the tensor, with the job's shape (vocabulary tensors are checked later)."""
        shapes = {}
        for s in job.sources:
            shapes[s.model] = tuple(self.ck(s.model).info(s.name).shape)
        ref_shape = job.shape
        if all(sh == ref_shape for sh in shapes.values()):
            return
        if self._vocab_like(job, shapes):
            self._vocab_tensors.add(job.name)
            return
        for m, sh in shapes.items():
            if sh != ref_shape:
                first = self.models[job.sources[0].model].label
                self.problems.add(f"{self.models[m].label} has shape {list(sh)} but {first} has {list(ref_shape)}", job.name)

    def _vocab_like(self, job: Job, shapes: dict[int, tuple]) -> bool:
        rest = {sh[1:] for sh in shapes.values()}
        if len(rest) != 1 or not next(iter(shapes.values())):
            return False
        for m, sh in shapes.items():
            vs = (self.ck(m).config or {}).get("vocab_size")
            if not isinstance(vs, int) or sh[0] != vs:
                return False
        return True

    def resolve_sources(self, name: str, members: list[tuple[int, str]]) -> list[Source] | None:
        out, ok = [], True
        for m, want in members:
            got = self.find(m, want)
            if got is None:
                self.problems.add(f"{self.models[m].label} has no tensor {want}", name)
                ok = False
            else:
                out.append(Source(m, got))
        return out if ok else None

    # --- models:
    def build_models(self) -> None:
        r = self.recipe
        listed = list(r.models)
        base_in, others = self.split_base(listed, r.base_model, "models", may_add=True)
        self.count_check(len(others), "models")
        if self.method.base == "unused" and r.base_model is not None and not any(m.model.same_as(r.base_model) for m in listed):
            self.warnings.append(
                f"{self.method.name} does not merge base_model {r.base_model}; it supplies config.json and the tokenizer only"
            )
        cfg_ref = r.base_model if r.base_model is not None else listed[0].model
        self.config_model = self.index_of(cfg_ref)
        self._set_tokenizer_model()
        ref = self.config_model
        ref_ck = self.ck(ref)
        base_idx = self.index_of(base_in.model) if base_in is not None else None
        other_idx = [self.index_of(m.model) for m in others]
        layers = self.num_layers(ref)
        participants = ([base_idx] if base_idx is not None else []) + other_idx
        for name in ref_ck.names():
            info = ref_ck.info(name)
            if not info.is_float:
                self.jobs.append(Job(name, tuple(info.shape), info.torch_dtype, None, [Source(ref, name)], copy=True))
                continue
            srcs = self.resolve_sources(name, [(m, name) for m in participants])
            if srcs is None:
                continue
            first = self.ck(srcs[0].model).info(srcs[0].name)
            job = Job(
                name,
                tuple(first.shape),
                self.out_dtype(first.torch_dtype, True),
                srcs[0] if base_idx is not None else None,
                srcs[1:] if base_idx is not None else srcs,
            )
            self.check_tensor(job)
            span = layer_span(name)
            t = 0.0 if span is None else (span[0] / (layers - 1) if layers > 1 else 1.0)
            self.evaluate_params(job, t, None, others)
            self.jobs.append(job)
        self._note_extras(participants, {n for n in ref_ck.names()})

    def _note_extras(self, participants: list[int], out_names: set[str]) -> None:
        for m in participants:
            extra = [n for n in self.ck(m).names() if n not in out_names]
            if extra:
                cfg_label = self.models[self.config_model].label
                self.warnings.append(
                    f"{self.models[m].label} has {len(extra)} tensor(s) that {cfg_label} lacks; the output follows {cfg_label} and leaves them out: "
                    + ", ".join(extra[:3])
                    + (" ..." if len(extra) > 3 else "")
                )

    def _set_tokenizer_model(self) -> None:
        tok = self.recipe.tokenizer_source
        if tok is None or tok == "base":
            if tok == "base" and self.recipe.base_model is None:
                self.problems.add("tokenizer_source: base needs a base_model")
            self.tokenizer_model = self.config_model
            return
        ref = ModelRef.parse(tok)
        idx = next((i for i, m in enumerate(self.models) if m.ref.same_as(ref) or m.ref.model == tok), None)
        if idx is None:
            self.problems.add(
                f"tokenizer_source {tok} is not one of the recipe's models; use base or one of: {', '.join(m.label for m in self.models)}"
            )
            self.tokenizer_model = self.config_model
        else:
            self.tokenizer_model = idx

    # --- slices:
    def build_slices(self) -> None:
        r = self.recipe
        first = r.slices[0]
        cfg_ref = r.base_model if r.base_model is not None else first.sources[0].model
        self.config_model = self.index_of(cfg_ref)
        self._set_tokenizer_model()
        plans = []
        for si, s in enumerate(r.slices):
            where = f"slices[{si}]"
            base_in, others = self.split_base(list(s.sources), s.base_model or r.base_model, where, may_add=False)
            self.count_check(len(others), where)
            for src in s.sources:
                m = self.index_of(src.model)
                n = self.num_layers(m)
                if src.layer_range[1] > n:
                    self.problems.add(f"{where}: layer_range {list(src.layer_range)} of {src.model} goes past its {n} layers")
            plans.append((s, base_in, others))
        if self.problems:
            return
        ref_ck = self.ck(self.config_model)
        pre = [n for n in ref_ck.names() if layer_span(n) is None and EMBEDDING.search(n)]
        post = [n for n in ref_ck.names() if layer_span(n) is None and not EMBEDDING.search(n)]
        self._non_layer(pre, plans[0])
        out_layer = 0
        for s, base_in, others in plans:
            length = s.sources[0].layer_range[1] - s.sources[0].layer_range[0]
            for i in range(length):
                t = i / (length - 1) if length > 1 else 1.0
                self._layer(s, base_in, others, i, out_layer, t)
                out_layer += 1
        self._non_layer(post, plans[-1])
        key = next((k for k in NUM_LAYERS_KEYS if isinstance((ref_ck.config or {}).get(k), int)), None)
        if key is not None:
            self.config_updates[key] = out_layer
        else:
            self.warnings.append("config.json names no layer count; it is copied unchanged")

    def _inputs_for(self, base_in, others):
        base_idx = self.index_of(base_in.model) if base_in is not None else None
        return base_idx, [self.index_of(m.model) for m in others]

    def _non_layer(self, names: list[str], plan) -> None:
        s, base_in, others = plan
        base_idx, other_idx = self._inputs_for(base_in, others)
        participants = ([base_idx] if base_idx is not None else []) + other_idx
        for name in names:
            info = self.ck(self.config_model).info(name)
            if not info.is_float:
                self.jobs.append(
                    Job(name, tuple(info.shape), info.torch_dtype, None, [Source(self.config_model, name)], copy=True)
                )
                continue
            srcs = self.resolve_sources(name, [(m, name) for m in participants])
            if srcs is None:
                continue
            first = self.ck(srcs[0].model).info(srcs[0].name)
            job = Job(
                name,
                tuple(first.shape),
                self.out_dtype(first.torch_dtype, True),
                srcs[0] if base_idx is not None else None,
                srcs[1:] if base_idx is not None else srcs,
            )
            self.check_tensor(job)
            self.evaluate_params(job, 0.0, s, others)
            self.jobs.append(job)

    def _layer(self, s: SliceDef, base_in, others, offset: int, out_layer: int, t: float) -> None:
        base_idx, other_idx = self._inputs_for(base_in, others)
        members = ([(base_idx, base_in)] if base_idx is not None else []) + list(zip(other_idx, others))

        def start(mi: ModelInput) -> int:
            return mi.layer_range[0] + offset

        lead_idx, lead_in = members[0]
        lead_ck = self.ck(lead_idx)
        lead_layer = start(lead_in)
        names = [(n, sp) for n in lead_ck.names() if (sp := layer_span(n)) and sp[0] == lead_layer]
        if not names:
            self.problems.add(f"{lead_in.model} has no tensors for layer {lead_layer}")
            return
        for name, span in names:
            out_name = with_layer(name, span, out_layer)
            info = lead_ck.info(name)
            if not info.is_float:
                self.jobs.append(Job(out_name, tuple(info.shape), info.torch_dtype, None, [Source(lead_idx, name)], copy=True))
                continue
            srcs = self.resolve_sources(out_name, [(m, with_layer(name, span, start(mi))) for m, mi in members])
            if srcs is None:
                continue
            job = Job(
                out_name,
                tuple(info.shape),
                self.out_dtype(info.torch_dtype, True),
                srcs[0] if base_idx is not None else None,
                srcs[1:] if base_idx is not None else srcs,
            )
            self.check_tensor(job)
            self.evaluate_params(job, t, s, others)
            self.jobs.append(job)

    # --- vocabularies
    def align_vocab(self) -> None:
        tok = self.recipe.tokenizer_source
        if tok is None:
            for job in self.jobs:
                if job.name in self._vocab_tensors:
                    desc = ", ".join(
                        f"{self.models[s.model].label} {self.ck(s.model).info(s.name).shape[0]}" for s in job.sources
                    )
                    self.problems.add(
                        f"the vocabularies differ in size ({desc} rows); add tokenizer_source: base (or a model) to the recipe, "
                        "or --tokenizer-source, to align rows by token",
                        job.name,
                    )
            return
        from .vocab import is_identity, read_vocab, row_maps

        target = self.tokenizer_model
        vocabs: dict[int, dict[str, int]] = {}
        for i, m in enumerate(self.models):
            try:
                vocabs[i] = read_vocab(m.ck.folder)
            except SurgeonError as e:
                self.problems.add(f"{m.label}: {e}")
        if self.problems:
            return
        target_vs = (self.ck(target).config or {}).get("vocab_size")
        for job in self.jobs:
            if job.copy:
                continue
            shapes = [tuple(self.ck(s.model).info(s.name).shape) for s in job.sources]
            if job.name not in self._vocab_tensors and not all(
                sh and sh[0] == (self.ck(s.model).config or {}).get("vocab_size") for sh, s in zip(shapes, job.sources)
            ):
                continue
            tname = self.find(target, job.name)
            if tname is None:
                continue
            t_rows = self.ck(target).info(tname).shape[0]
            maps = row_maps(vocabs[target], t_rows, [vocabs[s.model] for s in job.sources], [sh[0] for sh in shapes])
            if all(is_identity(mp, sh[0]) for mp, sh in zip(maps, shapes)):
                continue
            job.row_maps = maps
            job.shape = (t_rows, *job.shape[1:])
            self._vocab_tensors.discard(job.name)
            if isinstance(target_vs, int):
                self.config_updates["vocab_size"] = target_vs


# --------------------------------------------------------------------------------------------
# running


@dataclass
class MergeResult:
    output: str
    files: list[str]
    seconds: float
    tensors: int
    merged: int
    bytes_written: int


def _read_job(plan: MergePlan, job: Job):
    tensors = [plan.models[s.model].ck.get(s.name) for s in job.sources]
    return job, tensors


def _cast_changes_math(src: torch.dtype, to: torch.dtype) -> bool:
    """Whether casting inputs to ``to`` before float32 math changes anything (widening half to float32 does not)."""
    if not src.is_floating_point or src == to:
        return False
    return not (to == torch.float32 and src in (torch.float16, torch.bfloat16))


def compute_job(plan: MergePlan, job: Job, tensors: list[torch.Tensor]) -> torch.Tensor:
    """Merge one tensor's versions (base first when the job has one) into the output dtype, on the CPU."""
    if job.copy:
        return tensors[0]
    dev = plan.device
    cd = plan.compute_dtype
    xs = []
    for x in tensors:
        if cd is not None and _cast_changes_math(x.dtype, cd):
            x = x.to(cd)  # mergekit's `dtype`: inputs are cast before merging
        xs.append(x.to(dev, non_blocking=True) if dev.type != "cpu" else x)
    tensors.clear()
    if job.row_maps is not None:
        from .vocab import align_rows

        xs = align_rows(xs, job.row_maps, 0 if job.base is not None else None)
    base = xs.pop(0) if job.base is not None else None
    seed = plan.seed
    inp = MergeInputs(
        job.name,
        xs,
        base,
        job.params,
        job.model_params,
        generator=lambda i, block=0: torch.Generator().manual_seed(tensor_seed(seed, job.name, i, block)),
        out_dtype=job.dtype,
        chunk=sparsify.CHUNK if dev.type == "cpu" else 1 << 26,
    )
    out = plan.method.fn(inp)
    del inp, xs, base
    if out.is_floating_point() and out.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(out))).all()):
        # (aminmax propagates NaN and shows inf; isfinite over the whole tensor is ~25x slower on the CPU)
        raise SurgeonError(
            f"the merge produced NaN or infinite values in {job.name}",
            "check the weights and the inputs (`surgeon report` each model); nothing was written",
        )
    return out.to(job.dtype).to("cpu")


def run_merge(plan: MergePlan, advance: Callable[[int], None] | None = None, command: str = "surgeon merge") -> MergeResult:
    """Stream every job through the method into the output folder (atomic); close the inputs."""
    from modelsurgeon.ops.io.output import write_folder

    t0 = time.perf_counter()
    jobs = plan.jobs

    def produce():
        costs = [plan.input_bytes(j) for j in jobs]
        budget = 1.5 * max(costs, default=0)
        for job, tensors in prefetched((_read_job(plan, j) for j in jobs), depth=1, costs=costs, budget=budget, worker_threads=1):
            nbytes = sum(t.nbytes for t in tensors)
            out = compute_job(plan, job, tensors)
            if advance is not None:
                advance(nbytes)
            yield job.name, out

    cfg_ck = plan.models[plan.config_model].ck
    try:
        target = write_folder(
            plan.out,
            plan.specs(),
            prefetched(produce(), depth=1, worker_threads=1),
            source=None,
            command=command,
            max_shard_size=plan.max_shard_size,
            metadata={"merge_method": plan.method.name, "merge_seed": str(plan.seed)},
            extra_files=_aux_files(plan, cfg_ck),
        )
    finally:
        plan.close()
    files = sorted(p.name for p in target.iterdir())
    return MergeResult(
        str(target),
        files,
        time.perf_counter() - t0,
        len(jobs),
        sum(1 for j in jobs if not j.copy),
        plan.output_bytes,
    )


def _aux_files(plan: MergePlan, cfg_ck) -> dict[str, str | bytes]:
    """config.json from the base (updated), tokenizer files from the tokenizer source, the recipe, a card."""
    import json

    files: dict[str, str | bytes] = {}
    tok_ck = plan.models[plan.tokenizer_model].ck
    for ck, keep in ((cfg_ck, lambda rel: rel not in TOKENIZER_FILES), (tok_ck, lambda rel: rel in TOKENIZER_FILES)):
        for f in ck.aux_files():
            rel = f.relative_to(ck.folder).as_posix()
            if keep(rel):
                files[rel] = f.read_bytes()
    if cfg_ck.config is not None:
        cfg = dict(cfg_ck.config)
        cfg.update(plan.config_updates)
        dts = {j.dtype for j in plan.jobs if j.dtype.is_floating_point}
        if len(dts) == 1 and (plan.recipe.out_dtype or plan.recipe.dtype):
            name = str(next(iter(dts))).removeprefix("torch.")
            for key in ("torch_dtype", "dtype"):
                if key in cfg:
                    cfg[key] = name
        files["config.json"] = json.dumps(cfg, indent=2) + "\n"
    if plan.recipe.chat_template:
        files["chat_template.jinja"] = plan.recipe.chat_template
        if "tokenizer_config.json" in files:
            tc = json.loads(files["tokenizer_config.json"])
            if "chat_template" in tc:
                tc["chat_template"] = plan.recipe.chat_template
                files["tokenizer_config.json"] = json.dumps(tc, indent=2) + "\n"
    recipe_text = plan.recipe.text if plan.recipe.text is not None else plan.recipe.to_yaml()
    files["mergekit_config.yml"] = recipe_text
    files["README.md"] = _model_card(plan, recipe_text)
    return files


def _model_card(plan: MergePlan, recipe_text: str) -> str:
    from modelsurgeon import __version__

    base = plan.recipe.base_model
    lines = ["---"]
    if base is not None:
        lines.append(f"base_model: {base.model}")
    lines += ["library_name: transformers", "tags:", "- merge", "- modelsurgeon", "---", "", "# Merged model", ""]
    lines.append(
        f"Made with modelsurgeon {__version__} (`surgeon merge`), method **{plan.method.name}** ({plan.method.paper}), seed {plan.seed}."
    )
    lines += ["", "Models:", ""] + [f"- {m.label}" for m in plan.models]
    lines += ["", "Recipe (also in mergekit_config.yml):", "", "```yaml", recipe_text.rstrip(), "```", ""]
    return "\n".join(lines)
