"""The output tensors of a merge (jobs), and the one function that builds each of them.

Every layout (``models:``, and the slices' layers and non-layer tensors) describes an output tensor the
same way: its name, the tensor that decides whether it is float (a non-float tensor is copied from it),
and for every participating model the tensor it contributes. ``JobBuilder.add`` turns that into a
``Job``: it finds each model's tensor (a tied ``lm_head`` falls back to the embedding), checks the
shapes (vocabulary-indexed tensors that differ only in rows are set aside for alignment), chooses the
output dtype, and evaluates every parameter for the tensor. Problems are collected, not raised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from modelsurgeon.ops.core.names import LM_HEAD, NUM_LAYERS_KEYS, layer_span, tied_head_source
from modelsurgeon.ops.core.problems import Problems
from modelsurgeon.recipes.merge import MergeRecipe, ModelInput, ModelRef, ModuleDef, SliceDef

from .methods import MergeMethod
from .params import ParamEvaluator


def torch_dtype(name: str | None) -> torch.dtype | None:
    return None if name is None else getattr(torch, name)


@dataclass
class Source:
    model: int  # index into the plan's models
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
    vocab: Any = None  # a built tokenizer's layout of the rows (vocab.VocabMap), for [base] + inputs

    @property
    def sources(self) -> list[Source]:
        return ([self.base] if self.base is not None else []) + self.inputs

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class OpenModel:
    ref: ModelRef
    ck: Any  # Checkpoint or LoraCheckpoint

    @property
    def label(self) -> str:
        return str(self.ref)


class Models(list):
    """The opened models of a merge (a list of ``OpenModel``), with the lookups the planner needs."""

    def ck(self, i: int):
        return self[i].ck

    def index_of(self, ref: ModelRef) -> int:
        return next(i for i, m in enumerate(self) if m.ref.same_as(ref))

    def info(self, s: Source):
        return self[s.model].ck.info(s.name)

    def find(self, i: int, name: str) -> str | None:
        """The tensor in model i that plays ``name`` (a tied head falls back to the embedding)."""
        ck = self.ck(i)
        if name in ck:
            return name
        alias = ck.tied_aliases().get(name) if hasattr(ck, "tied_aliases") else None
        if alias is None and name == LM_HEAD:
            alias = tied_head_source(ck, ck.config, default_tied=True)
        return alias

    def num_layers(self, i: int) -> int:
        """config.json's layer count, else one more than the largest layer number in the names."""
        cfg = self.ck(i).config or {}
        for key in NUM_LAYERS_KEYS:
            if isinstance(cfg.get(key), int):
                return cfg[key]
        idx = [s[0] for n in self.ck(i).names() if (s := layer_span(n))]
        return max(idx) + 1 if idx else 0

    def close(self) -> None:
        for m in self:
            m.ck.close()


class JobBuilder:
    """Builds a plan's jobs one output tensor at a time; problems go to ``problems``."""

    def __init__(self, recipe: MergeRecipe, method: MergeMethod, models: Models, problems: Problems):
        self.recipe = recipe
        self.method = method
        self.models = models
        self.problems = problems
        self.params = ParamEvaluator(recipe, method, problems)
        self.jobs: list[Job] = []
        self.vocab_tensors: set[str] = set()  # shapes differ only in vocabulary rows: aligned, or refused

    def add(
        self,
        out_name: str,
        lead: tuple[int, str],
        members: list[tuple[int, str]],
        *,
        has_base: bool,
        t: float,
        inputs: list[ModelInput],
        slice_: SliceDef | None = None,
        module: ModuleDef | None = None,
    ) -> None:
        """Append the job that writes ``out_name``.

        ``lead`` (model, tensor) decides whether the tensor is float; a non-float one is copied from it.
        ``members`` are (model, tensor wanted) for every participant, the base first when ``has_base``;
        ``inputs`` the recipe entries of the non-base participants, in order, and ``slice_`` and ``module``
        theirs, where parameters are looked up; ``t`` the layer position gradients are evaluated at.
        """
        m, name = lead
        info = self.models.ck(m).info(name)
        if not info.is_float:
            self.jobs.append(Job(out_name, tuple(info.shape), info.torch_dtype, None, [Source(m, name)], copy=True))
            return
        srcs = self._resolve(out_name, members)
        if srcs is None:
            return
        first = self.models.info(srcs[0])
        job = Job(
            out_name,
            tuple(first.shape),
            self.out_dtype(first.torch_dtype),
            srcs[0] if has_base else None,
            srcs[1:] if has_base else srcs,
        )
        self._check_shapes(job)
        self.params.fill(job, t, slice_, inputs, module)
        self.jobs.append(job)

    def out_dtype(self, src: torch.dtype) -> torch.dtype:
        """The saved dtype of a float tensor: out_dtype, else dtype, else the source's."""
        return torch_dtype(self.recipe.out_dtype or self.recipe.dtype) or src

    def _resolve(self, out_name: str, members: list[tuple[int, str]]) -> list[Source] | None:
        out, ok = [], True
        for m, want in members:
            got = self.models.find(m, want)
            if got is None:
                self.problems.add(f"{self.models[m].label} has no tensor {want}", out_name)
                ok = False
            else:
                out.append(Source(m, got))
        return out if ok else None

    def _check_shapes(self, job: Job) -> None:
        """Every source has the job's shape (vocabulary tensors are checked when they are aligned)."""
        shapes = {s.model: tuple(self.models.info(s).shape) for s in job.sources}
        if all(sh == job.shape for sh in shapes.values()):
            return
        if self._vocab_like(shapes):
            self.vocab_tensors.add(job.name)
            return
        first = self.models[job.sources[0].model].label
        for m, sh in shapes.items():
            if sh != job.shape:
                self.problems.add(f"{self.models[m].label} has shape {list(sh)} but {first} has {list(job.shape)}", job.name)

    def _vocab_like(self, shapes: dict[int, tuple]) -> bool:
        """Shapes that differ only in rows, each model's row count its config's vocab_size."""
        rest = {sh[1:] for sh in shapes.values()}
        if len(rest) != 1 or not next(iter(shapes.values())):
            return False
        for m, sh in shapes.items():
            vs = (self.models.ck(m).config or {}).get("vocab_size")
            if not isinstance(vs, int) or sh[0] != vs:
                return False
        return True
