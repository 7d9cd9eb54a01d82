"""`surgeon run` recipes: an ordered list of steps, each with the settings of its command (imports no torch).

    version: 1
    model: org/model                 # the input of the first step (a first merge step makes its own)
    steps:
      - prune: {pattern: "2:4"}
      - quantize: {scheme: w4a16}
      - report: {require: ["nm_2_4_fraction==1"]}

Steps: ``merge`` (a mergekit recipe, inline), ``prune``, ``quantize``, ``report`` (its ``require`` gates fail
the run). Each step's settings are its command's config (``PruneConfig`` ...), validated the same way; the
order is checked too: a merge comes first, only reports follow a quantize, nothing follows a GGUF step.
Every problem is reported at once, each with its line and column; an unknown key or step names the closest
valid one. ``RunConfig.to_dict()`` is the canonical recipe recorded in the output: every step's settings in
full (defaults included, each with its own version), no output path and no time, so running it again gives
the same bytes.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from modelsurgeon.ops.core.errors import PlanError, SurgeonError, UsageError

from .base import Config, did_you_mean, yaml_error

STEP_KINDS = ("merge", "prune", "quantize", "report")
WRITERS = ("merge", "prune", "quantize")
TOP_KEYS = ("version", "model", "steps")


@dataclass(frozen=True)
class Step:
    """One step: its kind, its command's config, and where the recipe wrote it (for messages)."""

    kind: str
    config: Any  # MergeConfig | PruneConfig | QuantizeConfig | ReportConfig
    where: str = ""  # "line 5, column 5"

    @property
    def writes(self) -> bool:
        return self.kind in WRITERS

    @property
    def gguf(self) -> bool:
        return self.kind == "quantize" and self.config.output_format == "gguf"

    def to_dict(self) -> dict:
        if self.kind == "merge":
            return {"merge": {**self.config.recipe.to_plain(), **_merge_options(self.config)}}
        return {self.kind: self.config.to_dict()}


def _merge_options(cfg) -> dict:
    return {"seed": cfg.seed} if cfg.seed else {}


@dataclass(frozen=True, kw_only=True)
class RunConfig(Config):
    """A recipe of steps. Build it with ``RunConfig.read(path)`` (positions in every message) or
    ``RunConfig.from_dict(data)``."""

    KIND: ClassVar[str] = "run"
    VERSION: ClassVar[int] = 1
    EXAMPLE: ClassVar[str] = "recipes/run_2of4_w4a16_vllm.yaml"

    model: str | None = None
    steps: tuple[Step, ...] = ()

    def validate(self) -> None:
        problems = _order_problems(self)
        if problems:
            raise PlanError(problems, "the run recipe")

    @property
    def output_kind(self) -> str:
        """``file`` when the last writing step is a GGUF quantize, else ``dir``."""
        writers = [s for s in self.steps if s.writes]
        return "file" if writers and writers[-1].gguf else "dir"

    def to_dict(self) -> dict:
        out: dict = {"version": self.version}
        if self.model is not None:
            out["model"] = self.model
        out["steps"] = [s.to_dict() for s in self.steps]
        return out

    def to_yaml(self, header: str | None = None) -> str:
        from modelsurgeon import __version__

        head = header if header is not None else f"# modelsurgeon {__version__} run recipe: surgeon run THIS_FILE -o OUT\n"
        return super().to_yaml(head)

    # --- reading
    @classmethod
    def from_dict(cls, data: Mapping | None, source: str = "the recipe") -> RunConfig:
        return _parse(data, source, {})

    @classmethod
    def read(cls, path: str | Path, model: str | None = None) -> RunConfig:
        """A recipe file; ``model`` (the --model flag) replaces its ``model``."""
        import yaml

        p = Path(path)
        try:
            text = p.read_text()
        except FileNotFoundError:
            raise SurgeonError(f"recipe {p} does not exist", "check the path") from None
        except (OSError, UnicodeDecodeError) as e:
            raise SurgeonError(f"cannot read recipe {p}: {getattr(e, 'strerror', None) or e}") from None
        from .base import _loader

        try:
            node = yaml.compose(text, Loader=_loader())
            data = yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as e:
            raise yaml_error(e, str(p)) from None
        marks: dict[str, tuple[int, int]] = {}
        if node is not None:
            _collect_marks(node, "", marks)
        if model is not None and isinstance(data, dict):
            data = {**data, "model": model}
        return _parse(data, str(p), marks, text)


