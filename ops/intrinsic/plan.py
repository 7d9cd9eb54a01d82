"""`surgeon intrinsic-dim` in the shape every command has: config -> plan -> run -> result.

    cfg = IntrinsicDimConfig.build(task="toy", grid="8,9,10")   # every value checked, nothing opened
    with plan_intrinsic_dim(cfg, model=None) as plan:           # the task, the model, the Problem; all checked
        result = run_intrinsic_dim(plan, progress)              # the baseline and the search (run.py)
    result.to_dict()                                            # the JSON `surgeon intrinsic-dim --json` prints

The plan refuses, before anything is loaded, settings that clash with each other or with MODEL and outputs
that cannot be written; then it loads the task, builds the model (tokenising text with MODEL's tokenizer),
fills every default (the task's, then the general ones, then the model's baseline learning rate and the
projection the device runs best) and checks d against D.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modelsurgeon.ops.core.device import resolve_device
from modelsurgeon.ops.core.errors import SurgeonError, UsageError
from modelsurgeon.ops.core.problems import Problems
from modelsurgeon.recipes.intrinsic_dim import IntrinsicDimConfig

from .models import BuiltModel, load_tokenizer, model_for_task
from .problem import Problem
from .projections import resolve_kind
from .search import check_plan
from .tasks import Task, load_task, task_kind

PYTHON_COMMAND = "python: modelsurgeon.intrinsic_dim"  # the provenance of a subspace file written from Python


@dataclass
class IntrinsicDimPlan:
    config: IntrinsicDimConfig  # every setting filled in: what runs, and the result's "recipe"
    task: Task
    built: BuiltModel
    problem: Problem
    device: torch.device
    subspace_path: str | None = None  # --save-subspace, as given
    plot_path: str | None = None  # --plot, as given
    force: bool = False
    command: str = PYTHON_COMMAND
    inputs: list[Path] = field(default_factory=list)  # what the outputs may not replace

    def outputs_locked(self) -> contextlib.ExitStack:
        """The locks of --save-subspace and --plot, held from before the search to the writing."""
        from modelsurgeon.ops.io.output import output_lock

        stack = contextlib.ExitStack()
        for path in (self.subspace_path, self.plot_path):
            if path is not None:
                stack.enter_context(output_lock(path))
        return stack

    def summary(self) -> str:
        """The line that says what is about to be measured, and where."""
        cfg, problem = self.config, self.problem
        return (
            f"intrinsic-dim: {self.built.label} on {self.task.spec}: D = {problem.D:,} ({problem.frozen:,} frozen), "
            f"{cfg.projection} projection, {cfg.optimizer} lr {cfg.lr:g}, {cfg.epochs} epoch(s), device {self.device}, "
            f"{torch.get_num_threads()} threads"
        )

    def close(self) -> None:
        if self.built.checkpoint is not None:
            self.built.checkpoint.close()

    def __enter__(self) -> IntrinsicDimPlan:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_settings(cfg: IntrinsicDimConfig, model: str | None) -> None:
    """How the settings combine with each other and with MODEL; all problems at once, nothing loaded."""
    problems = Problems("the settings", usage=True)
    if model is not None:
        clash = cfg.given("arch", "width", "depth")
        if clash:
            problems.add(f"{', '.join(clash)} describe a built-in network; they cannot be combined with MODEL {model}")
        refusal = task_kind(cfg.task).refuses_model
        if refusal:
            problems.add(refusal)
    if cfg.grid and cfg.given("d_start", "d_max", "rel_tol"):
        problems.add("--grid replaces the search: drop --d-start, --d-max and --rel-tol")
    problems.raise_if_any()


def check_outputs(subspace_path: str | Path | None, plot_path: str | Path | None, force: bool, inputs=()) -> None:
    """Refuse now, before any training, what writing the subspace file or the plot would refuse: an
    existing file (without --force, or not ours), a folder, an input, the same path twice, a place that
    cannot be written."""
    from modelsurgeon.ops.io.output import check_target, check_writable

    if plot_path is not None and importlib.util.find_spec("matplotlib") is None:
        raise SurgeonError("--plot needs matplotlib", "run: pip install 'modelsurgeon[plot]'  (or pip install matplotlib)")
    if plot_path is not None and subspace_path is not None:
        if os.path.realpath(plot_path) == os.path.realpath(subspace_path):
            raise UsageError(f"--plot and --save-subspace both name {plot_path}", "give two different files")
    for flag, path in (("--plot", plot_path), ("--save-subspace", subspace_path)):
        if path is None:
            continue
        try:
            check_target(path, "file", force, inputs)
            check_writable(path, 1 << 20)
        except SurgeonError as e:
            raise SurgeonError(f"{flag}: {e.message}", e.hint) from None


def task_inputs(spec: str) -> list[Path]:
    """The file a task reads, if it names one (an output may not replace it)."""
    from modelsurgeon.recipes.intrinsic_dim import parse_task_spec

    kind, arg = parse_task_spec(spec)
    if kind == "module" and arg is None:
        arg = spec.rpartition(":")[0]
    return [Path(arg).expanduser()] if arg and Path(arg).expanduser().is_file() else []


def plan_intrinsic_dim(
    cfg: IntrinsicDimConfig,
    model: str | None = None,
    revision: str | None = None,
    device: str = "auto",
    *,
    save_subspace: str | Path | None = None,
    plot: str | Path | None = None,
    force: bool = False,
    command: str = PYTHON_COMMAND,
) -> IntrinsicDimPlan:
    """Load the task and build the model (MODEL's checkpoint, or the task's own without it) and the Problem;
    check everything that can be checked before training."""
    check_settings(cfg, model)
    check_outputs(save_subspace, plot, force)
    dev = resolve_device(device)
    task = load_task(cfg.task)
    settings = cfg.with_task_defaults(task.defaults)
    built = model_for_task(task, settings, model, revision)
    try:
        inputs = task_inputs(cfg.task) + (built.checkpoint.input_paths() if built.checkpoint is not None else [])
        check_outputs(save_subspace, plot, force, inputs)  # again, now that the inputs are known
        if task.needs_tokenizer:
            if built.checkpoint is None:
                raise SurgeonError(f"task {task.spec} is text; it needs a transformers MODEL with a tokenizer")
            model_max = getattr(built.module.config, "max_position_embeddings", None)
            task.tokenize(load_tokenizer(built.checkpoint), settings.max_tokens, model_max)
        if settings.baseline_lr is None:
            settings = dataclasses.replace(settings, baseline_lr=built.default_baseline_lr)
        settings = dataclasses.replace(settings, projection=resolve_kind(settings.projection, dev))
        problem = Problem(built, task, dev, settings.include, settings.exclude, settings.said)
        check_plan(problem, cfg)
    except BaseException:
        if built.checkpoint is not None:
            built.checkpoint.close()
        raise
    return IntrinsicDimPlan(
        settings,
        task,
        built,
        problem,
        dev,
        None if save_subspace is None else str(save_subspace),
        None if plot is None else str(plot),
        force,
        command,
        inputs,
    )
