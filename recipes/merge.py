"""`surgeon merge` settings: the merge recipe (mergekit's schema in frozen dataclasses) and the configs.

- ``MergeRecipe``: one merge as mergekit describes it (``merge_method``, ``base_model``, ``models``,
  ``slices`` or ``modules``, ``parameters``, ``dtype``/``out_dtype``, ``tokenizer_source``, ...). A recipe file is read
  by ``recipes.mergekit`` (line and column in every complaint); the flag form builds the same object.
- ``MergeConfig``: the command's config: a recipe plus the run options (seed, dtype overrides, tokenizer
  source, device). ``MergeConfig.build("recipe.yml", seed=3)`` reads a file and lays the flags over it.
- ``ExtractConfig``: ``--extract-lora``: a fine-tune, its base, the rank and the weights to factor.

Parameter values keep mergekit's three shapes (see ``evaluate``):

- a scalar: ``weight: 0.5``;
- a gradient, a list of numbers interpolated across the layers of a slice: ``t: [0, 0.5, 1]``;
- conditions, the first whose ``filter`` is a substring of the tensor name wins:
  ``t: [{filter: self_attn, value: [0, 1]}, {value: 0.5}]`` (no filter, or ``"*"``, matches all).

The method name and its parameters are checked against the method registry (``ops.merge.methods``,
which needs torch) by ``plan_merge`` as its first step, before any model is opened; everything else is
checked here. Nothing here imports torch: the CLI parses a recipe before any heavy import.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

from modelsurgeon.ops.core.errors import UsageError
from modelsurgeon.ops.core.patterns import check_pattern

from .base import Config, check_fraction, check_int, check_seed

SCHEMA_VERSION = 1

DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float64": "float64",
    "fp64": "float64",
}


# --------------------------------------------------------------------------------------------
# values


@dataclass(frozen=True)
class Gradient:
    """A list of values spread evenly across the layers of a slice (t = layer / (layers - 1))."""

    values: tuple

    def __str__(self) -> str:
        return "[" + ", ".join(str(v) for v in self.values) + "]"


@dataclass(frozen=True)
class Condition:
    filter: str | None  # None or "*" matches every tensor
    value: Setting


@dataclass(frozen=True)
class Conditions:
    items: tuple[Condition, ...]

    def __str__(self) -> str:
        return "[" + ", ".join(f"{c.filter or '*'}: {c.value}" for c in self.items) + "]"


Setting = float | int | bool | str | None | Gradient | Conditions
Params = Mapping[str, Setting]
NO_PARAMS: Params = MappingProxyType({})


def evaluate(setting: Setting, tensor_name: str, t: float) -> Any:
    """The value of a setting for one tensor at layer position ``t`` in [0, 1] (None: not set here)."""
    if isinstance(setting, Gradient):
        vals = setting.values
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            scaled = t * (len(vals) - 1)
            i0 = int(scaled)
            i1 = min(len(vals) - 1, i0 + 1)
            frac = scaled - i0
            return (1 - frac) * vals[i0] + frac * vals[i1]
        return vals[int(t * (len(vals) - 1))]
    if isinstance(setting, Conditions):
        for c in setting.items:
            if c.filter is None or c.filter == "*" or (tensor_name and c.filter in tensor_name):
                return evaluate(c.value, tensor_name, t)
        return None
    return setting


def setting_to_plain(s: Setting):
    """Back to YAML-able Python (for writing a recipe)."""
    if isinstance(s, Gradient):
        return list(s.values)
    if isinstance(s, Conditions):
        out = []
        for c in s.items:
            d = {"value": setting_to_plain(c.value)}
            if c.filter is not None:
                d = {"filter": c.filter, **d}
            out.append(d)
        return out
    return s


# --------------------------------------------------------------------------------------------
# the recipe


@dataclass(frozen=True)
class ModelRef:
    """``path``, ``org/name``, ``org/name@rev``, each optionally ``+ADAPTER`` (a PEFT LoRA folded in first)."""

    model: str
    lora: str | None = None

    @classmethod
    def parse(cls, spec: str) -> ModelRef:
        spec = spec.strip()
        if "+" in spec and not Path(spec).expanduser().exists():
            model, _, lora = spec.partition("+")
            return cls(model.strip(), lora.strip() or None)
        return cls(spec)

    def __str__(self) -> str:
        return f"{self.model}+{self.lora}" if self.lora else self.model

    def same_as(self, other: ModelRef | None) -> bool:
        if other is None:
            return False
        return _canon(self.model) == _canon(other.model) and _canon(self.lora) == _canon(other.lora)


def _canon(spec: str | None) -> str | None:
    if spec is None:
        return None
    p = Path(spec).expanduser()
    if p.exists():
        return str(p.resolve())
    return spec


@dataclass(frozen=True)
class ModelInput:
    model: ModelRef
    parameters: Params = field(default_factory=lambda: NO_PARAMS)
    layer_range: tuple[int, int] | None = None  # slices only: [start, end), end exclusive


@dataclass(frozen=True)
class SliceDef:
    sources: tuple[ModelInput, ...]
    base_model: ModelRef | None = None
    parameters: Params = field(default_factory=lambda: NO_PARAMS)


@dataclass(frozen=True)
class ModuleDef:
    """One module of a multi-module model (mergekit's ``modules.<name>``: a vision-language model's
    ``text_decoder``, ``vision_tower`` and ``multi_modal_projector``): merged from its own ``models`` or
    ``slices``, with its own parameters (between a slice's and the recipe's in precedence)."""

    models: tuple[ModelInput, ...] | None = None
    slices: tuple[SliceDef, ...] | None = None
    parameters: Params = field(default_factory=lambda: NO_PARAMS)


@dataclass(frozen=True)
class TokenSource:
    """Where one output token's embedding row comes from (mergekit's ``tokenizer.tokens.<t>.source``):
    ``model`` (that model's row for the same token), ``model_token`` (that model's row for another token,
    by text or id) or ``zero``."""

    kind: str
    model: ModelRef | None = None
    token: str | None = None
    token_id: int | None = None


@dataclass(frozen=True)
class TokenSetting:
    source: TokenSource | None = None
    force: bool = False  # use the source even for models that have the token


CHAT_TEMPLATES = ("alpaca", "chatml", "exaone", "llama3", "mistral")


def chat_template_text(name: str) -> str:
    """The Jinja text of a named chat template shipped with modelsurgeon (the names mergekit ships)."""
    from importlib.resources import files

    return files("modelsurgeon.recipes").joinpath(f"chat_templates/{name}.jinja").read_text()


def is_template_name(value: str) -> bool:
    """Whether a chat_template value is a name (mergekit's rule: short, one line, no braces) rather than Jinja."""
    return len(value) < 256 and "\n" not in value and "{" not in value


@dataclass(frozen=True)
class MergeRecipe:
    """One merge in mergekit's schema, as a recipe file or the flags describe it (``MergeConfig`` adds how to run it)."""

    merge_method: str
    base_model: ModelRef | None = None
    models: tuple[ModelInput, ...] | None = None
    slices: tuple[SliceDef, ...] | None = None
    modules: Mapping[str, ModuleDef] | None = None  # a multi-module model: module name -> its models or slices
    parameters: Params = field(default_factory=lambda: NO_PARAMS)
    dtype: str | None = None  # inputs are cast to this before merging (mergekit's meaning)
    out_dtype: str | None = None  # the saved dtype; default: dtype, else each tensor's source dtype
    tokenizer_source: str | None = None  # "union", "base" or a model reference
    tokens: Mapping[str, TokenSetting] = field(default_factory=lambda: NO_PARAMS)  # per-token embedding sources
    pad_to_multiple_of: int | None = None  # the output's vocabulary rows, rounded up
    chat_template: str | None = None  # "auto", a name from CHAT_TEMPLATES, or Jinja text
    name: str | None = None  # a stage of a multi-document recipe: later stages use this name as a model
    source: str = "<flags>"  # where it came from, for messages
    text: str | None = None  # the recipe file as written, kept verbatim beside the output
    schema: int = SCHEMA_VERSION
    where: Mapping[str, str] = field(
        default_factory=lambda: NO_PARAMS, compare=False
    )  # "models[1].parameters.density" -> "line 7, column 5"

    def referenced_models(self) -> list[ModelRef]:
        """Every distinct model the recipe names, base first."""
        out: list[ModelRef] = []

        def add(ref: ModelRef | None) -> None:
            if ref is not None and not any(ref.same_as(r) for r in out):
                out.append(ref)

        add(self.base_model)
        for models, slices in ((self.models, self.slices), *((d.models, d.slices) for d in (self.modules or {}).values())):
            for m in models or ():
                add(m.model)
            for s in slices or ():
                add(s.base_model)
                for src in s.sources:
                    add(src.model)
        return out

    def locate(self, path: str) -> str:
        """'RECIPE line 7, column 5' for a node path, or just the source."""
        loc = self.where.get(path)
        return f"{self.source} {loc}" if loc else self.source

    @classmethod
    def fold_lora(cls, base: str, adapter: str) -> MergeRecipe:
        """Fold a PEFT LoRA adapter into ``base``: a passthrough of ``base+adapter`` (``--lora``)."""
        return cls("passthrough", models=(ModelInput(ModelRef(base, adapter)),), source="--lora")

    def to_yaml(self) -> str:
        """The recipe as mergekit YAML (for the flag form; recipe files are kept verbatim)."""
        import yaml

        return yaml.safe_dump(self.to_plain(), sort_keys=False, default_flow_style=None)

    def to_plain(self) -> dict[str, Any]:
        """The recipe as plain data in mergekit's schema."""
        doc: dict[str, Any] = {"merge_method": self.merge_method}
        if self.base_model is not None:
            doc["base_model"] = str(self.base_model)
        _inputs_plain(doc, self.models, self.slices)
        if self.modules is not None:
            doc["modules"] = {}
            for name, mod in self.modules.items():
                md: dict[str, Any] = {}
                _inputs_plain(md, mod.models, mod.slices)
                if mod.parameters:
                    md["parameters"] = {k: setting_to_plain(v) for k, v in mod.parameters.items()}
                doc["modules"][name] = md
        if self.parameters:
            doc["parameters"] = {k: setting_to_plain(v) for k, v in self.parameters.items()}
        for key in ("dtype", "out_dtype", "chat_template"):
            if getattr(self, key) is not None:
                doc[key] = getattr(self, key)
        if self.tokens or self.pad_to_multiple_of is not None:
            tok: dict[str, Any] = {"source": self.tokenizer_source or "union"}
            if self.tokens:
                tok["tokens"] = {t: _token_plain(v) for t, v in self.tokens.items()}
            if self.pad_to_multiple_of is not None:
                tok["pad_to_multiple_of"] = self.pad_to_multiple_of
            doc["tokenizer"] = tok
        elif self.tokenizer_source is not None:
            doc["tokenizer_source"] = self.tokenizer_source
        if self.name is not None:
            doc = {"name": self.name, **doc}
        return doc


def _inputs_plain(doc: dict, models, slices) -> None:
    if models is not None:
        doc["models"] = [_input_plain(m) for m in models]
    if slices is not None:
        doc["slices"] = []
        for s in slices:
            d: dict[str, Any] = {"sources": [_input_plain(m) for m in s.sources]}
            if s.base_model is not None:
                d["base_model"] = str(s.base_model)
            if s.parameters:
                d["parameters"] = {k: setting_to_plain(v) for k, v in s.parameters.items()}
            doc["slices"].append(d)


def _token_plain(t: TokenSetting) -> dict:
    d: dict[str, Any] = {}
    src = t.source
    if src is not None:
        if src.kind == "model":
            d["source"] = str(src.model)
        elif src.kind == "zero":
            d["source"] = {"kind": "zero"}
        else:
            d["source"] = {"kind": "model_token", "model": str(src.model)}
            d["source"]["token" if src.token is not None else "token_id"] = src.token if src.token is not None else src.token_id
    if t.force:
        d["force"] = True
    return d


def _input_plain(m: ModelInput) -> dict:
    d: dict[str, Any] = {"model": str(m.model)}
    if m.layer_range is not None:
        d["layer_range"] = list(m.layer_range)
    if m.parameters:
        d["parameters"] = {k: setting_to_plain(v) for k, v in m.parameters.items()}
    return d


# --------------------------------------------------------------------------------------------
# the configs


def dtype_name(value, flag: str) -> str | None:
    """The canonical name of a dtype flag (``bf16`` -> ``bfloat16``), or a usage error naming the flag."""
    if value is None:
        return None
    if not isinstance(value, str) or value.lower() not in DTYPES:
        raise UsageError(f"{flag} {value!r} is not a dtype", "use float32, bfloat16, float16 or float64")
    return DTYPES[value.lower()]


def _check_pattern(pattern: str | None, flag: str) -> None:
    if pattern is None:
        return
    check_pattern(pattern, flag)


_OVERRIDES = ("dtype", "out_dtype", "tokenizer_source")


@dataclass(frozen=True)
class MergeConfig(Config):
    """One merge: the recipe and how to run it.

    ``dtype``, ``out_dtype`` and ``tokenizer_source``, when given, override the recipe's; ``validate`` lays
    them onto ``recipe`` (whose ``text``, the file as written, stays verbatim beside the output), so the
    planner reads everything from ``recipe``. ``build`` takes a recipe file or a ready ``MergeRecipe``::

        MergeConfig.build("ties.yml", seed=3, out_dtype="bfloat16")
        MergeConfig(recipe=MergeRecipe.fold_lora("org/base", "adapter/"))
    """

    KIND: ClassVar[str] = "merge"
    VERSION: ClassVar[int] = 1

    recipe: MergeRecipe | None = None
    seed: int = 0  # the random methods (dare_*, della*): same seed, same output
    dtype: str | None = None  # inputs are cast to this before merging (overrides the recipe's)
    out_dtype: str | None = None  # the saved dtype (overrides the recipe's)
    tokenizer_source: str | None = None  # base or one of the models (overrides the recipe's)
    device: str = "auto"  # where the math runs: auto (CUDA when present), cpu, cuda, cuda:N

    def validate(self) -> None:
        if not isinstance(self.recipe, MergeRecipe):
            raise UsageError("a merge needs a recipe", "give a recipe file or a MergeRecipe (recipes.merge)")
        check_seed(self.seed, "--seed")
        self._set("dtype", dtype_name(self.dtype, "--dtype"))
        self._set("out_dtype", dtype_name(self.out_dtype, "--out-dtype"))
        if self.tokenizer_source is not None and not (isinstance(self.tokenizer_source, str) and self.tokenizer_source.strip()):
            raise UsageError(f"--tokenizer-source {self.tokenizer_source!r} names no model", "give base or one of the models")
        if not isinstance(self.device, str):
            raise UsageError(f"--device {self.device!r} is not a device", "use auto, cpu, cuda or cuda:N")
        given = {k: getattr(self, k) for k in _OVERRIDES if getattr(self, k) is not None}
        if any(getattr(self.recipe, k) != v for k, v in given.items()):
            self._set("recipe", dataclasses.replace(self.recipe, **given))

    @classmethod
    def load(cls, recipe: str | Path | MergeRecipe) -> dict:
        """A mergekit recipe file (or a ready ``MergeRecipe``) as the config's ``recipe``."""
        if isinstance(recipe, MergeRecipe):
            return {"recipe": recipe}
        from .mergekit import load_recipe

        return {"recipe": load_recipe(recipe)}

    @classmethod
    def convert(cls, data: dict, source: str) -> dict:
        if isinstance(data.get("recipe"), Mapping):
            import yaml

            from .mergekit import parse_recipe

            data["recipe"] = parse_recipe(yaml.safe_dump(dict(data["recipe"]), sort_keys=False), f"{source} (recipe)")
        return data

    def to_dict(self) -> dict:
        """The recipe in mergekit's schema (the overrides already in it), the seed and the device."""
        out: dict = {"version": self.version}
        if self.recipe is not None:
            out["recipe"] = self.recipe.to_plain()
        out["seed"] = self.seed
        out["device"] = self.device
        return out


@dataclass(frozen=True)
class ExtractConfig(Config):
    """``--extract-lora``: a PEFT LoRA adapter that turns ``base`` into ``finetune``: rank ``rank``, or with
    ``sv_threshold`` each module's own rank up to ``rank``."""

    KIND: ClassVar[str] = "extract_lora"
    VERSION: ClassVar[int] = 1

    finetune: str | None = None  # a path or Hub id, as for any model
    base: str | None = None
    rank: int | None = None  # the rank, or with sv_threshold the largest rank of a module
    sv_threshold: float | None = None  # keep singular values >= this fraction of each module's largest
    embed_lora: bool = False  # factor the embeddings too (else a changed embedding is saved whole)
    include: str | None = None  # regex of the weights to factor (default: every linear weight)
    exclude: str | None = None  # regex of weights to leave out
    exact_svd: bool = False  # full SVD instead of the randomized one
    seed: int = 0  # the randomized SVD's
    out_dtype: str | None = None  # the saved dtype (default: each tensor's source dtype)
    device: str = "auto"

    def validate(self) -> None:
        for name in ("finetune", "base"):
            if isinstance(getattr(self, name), Path):
                self._set(name, str(getattr(self, name)))
        if not self.finetune or not isinstance(self.finetune, str):
            raise UsageError("--extract-lora needs the fine-tuned model", "e.g. --extract-lora finetuned/ --base org/base")
        if not self.base or not isinstance(self.base, str):
            raise UsageError("--extract-lora needs --base")
        if self.rank is None:
            raise UsageError("--extract-lora needs --rank", "e.g. --rank 16")
        check_int(self.rank, "--rank", minimum=1)
        if self.sv_threshold is not None:
            check_fraction(self.sv_threshold, "--sv-threshold", lo_open=True, example="e.g. --sv-threshold 0.05")
        if not isinstance(self.embed_lora, bool):
            raise UsageError(f"--embed-lora must be true or false, got {self.embed_lora!r}")
        _check_pattern(self.include, "--include")
        _check_pattern(self.exclude, "--exclude")
        check_seed(self.seed, "--seed")
        self._set("out_dtype", dtype_name(self.out_dtype, "--out-dtype"))
        if not isinstance(self.device, str):
            raise UsageError(f"--device {self.device!r} is not a device", "use auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class AdapterMergeConfig(Config):
    """``--adapters``: several PEFT LoRA adapters of one base merged into one adapter by ``method``
    (a task-vector method, on the adapters' deltas), re-factored at ``rank`` (default: the sum of the
    adapters' ranks) or, with ``sv_threshold``, at each module's own rank up to ``rank``."""

    KIND: ClassVar[str] = "merge_adapters"
    VERSION: ClassVar[int] = 1

    adapters: tuple[str, ...] = ()
    method: str = "linear"
    weight: tuple[float, ...] = ()  # once for all, or once per adapter
    density: tuple[float, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)  # global parameters (--param KEY=VALUE)
    rank: int | None = None
    sv_threshold: float | None = None
    exact_svd: bool = False
    seed: int = 0
    out_dtype: str | None = None
    device: str = "auto"

    def validate(self) -> None:
        self._set("adapters", tuple(str(a) for a in self.adapters))
        if len(self.adapters) < 2:
            raise UsageError(
                "--adapters merges two or more adapters", "e.g. surgeon merge --adapters --method ties a/ b/ -o merged/"
            )
        if not isinstance(self.method, str) or not self.method:
            raise UsageError("--adapters needs --method", "e.g. --method ties")
        self._set("weight", tuple(self.weight or ()))
        self._set("density", tuple(self.density or ()))
        if self.rank is not None:
            check_int(self.rank, "--rank", minimum=1)
        if self.sv_threshold is not None:
            check_fraction(self.sv_threshold, "--sv-threshold", lo_open=True, example="e.g. --sv-threshold 0.05")
        check_int(self.seed, "--seed", minimum=None)
        self._set("out_dtype", dtype_name(self.out_dtype, "--out-dtype"))


# --------------------------------------------------------------------------------------------
# mixture of experts (mergekit-moe's YAML)

MOE_GATE_MODES = ("hidden", "hidden_avg", "hidden_last", "cheap_embed", "random", "uniform_random")
MOE_ARCHITECTURES = ("mixtral", "qwen")


@dataclass(frozen=True)
class MoEExpert:
    source_model: str
    positive_prompts: tuple[str, ...] = ()
    negative_prompts: tuple[str, ...] = ()
    noise_scale: float | None = None
    residual_scale: float | None = None


@dataclass(frozen=True)
class MoEConfig(Config):
    """A mixture of experts from a dense base and dense fine-tunes (mergekit-moe's recipe): the base's
    attention, norms and embeddings, each fine-tune's MLP as one expert per layer, and a router per layer
    initialised from prompts (``gate_mode``)."""

    KIND: ClassVar[str] = "moe"
    VERSION: ClassVar[int] = 1

    base_model: str | None = None
    experts: tuple[MoEExpert, ...] = ()
    gate_mode: str = "hidden"
    dtype: str | None = None
    experts_per_token: int = 2
    shared_experts: tuple[MoEExpert, ...] = ()
    architecture: str | None = None  # mixtral | qwen (default: qwen with a shared expert, else mixtral)
    seed: int = 0  # random gates
    device: str = "auto"
    allow_same: bool = False  # every expert the same model: only useful before training

    def validate(self) -> None:
        if not self.base_model:
            raise UsageError("a MoE recipe needs base_model")
        if not self.experts:
            raise UsageError("a MoE recipe needs experts: a list of {source_model, positive_prompts}")
        check_int(self.experts_per_token, "experts_per_token", minimum=1)
        if self.experts_per_token > len(self.experts):
            raise UsageError(
                f"experts_per_token is {self.experts_per_token} but there are only {len(self.experts)} experts",
                "lower experts_per_token or add experts",
            )
        if self.gate_mode not in MOE_GATE_MODES:
            raise UsageError(f"gate_mode {self.gate_mode!r} is not one of {', '.join(MOE_GATE_MODES)}")
        self._set("dtype", dtype_name(self.dtype, "dtype"))
        arch = self.architecture
        if arch is not None:
            low = str(arch).lower().replace(" ", "")
            match = next((a for a in MOE_ARCHITECTURES if low.startswith(a)), None)
            if match is None:
                raise UsageError(f"architecture {arch!r} is not one of Mixtral, Qwen MoE")
            self._set("architecture", match)
        else:
            self._set("architecture", "qwen" if self.shared_experts else "mixtral")
        if self.architecture == "mixtral" and self.shared_experts:
            raise UsageError("Mixtral has no shared experts", "use architecture: qwen, or drop shared_experts")
        if self.architecture == "qwen" and len(self.shared_experts) != 1:
            raise UsageError("Qwen MoE needs exactly one shared expert (shared_experts: [...])")
        if self.gate_mode not in ("random", "uniform_random"):
            for i, e in enumerate(self.experts + self.shared_experts):
                if not e.positive_prompts:
                    raise UsageError(
                        f"expert {i} ({e.source_model}) has no positive_prompts", f"gate_mode {self.gate_mode} routes by prompts"
                    )
            prompts = {(e.positive_prompts, e.negative_prompts) for e in self.experts}
            if len(self.experts) > 1 and len(prompts) == 1:
                raise UsageError(
                    "every expert has the same prompts, so the router cannot tell them apart",
                    "give each expert its own positive_prompts",
                )
        if not self.allow_same and len(self.experts) > 1 and len({e.source_model for e in self.experts}) == 1:
            raise UsageError(
                "every expert is the same model: the MoE would compute exactly what the model does",
                "to train it afterwards anyway, pass --i-understand-this-is-not-useful-without-training",
            )
        check_int(self.seed, "--seed", minimum=None)

    @classmethod
    def from_recipe(cls, data: Mapping, source: str, **run) -> MoEConfig:
        known = ("base_model", "experts", "gate_mode", "dtype", "experts_per_token", "shared_experts", "architecture")
        unknown = [k for k in data if k not in known]
        if unknown:
            from .base import did_you_mean

            raise UsageError(
                f"{source}: unknown key {unknown[0]!r} in a MoE recipe{did_you_mean(unknown[0], known)}",
                f"known: {', '.join(known)}",
            )

        def experts(key: str) -> tuple[MoEExpert, ...]:
            raw = data.get(key) or []
            if not isinstance(raw, list):
                raise UsageError(f"{source}: {key} must be a list of {{source_model, positive_prompts, ...}}")
            out = []
            for i, e in enumerate(raw):
                ek = ("source_model", "positive_prompts", "negative_prompts", "noise_scale", "residual_scale")
                if not isinstance(e, Mapping) or "source_model" not in e or any(k not in ek for k in e):
                    raise UsageError(f"{source}: {key}[{i}] must be a mapping with source_model (and {', '.join(ek[1:])})")
                out.append(
                    MoEExpert(
                        str(e["source_model"]),
                        tuple(str(p) for p in e.get("positive_prompts") or ()),
                        tuple(str(p) for p in e.get("negative_prompts") or ()),
                        e.get("noise_scale"),
                        e.get("residual_scale"),
                    )
                )
            return tuple(out)

        return cls(
            base_model=str(data["base_model"]) if data.get("base_model") else None,
            experts=experts("experts"),
            shared_experts=experts("shared_experts"),
            gate_mode=str(data.get("gate_mode", "hidden")),
            dtype=data.get("dtype"),
            experts_per_token=data.get("experts_per_token", 2),
            architecture=data.get("architecture"),
            **run,
        )


def is_moe_recipe(data) -> bool:
    """A mergekit-moe recipe: experts and a base, no merge_method."""
    return isinstance(data, Mapping) and "experts" in data and "merge_method" not in data
