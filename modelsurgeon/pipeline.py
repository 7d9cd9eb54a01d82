"""`surgeon run`: the steps of a run recipe, each through its family's public plan/run, then one rename.

    cfg = RunConfig.read("recipe.yaml")                 # recipes/run.py: every problem, with line and column
    with plan_run(cfg, "out/") as plan:                 # every step checked before any work
        result = run_run(plan, progress)                # the passes, the gates, the rename into place

Each writing step is one pass that reads the previous output and writes the next, in a hidden work folder
beside OUT that is removed afterwards (``keep_intermediate`` moves it to ``OUT.steps/``); the last writing
step's output is renamed to OUT only after every step, the ``report`` gates included, succeeded. Every step's
output carries the same provenance as its command would write, except that the command is
``surgeon run (step N of M: KIND)`` and the run recipe (``RunConfig.to_dict()``, the tool version) is added:
no output path, no time, so two runs of one recipe write the same bytes into any two folders.

This module sits beside ``api.py``: it composes the families, which never import each other.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelsurgeon.ops.core.errors import PlanError, SurgeonError
from modelsurgeon.ops.core.progress import SILENT, Progress
from modelsurgeon.ops.core.result import Result
from modelsurgeon.ops.io.output import DEFAULT_MAX_SHARD, Output
from modelsurgeon.ops.io.writer import parse_size, run_provenance
from modelsurgeon.recipes.run import RunConfig, Step

RECIPE_FILE = "surgeon_run.yaml"  # the run recipe, written into an output folder
STEPS_SUFFIX = ".steps"  # --keep-intermediate: OUT.steps/ holds each step's output


@dataclass
class RunPlan:
    """The checked recipe, where it writes, and what each step was checked against."""

    config: RunConfig
    output: Path
    force: bool
    max_shard_size: int
    keep_intermediate: bool
    checked: list[dict] = field(default_factory=list)  # per step: what the dry run found
    notes: list[str] = field(default_factory=list)

    @property
    def output_kind(self) -> str:
        return self.config.output_kind

    @property
    def steps_folder(self) -> Path:
        return self.output.parent / (self.output.name + STEPS_SUFFIX)

    def passes(self) -> list[str]:
        """One line per pass, as the dry run prints it."""
        out = []
        n = len(self.config.steps)
        last_writer = max(i for i, s in enumerate(self.config.steps) if s.writes)
        for i, s in enumerate(self.config.steps):
            if s.kind == "report":
                what = "reads the model so far" + (f"; requires {', '.join(s.config.require)}" if s.config.require else "")
            else:
                dest = str(self.output) if i == last_writer else "a temporary folder"
                what = f"one streaming pass into {dest}"
            out.append(f"step {i + 1} of {n}: {s.kind}: {what}")
        return out

    def result(self) -> RunResult:
        return RunResult(
            output=str(self.output),
            dry_run=True,
            recipe=self.config.to_dict(),
            passes=self.passes(),
            steps=self.checked,
            notes=list(self.notes),
        )

    def close(self) -> None:
        pass

    def __enter__(self) -> RunPlan:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class RunResult(Result):
    """What `surgeon run` did: the recipe as run, the passes, and each step's own result."""

    output: str
    dry_run: bool
    recipe: dict
    passes: list[str]
    steps: list[dict]
    notes: list[str] = field(default_factory=list)
    intermediate: str | None = None  # OUT.steps/ with --keep-intermediate
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(s.get("ok", True) for s in self.steps)


# --------------------------------------------------------------------------------------------
# the plan: every problem before any work


def step_command(i: int, n: int, kind: str) -> str:
    """What a step's output records as its command: no path, no time."""
    return f"surgeon run (step {i} of {n}: {kind})"


def _stand_in(cfg: RunConfig) -> str:
    """The checkpoint every step is checked against: ``model``, or the first merge's base (a merge keeps
    its base's tensor names and shapes, as do prune and quantize's inputs)."""
    first = cfg.steps[0]
    if first.kind != "merge":
        return str(cfg.model)
    recipe = first.config.recipe
    ref = recipe.base_model or recipe.referenced_models()[0]
    return ref.model


def _inputs(cfg: RunConfig) -> list[str]:
    out = [] if cfg.model is None else [cfg.model]
    for s in cfg.steps:
        if s.kind == "merge":
            for ref in s.config.recipe.referenced_models():
                out.append(ref.model)
                if ref.lora:
                    out.append(ref.lora)
        elif s.kind == "report" and s.config.compare:
            out.append(s.config.compare)
    return out


def _overwrites(output: Path, inputs: list[str]) -> str | None:
    out = output.expanduser().resolve()
    for spec in inputs:
        p = Path(spec).expanduser()
        if not p.exists():
            continue
        p = p.resolve()
        if p == out or out in p.parents:
            return spec
    return None