# --------------------------------------------------------------------------------------------
# positions


def _collect_marks(node, path: str, out: dict) -> None:
    """``out[path] = (line, column)`` (1-based) for every key and value: ``steps[1].prune.sparsity``."""
    import yaml

    out.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = f"{path}.{k.value}" if path else str(k.value)
            out[key + "@key"] = (k.start_mark.line + 1, k.start_mark.column + 1)
            out[key + "@span"] = (v.start_mark.index, v.end_mark.index, v.start_mark.line, v.start_mark.column)
            _collect_marks(v, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _collect_marks(v, f"{path}[{i}]", out)


class _Where:
    def __init__(self, source: str, marks: dict):
        self.source, self.marks = source, marks

    def at(self, path: str, key: bool = False) -> str:
        m = self.marks.get(path + "@key") if key else None
        m = m or self.marks.get(path)
        return f"{self.source} line {m[0]}, column {m[1]}" if m else self.source


# --------------------------------------------------------------------------------------------
# parsing: every problem collected, each with its position


def _config_class(kind: str):
    if kind == "prune":
        from .prune import PruneConfig

        return PruneConfig
    if kind == "quantize":
        from .quantize import QuantizeConfig

        return QuantizeConfig
    from .report import ReportConfig

    return ReportConfig


def _parse(data, source: str, marks: dict, text: str | None = None) -> RunConfig:
    w = _Where(source, marks)
    problems: list[str] = []
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SurgeonError(f"{w.at('')}: a run recipe is a mapping with steps:", f"see {RunConfig.EXAMPLE}")
    for k in data:
        if k not in TOP_KEYS:
            problems.append(
                f"{w.at(str(k), key=True)}: unknown key {k!r}{did_you_mean(k, TOP_KEYS)}; known: {', '.join(TOP_KEYS)}"
            )
    version = data.get("version", RunConfig.VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        problems.append(f"{w.at('version')}: version {version!r} is not a number; write version: {RunConfig.VERSION}")
        version = RunConfig.VERSION
    elif version > RunConfig.VERSION:
        raise UsageError(
            f"{w.at('version')}: the run recipe has version {version}, newer than this modelsurgeon understands "
            f"({RunConfig.VERSION})",
            "upgrade: pip install -U modelsurgeon",
        )
    elif version < 1:
        problems.append(f"{w.at('version')}: run recipe version {version} does not exist; write version: {RunConfig.VERSION}")
        version = RunConfig.VERSION
    model = data.get("model")
    if model is not None and not (isinstance(model, str) and model.strip()):
        problems.append(f"{w.at('model')}: model must be a path or a Hub id, got {model!r}")
        model = None
    raw_steps = data.get("steps")
    steps: list[Step] = []
    if raw_steps is None or raw_steps == []:
        problems.append(
            f"{w.at('')}: the recipe has no steps",
        )
    elif not isinstance(raw_steps, list):
        problems.append(f"{w.at('steps')}: steps must be a list of one-key mappings such as '- prune: {{pattern: \"2:4\"}}'")
    else:
        for i, raw in enumerate(raw_steps):
            step = _parse_step(i, raw, w, text, problems)
            if step is not None:
                steps.append(step)
    if problems:
        raise PlanError(problems, f"the run recipe {source}")
    try:
        return RunConfig(version=version, model=model, steps=tuple(steps))
    except PlanError as e:
        raise PlanError(e.problems, f"the run recipe {source}") from None


def _parse_step(i: int, raw, w: _Where, text: str | None, problems: list[str]) -> Step | None:
    path = f"steps[{i}]"
    n = i + 1
    if not isinstance(raw, Mapping) or len(raw) != 1:
        problems.append(f"{w.at(path)}: step {n} must be one mapping such as '- prune: {{pattern: \"2:4\"}}', got {raw!r}")
        return None
    ((kind, settings),) = raw.items()
    kpath = f"{path}.{kind}"
    if kind not in STEP_KINDS:
        problems.append(
            f"{w.at(kpath, key=True)}: step {n}: unknown step {kind!r}{did_you_mean(kind, STEP_KINDS)}; steps: {', '.join(STEP_KINDS)}"
        )
        return None
    where = w.at(kpath, key=True)
    if settings is None:
        settings = {}
    if not isinstance(settings, Mapping):
        problems.append(f"{where}: step {n} ({kind}) takes a mapping of settings, got {settings!r}")
        return None
    if kind == "merge":
        return _parse_merge(n, kpath, settings, w, text, problems)
    cls = _config_class(kind)
    known = [f for f in cls.field_names()]
    bad = False
    for k in settings:
        if k not in known:
            close = difflib.get_close_matches(str(k), known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else f"; known: {', '.join(known)}"
            problems.append(f"{w.at(f'{kpath}.{k}', key=True)}: step {n} ({kind}): unknown key {k!r}{hint}")
            bad = True
    if bad:
        return None
    try:
        cfg = cls.from_dict(dict(settings), f"step {n} ({kind})")
    except SurgeonError as e:
        problems.append(f"{where}: step {n} ({kind}): {e}")
        return None
    return Step(kind, cfg, where)


def _parse_merge(n: int, kpath: str, settings: Mapping, w: _Where, text: str | None, problems: list[str]) -> Step | None:
    """The step's mapping is a mergekit recipe (plus ``seed``); parsed by ``recipes.mergekit`` from the
    recipe's own text so that its messages keep the file's lines and columns."""
    import yaml

    from .merge import MergeConfig
    from .mergekit import parse_recipe

    options = {k: settings[k] for k in ("seed",) if k in settings}
    body = {k: v for k, v in settings.items() if k not in options}
    span = w.marks.get(kpath + "@span")
    if text is not None and span and not options:
        start, end, line, col = span
        doc = "\n" * line + " " * col + text[start:end] + "\n"  # same lines and columns as in the file
    else:
        doc = yaml.safe_dump(body, sort_keys=False)
    where = w.at(kpath, key=True)
    try:
        recipe = parse_recipe(doc, w.source if span and not options else f"{w.source} step {n} (merge)")
        cfg = MergeConfig(recipe=recipe, **options)
    except PlanError as e:
        problems.extend(f"step {n} (merge): {p}" for p in e.problems)
        return None
    except SurgeonError as e:
        problems.append(f"{where}: step {n} (merge): {e}")
        return None
    return Step("merge", cfg, where)


def _order_problems(cfg: RunConfig) -> list[str]:
    """What the order of the steps makes impossible."""
    out: list[str] = []
    steps = cfg.steps
    if not steps:
        return ["the recipe has no steps"]
    for i, s in enumerate(steps):
        n = i + 1
        if s.kind == "merge" and i > 0:
            out.append(f"{s.where}: step {n} (merge) must be the first step: a merge makes the model the later steps work on")
        before = steps[:i]
        if any(b.gguf for b in before):
            out.append(
                f"{s.where}: step {n} ({s.kind}) follows a GGUF step: a GGUF file is the end of a run; move the GGUF quantize last"
            )
        elif s.kind != "report" and any(b.kind == "quantize" for b in before):
            out.append(
                f"{s.where}: step {n} ({s.kind}) follows quantize: only report steps may follow it (its output is quantized); "
                "put quantize after the other steps"
            )
    if steps[0].kind == "merge" and cfg.model is not None:
        out.append("the recipe gives model: and starts with a merge, which makes its own input; drop one")
    if steps[0].kind != "merge" and cfg.model is None:
        out.append("the recipe has no input: give model: PATH_OR_HUB_ID (or --model), or start with a merge step")
    if not any(s.writes for s in steps):
        out.append("the recipe has no step that writes a model (merge, prune, quantize); for a report alone use surgeon report")
    return out
