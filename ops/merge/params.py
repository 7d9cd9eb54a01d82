"""Merge parameters: the names a recipe may use, and their values for each output tensor.

``check_param_names`` runs before any model is opened: an unknown parameter is a problem that names the
method's parameters (and the closest one), a parameter the method ignores is a warning, as is a global
parameter set per model (mergekit ignores it).

``ParamEvaluator`` evaluates every parameter of a job, mergekit's precedence: a model's own parameters,
then its slice's, then its module's (``modules:``), then the recipe's; a level whose conditions match nothing passes to the next. Each
value is coerced to its kind (bool, float) and range-checked; every failure is a problem naming where
it was set (recipe line and column, or the flag).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelsurgeon.ops.core.problems import Problems
from modelsurgeon.recipes.base import did_you_mean
from modelsurgeon.recipes.merge import MergeRecipe, ModelInput, ModuleDef, SliceDef, evaluate

from .methods import MergeMethod, Param, all_param_names

if TYPE_CHECKING:
    from .jobs import Job

INVALID = object()  # a value that was set but is unusable (already reported)
_FLAGS = {"weight": "--weight", "density": "--density", "t": "--t"}


def check_param_names(recipe: MergeRecipe, method: MergeMethod, problems: Problems, warnings: list[str]) -> None:
    """Every parameter the recipe sets is one the method takes (else a problem) or uses (else a warning)."""
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
                problems.add(
                    f"{where}: unknown parameter {name!r}; {method.name} takes {takes}"
                    + did_you_mean(name, known_global | known_model)
                )

    check(recipe.parameters, "parameters", False)
    for prefix, models, slices in _input_groups(recipe):
        for i, m in enumerate(models or ()):
            check(m.parameters, f"{prefix}models[{i}].parameters", True)
        for i, s in enumerate(slices or ()):
            check(s.parameters, f"{prefix}slices[{i}].parameters", False)
            for j, src in enumerate(s.sources):
                check(src.parameters, f"{prefix}slices[{i}].sources[{j}].parameters", True)
    for name, mod in (recipe.modules or {}).items():
        check(mod.parameters, f"modules.{name}.parameters", False)


def _input_groups(recipe: MergeRecipe):
    """(path prefix, models, slices): the recipe's own, then each module's."""
    yield "", recipe.models, recipe.slices
    for name, mod in (recipe.modules or {}).items():
        yield f"modules.{name}.", mod.models, mod.slices


def coerce(p: Param, v) -> tuple[Any, str | None]:
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


class ParamEvaluator:
    """The parameters of each job, evaluated for its tensor name and layer position."""

    def __init__(self, recipe: MergeRecipe, method: MergeMethod, problems: Problems):
        self.recipe = recipe
        self.method = method
        self.problems = problems
        self._paths: dict[int, str] = {}  # id(ModelInput, SliceDef or ModuleDef) -> where it sits in the recipe
        for prefix, models, slices in _input_groups(recipe):
            for i, m in enumerate(models or ()):
                self._paths[id(m)] = f"{prefix}models[{i}].parameters"
            for i, sl in enumerate(slices or ()):
                self._paths[id(sl)] = f"{prefix}slices[{i}].parameters"
                for j, src in enumerate(sl.sources):
                    self._paths[id(src)] = f"{prefix}slices[{i}].sources[{j}].parameters"
        for name, mod in (recipe.modules or {}).items():
            self._paths[id(mod)] = f"modules.{name}.parameters"

    def _where(self, path: str, name: str) -> str:
        if self.recipe.source == "flags":
            return f"{_FLAGS.get(name, f'--param {name}')}: "
        return f"{self.recipe.locate(f'{path}.{name}')}: "

    def value(self, p: Param, tensor: str, t: float, levels: list, who: str = ""):
        """A parameter through the precedence levels [(params, path)]; None: not given and no default;
        INVALID: given but unusable (reported)."""
        for params, path in levels:
            if params and p.name in params:
                v = evaluate(params[p.name], tensor, t)
                if v is not None:
                    val, bad = coerce(p, v)
                    if bad:
                        self.problems.add(f"{self._where(path, p.name)}{p.name} {bad}{who}", tensor)
                        return INVALID
                    return val
        if p.required:
            return None
        return p.default

    def fill(
        self, job: Job, t: float, slice_: SliceDef | None, inputs: list[ModelInput], module: ModuleDef | None = None
    ) -> None:
        """Set ``job.params`` and ``job.model_params`` (one dict per input), then the method's own checks.
        Precedence (mergekit's): the model's, its slice's, its module's, the recipe's."""
        method = self.method
        top = [
            (slice_.parameters, self._paths.get(id(slice_), "slices")) if slice_ else (None, ""),
            (module.parameters, self._paths.get(id(module), "modules")) if module else (None, ""),
            (self.recipe.parameters, "parameters"),
        ]
        job.params = {}
        for p in method.params:
            v = self.value(p, job.name, t, top)
            if v is None:
                hint = "--t" if p.name == "t" else f"--param {p.name}=..."
                where = hint if self.recipe.source == "flags" else "parameters:"
                self.problems.add(f"{method.name} needs the parameter {p.name} (set it with {where})")
            job.params[p.name] = v
        job.model_params = []
        for mi in inputs:
            mp = {}
            for p in method.model_params:
                v = self.value(p, job.name, t, [(mi.parameters, self._paths.get(id(mi), "models")), *top], f" for {mi.model}")
                if v is None and p.required:
                    self.problems.add(
                        f"{p.name} is required for every model and {mi.model} has none (set it under its parameters:, or under parameters: for all)"
                    )
                mp[p.name] = v
            job.model_params.append(mp)
        if method.validate and self._complete(job):
            for msg in method.validate(job.params, job.model_params, [str(mi.model) for mi in inputs]):
                self.problems.add(msg, job.name)

    def _complete(self, job: Job) -> bool:
        """Whether every parameter of the job has a usable value (the method's checks need them all)."""
        if any(v is None or v is INVALID for v in job.params.values()):
            return False
        return not any(
            v is INVALID or (v is None and self.method.param(k).required) for mp in job.model_params for k, v in mp.items()
        )