def plan_run(
    cfg: RunConfig,
    output: str | Path,
    *,
    force: bool = False,
    max_shard_size: str | int = DEFAULT_MAX_SHARD,
    keep_intermediate: bool = False,
) -> RunPlan:
    """Check the whole recipe before any work: the output, the inputs, and every step planned against the
    input's headers (``_stand_in``). Raises one PlanError listing every problem."""
    out = Path(output)
    plan = RunPlan(cfg, out, force, parse_size(max_shard_size), keep_intermediate)
    problems: list[str] = []
    try:
        Output(out, force).check(cfg.output_kind)
    except SurgeonError as e:
        problems.append(str(e))
    if cfg.output_kind == "dir" and out.suffix == ".gguf":
        problems.append(f"-o {out} names a .gguf file, but the recipe's last writing step does not write GGUF")
    hit = _overwrites(out, _inputs(cfg))
    if hit is not None:
        problems.append(f"-o {out} would overwrite the input {hit}: pick another output (--force never replaces an input)")
    if keep_intermediate and plan.steps_folder.exists():
        problems.append(f"{plan.steps_folder} (for --keep-intermediate) already exists: remove it or pick another -o")
    probe = out.parent / f".{out.name}.check-{secrets.token_hex(3)}"  # never created: only names a free output
    stand_in = None
    n = len(cfg.steps)
    for i, s in enumerate(cfg.steps):
        label = f"step {i + 1} of {n} ({s.kind})"
        try:
            plan.checked.append({"step": i + 1, "kind": s.kind, **_check_step(s, stand_in or _stand_in(cfg), probe, plan)})
        except PlanError as e:
            problems.extend(f"{label}: {p}" for p in e.problems)
        except SurgeonError as e:
            problems.append(f"{label}: {e}")
        stand_in = stand_in or _stand_in(cfg)
    if problems:
        raise PlanError(problems, "the run")
    return plan


def _check_step(s: Step, model: str, probe: Path, plan: RunPlan) -> dict:
    """Plan one step against ``model``'s headers; what its dry run would say, in brief."""
    if s.kind == "merge":
        from modelsurgeon.ops.merge.plan import plan_merge

        with plan_merge(s.config, Output(probe)) as p:
            plan.notes.extend(f"warning: {w}" for w in p.warnings)
            r = p.result(None).to_dict()
        return {"models": [str(m) for m in s.config.recipe.referenced_models()], "merge_method": r.get("merge_method")}
    if s.kind == "prune":
        from modelsurgeon.ops.prune.plan import plan_prune

        with plan_prune(s.config, model, None) as p:
            r = p.result().to_dict()
        return {"targets": r.get("num_targets"), "planned_sparsity": r.get("sparsity"), "pattern": r.get("pattern")}
    if s.kind == "quantize":
        from modelsurgeon.ops.quantize.plan import plan_quantize

        target = probe.with_suffix(".gguf") if s.gguf else probe
        with plan_quantize(s.config, model, str(target)) as p:
            plan.notes.extend(x for x in p.notes if x not in plan.notes)
            schemes = sorted({p.spec_for(t).scheme.name for t in p.targets})
            return {"targets": len(p.targets), "format": p.format, "schemes": schemes}
    from modelsurgeon.ops.report.run import plan_report

    with plan_report(s.config, model):
        return {"require": list(s.config.require)}


# --------------------------------------------------------------------------------------------
# the run


