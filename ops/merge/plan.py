"""Planning a merge: check everything and lay out every output tensor, reading no tensor data.

    cfg = MergeConfig.build("ties.yml", seed=0)
    with plan_merge(cfg, Output.of("out/")) as plan:   # PlanError lists every problem at once
        plan.result()                                   # the dry run: what would be written
        result = run_merge(plan, progress)              # ops/merge/run.py: stream, merge, write

``plan_merge`` looks the method up in the registry first (a misspelt method fails before anything is
opened), resolves the device, checks the output (an existing one fails before any work) and the
parameter names, then opens every model (safetensors headers, configs, LoRA adapters), lays out the
output (``layout.py``), builds one job per output tensor (``jobs.py``: sources, shapes, dtype, every
parameter evaluated and range-checked, ``params.py``) and aligns vocabularies when asked (``vocab.py``).
Every problem found is reported at once, in one ``PlanError``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from modelsurgeon.ops.core.device import resolve_device
from modelsurgeon.ops.core.errors import PlanError, SurgeonError
from modelsurgeon.ops.core.problems import Problems
from modelsurgeon.ops.core.result import Result
from modelsurgeon.ops.io.checkpoint import open_checkpoint, quantized_reason, torch_dtype_to_st
from modelsurgeon.ops.io.output import Output, local_inputs
from modelsurgeon.ops.io.writer import TensorSpec
from modelsurgeon.recipes.merge import MergeConfig, MergeRecipe, ModelRef

from .jobs import Job, JobBuilder, Models, OpenModel, torch_dtype
from .layout import Layout, lay_out
from .methods import MergeMethod, get_method
from .params import check_param_names
from .vocab import plan_alignment, plan_chat_template


@dataclass
class MergeResult(Result):
    """What ``surgeon merge --json`` prints: the plan, and after a merge what was written."""

    method: str
    base: str | None
    models: list[str]
    tensors: int
    merged_tensors: int
    copied_tensors: int
    output_bytes: int
    peak_memory_estimate: int | None  # dry run only
    dtypes: dict[str, int]  # saved dtype -> number of values
    seed: int
    device: str
    config_from: str
    tokenizer_from: str
    warnings: list[str]
    dry_run: bool
    output: str | None
    files: list[str] | None = None  # after a merge: the output folder's files
    bytes_written: int | None = None
    seconds: float | None = None
    stages: list[str] | None = None  # a multi-document recipe: the stages, in the order they run

    def to_dict(self) -> dict:
        out = super().to_dict()
        if self.stages is None:
            out.pop("stages")
        if self.dry_run:
            for key in ("files", "bytes_written", "seconds"):
                out.pop(key)
        else:
            out.pop("peak_memory_estimate")
            out["seconds"] = round(self.seconds or 0.0, 3)
        return out


@dataclass
class MergePlan:
    config: MergeConfig
    method: MergeMethod
    models: Models
    jobs: list[Job]
    output: Output | None
    layout: Layout
    device: torch.device
    warnings: list[str] = field(default_factory=list)

    @property
    def recipe(self) -> MergeRecipe:
        return self.config.recipe

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def compute_dtype(self) -> torch.dtype | None:
        return torch_dtype(self.recipe.dtype)

    def specs(self) -> list[TensorSpec]:
        return [TensorSpec(j.name, j.shape, j.dtype) for j in self.jobs]

    @property
    def output_bytes(self) -> int:
        return sum(s.nbytes for s in self.specs())

    def input_bytes(self, job: Job) -> int:
        return sum(self.models.info(s).nbytes for s in job.sources)

    def peak_estimate(self) -> int:
        """Rough peak memory in bytes above the interpreter: read-ahead inputs (at most 1.5x the largest
        tensor's) plus the largest tensor's workspace (the output, and one byte per entry per model for
        stored random masks when streaming; float32 copies otherwise)."""
        inputs = work = 0
        for j in self.jobs:
            numel = j.numel
            inputs = max(inputs, self.input_bytes(j))
            out = numel * torch.empty((), dtype=j.dtype).element_size()
            if j.copy:
                w = out
            elif self.method.streams and j.row_maps is None and j.vocab is None:
                w = out + numel * len(j.inputs)
            else:
                w = out + numel * 4 * (len(j.sources) + 3)
            work = max(work, w)
        return int(1.5 * inputs + work)

    def result(self, output: str | None = None) -> MergeResult:
        """The dry run's result; ``output`` names the output as the caller gave it (default: the plan's)."""
        merged = sum(1 for j in self.jobs if not j.copy)
        base = self.recipe.base_model
        if output is None and self.output is not None:
            output = str(self.output.path)
        return MergeResult(
            method=self.method.name,
            base=str(base) if base is not None else None,
            models=[m.label for m in self.models],
            tensors=len(self.jobs),
            merged_tensors=merged,
            copied_tensors=len(self.jobs) - merged,
            output_bytes=self.output_bytes,
            peak_memory_estimate=self.peak_estimate(),
            dtypes=_dtype_counts(self.jobs),
            seed=self.seed,
            device=str(self.device),
            config_from=self.models[self.layout.config_model].label,
            tokenizer_from=self.models[self.layout.tokenizer_model].label,
            warnings=list(self.warnings),
            dry_run=True,
            output=output,
        )

    def close(self) -> None:
        self.models.close()

    def __enter__(self) -> MergePlan:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _dtype_counts(jobs: list[Job]) -> dict[str, int]:
    out: dict[str, int] = {}
    for j in jobs:
        k = torch_dtype_to_st(j.dtype)
        out[k] = out.get(k, 0) + j.numel
    return out


def open_model(ref: ModelRef):
    if ref.lora:
        from .lora import open_with_adapter

        return open_with_adapter(ref.model, ref.lora)
    return open_checkpoint(ref.model)


def open_models(refs: list[ModelRef], opener: Callable[[ModelRef], Any], problems: Problems) -> Models:
    """Open every model (headers only); when one fails, close the rest and raise every problem so far
    (the layout cannot be checked without every model)."""
    models = Models()
    failed = False
    try:
        for ref in refs:
            try:
                models.append(OpenModel(ref, opener(ref)))
            except PlanError as e:
                failed = True
                problems.extend(e.problems)
            except SurgeonError as e:
                failed = True
                problems.add(f"{ref}: {e}")
    except BaseException:
        models.close()
        raise
    if failed:
        models.close()
        raise PlanError(problems.lines(), problems.what)
    return models


def plan_merge(config: MergeConfig, output: Output | None = None, *, opener: Callable[[ModelRef], Any] = open_model) -> MergePlan:
    """Check everything that can be checked before reading a tensor; raise PlanError listing all problems.

    The plan holds the opened models: close it (or use it as a context manager); ``run_merge`` closes it."""
    recipe = config.recipe
    device = resolve_device(config.device)
    method = get_method(recipe.merge_method)  # the registry first: nothing is opened for a misspelt method
    if output is not None:
        output.check("dir", inputs=local_inputs(*(x for r in recipe.referenced_models() for x in (r.model, r.lora))))
    problems = Problems("the merge")
    warnings: list[str] = []
    check_param_names(recipe, method, problems, warnings)
    models = open_models(recipe.referenced_models(), opener, problems)
    try:
        if output is not None:  # again, now that the inputs are known
            output.check("dir", inputs=[p for m in models for p in getattr(m.ck, "input_paths", list)()])
        for m in models:
            reason = quantized_reason(m.ck) if hasattr(m.ck, "infos") and getattr(m.ck, "source_format", None) is None else None
            if reason is not None:
                problems.add(
                    f"{m.label} is quantized ({reason}); a form that is not read yet: merge the full-precision checkpoints"
                )
        builder = JobBuilder(recipe, method, models, problems)
        layout = lay_out(builder, warnings)
        plan_alignment(builder, layout)
        plan_chat_template(builder, layout)
        if problems:
            # always the block form, "N problem(s) with the merge, nothing was written", one per line
            raise PlanError(problems.lines(), problems.what)
        return MergePlan(config, method, models, builder.jobs, output, layout, device, warnings)
    except BaseException:
        models.close()
        raise