def run_run(plan: RunPlan, progress: Progress = SILENT) -> RunResult:
    """Every step in order through a work folder beside the output; the last output renamed into place."""
    cfg = plan.config
    n = len(cfg.steps)
    for note in plan.notes:
        progress.note(note)
    out = plan.output
    work = out.parent / f".{out.name}.run-{os.getpid()}-{secrets.token_hex(3)}"
    out.parent.mkdir(parents=True, exist_ok=True)
    work.mkdir()
    t0 = time.perf_counter()
    results: list[dict] = []
    current = str(cfg.model) if cfg.model is not None else None
    last: Path | None = None
    meta = provenance_of(cfg)
    try:
        with run_provenance(meta):
            for i, s in enumerate(cfg.steps):
                progress.note(f"step {i + 1} of {n}: {s.kind}")
                command = step_command(i + 1, n, s.kind)
                if s.kind == "report":
                    r = _report(s, current)
                    results.append({"step": i + 1, "kind": "report", **r.to_dict(), "ok": r.ok})
                    if not r.ok:
                        raise SurgeonError(
                            f"step {i + 1} of {n} (report): requirement failed: {'; '.join(r.failures)}",
                            "nothing was written"
                            + (f"; the steps so far are in {plan.steps_folder}" if plan.keep_intermediate else ""),
                        )
                    continue
                dest = work / (f"{i + 1:02d}-{s.kind}" + (".gguf" if s.gguf else ""))
                r = _write_step(s, current, dest, command, plan, meta, progress)
                results.append({"step": i + 1, "kind": s.kind, **r.to_dict()})
                current, last = str(dest), dest
        assert last is not None
        if last.is_dir():
            (last / RECIPE_FILE).write_text(cfg.to_yaml())
        _commit(last, out, plan.force)
    finally:
        if plan.keep_intermediate:
            if plan.steps_folder.exists() and plan.force:
                shutil.rmtree(plan.steps_folder)
            if not plan.steps_folder.exists():
                os.replace(work, plan.steps_folder)
        shutil.rmtree(work, ignore_errors=True)
    for r in results:
        if r.get("output"):
            r["output"] = str(out) if Path(r["output"]) == last else _rename(r["output"], work, plan)
    return RunResult(
        output=str(out),
        dry_run=False,
        recipe=cfg.to_dict(),
        passes=plan.passes(),
        steps=results,
        notes=list(plan.notes),
        intermediate=str(plan.steps_folder) if plan.keep_intermediate else None,
        seconds=round(time.perf_counter() - t0, 3),
    )


def _rename(path: str, work: Path, plan: RunPlan) -> str:
    """A step's output as the user can find it: OUT for the last, OUT.steps/... when kept, else gone."""
    p = Path(path)
    if p.parent != work:
        return path
    if plan.keep_intermediate:
        return str(plan.steps_folder / p.name)
    return ""


def provenance_of(cfg: RunConfig) -> dict[str, str]:
    """What every step's output records of the run: the recipe as run (canonical JSON)."""
    return {"modelsurgeon_run": json.dumps(cfg.to_dict(), sort_keys=True)}


def _commit(src: Path, target: Path, force: bool) -> None:
    """Move the finished output into place, replacing an existing one only with ``force`` and only now."""
    old = None
    if target.exists() or target.is_symlink():
        if not force:
            raise SurgeonError(f"output {target} already exists", "pass --force to replace it, or pick another -o")
        old = target.parent / f".{target.name}.old-{secrets.token_hex(3)}"
        os.replace(target, old)
    os.replace(src, target)
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def _report(s: Step, model: str) -> Any:
    from modelsurgeon.ops.report.run import plan_report, run_report

    with plan_report(s.config, model) as p:
        return run_report(p, SILENT)


def _write_step(s: Step, model: str | None, dest: Path, command: str, plan: RunPlan, meta: dict, progress: Progress) -> Any:
    shard = plan.max_shard_size
    if s.kind == "merge":
        from modelsurgeon.ops.merge.plan import plan_merge
        from modelsurgeon.ops.merge.run import run_merge

        with plan_merge(s.config, Output(dest, False, shard)) as p:
            for w in p.warnings:
                progress.note(f"warning: {w}")
            return run_merge(p, progress, command)
    if s.kind == "prune":
        from modelsurgeon.ops.prune.plan import plan_prune
        from modelsurgeon.ops.prune.run import run_prune

        with plan_prune(s.config, model, Output(dest, False, shard)) as p:
            return run_prune(p, progress, command)
    from modelsurgeon.ops.quantize.plan import plan_quantize
    from modelsurgeon.ops.quantize.run import run_quantize

    with plan_quantize(s.config, model, str(dest), max_shard_size=shard) as p:
        if p.gguf_writer is not None:  # a GGUF file holds the run's provenance in its own metadata
            from modelsurgeon import __version__

            p.add_gguf_metadata(
                {
                    "modelsurgeon.version": __version__,
                    "modelsurgeon.command": command,
                    "modelsurgeon.run": meta["modelsurgeon_run"],
                }
            )
        return run_quantize(p, progress, command)


def run(
    recipe: str | Path | RunConfig,
    output: str | Path,
    *,
    model: str | None = None,
    dry_run: bool = False,
    force: bool = False,
    keep_intermediate: bool = False,
    max_shard_size: str | int = DEFAULT_MAX_SHARD,
    progress: Progress | None = None,
) -> RunResult:
    """Run a recipe of steps (``recipes/run.py``) into ``output``; ``dry_run`` checks and plans only."""
    if isinstance(recipe, RunConfig):
        cfg = recipe if model is None else recipe.replace(model=model)
    else:
        cfg = RunConfig.read(recipe, model)
    with plan_run(cfg, output, force=force, max_shard_size=max_shard_size, keep_intermediate=keep_intermediate) as plan:
        if dry_run:
            return plan.result()
        return run_run(plan, progress or SILENT)
