"""`surgeon run`: the steps of a run recipe, each through its family's public plan/run, in passes, then one rename.

    cfg = RunConfig.read("recipe.yaml")                 # recipes/run.py: every problem, with line and column
    with plan_run(cfg, "out/") as plan:                 # every step checked before any work; plan.passes()
        result = run_run(plan, progress)                # the passes, the gates, the rename into place

The plan groups the steps into passes. Consecutive steps that work tensor by tensor are one pass: a merge or
a data-free prune hands each tensor it produces to the next step (``fused.StreamedCheckpoint``), which was
planned against exactly the headers and config the step would have written, and the last step of the pass
writes with its own run function; each input tensor is read once, each output tensor written once, and the
bytes are those of the steps run one after another. A step that must see its whole input first (a global
prune's statistics, --target-bpw, the calibrated methods) or a report starts a new pass, reading the last
pass's output from a hidden work folder beside OUT that is removed afterwards (``keep_intermediate`` runs
every step as a pass of its own and moves the folder to ``OUT.steps/``). The last writing step's output is
renamed to OUT only after every step, the ``report`` gates included, succeeded. Every output carries the
same provenance as its command would write, except that the command is ``surgeon run (step N of M: KIND)``
and the run recipe (``RunConfig.to_dict()``, the tool version) is added: no output path, no time, so two
runs of one recipe write the same bytes into any two folders.

This module sits beside ``api.py``: it composes the families, which never import each other.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
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
class Pass:
    """Steps run as one pass: writing steps fused into one stream (each tensor read once, written once), or
    one report step. ``alone`` says why a writing step could not take the stream of the step before."""

    steps: list[int]  # 0-based step indices
    alone: str | None = None


@dataclass
class RunPlan:
    """The checked recipe, where it writes, its passes, and what each step was checked against."""

    config: RunConfig
    output: Path
    force: bool
    max_shard_size: int
    keep_intermediate: bool
    checked: list[dict] = field(default_factory=list)  # per step: what the dry run found
    notes: list[str] = field(default_factory=list)
    plan_passes: list[Pass] = field(default_factory=list)

    @property
    def output_kind(self) -> str:
        return self.config.output_kind

    @property
    def steps_folder(self) -> Path:
        return self.output.parent / (self.output.name + STEPS_SUFFIX)

    def passes(self) -> list[str]:
        """One line per pass, as the dry run prints it."""
        out = []
        steps = self.config.steps
        last_writer = max(i for i, s in enumerate(steps) if s.writes)
        total = len(self.plan_passes)
        for k, p in enumerate(self.plan_passes):
            first, last = p.steps[0], p.steps[-1]
            nums = f"step {first + 1}" if first == last else f"steps {first + 1}-{last + 1}"
            kinds = " -> ".join(steps[i].kind for i in p.steps)
            head = f"pass {k + 1} of {total} ({nums}): {kinds}"
            s = steps[first]
            if s.kind == "report":
                out.append(
                    head + ": reads the model so far" + (f"; requires {', '.join(s.config.require)}" if s.config.require else "")
                )
                continue
            src = (
                "the merged models"
                if s.kind == "merge"
                else ("the model" if first == 0 or not _writer_before(steps, first) else "the temporary folder")
            )
            dest = str(self.output) if last == last_writer else "a temporary folder"
            if len(p.steps) > 1:
                what = f"one streaming pass, each tensor read once from {src} and written once into {dest}"
            else:
                what = f"one streaming pass from {src} into {dest}"
            out.append(head + f": {what}" + (f" (a pass of its own: {p.alone})" if p.alone else ""))
        return out

    def result(self) -> RunResult:
        return RunResult(
            output=str(self.output),
            dry_run=True,
            recipe=self.config.to_dict(),
            passes=self.passes(),
            steps=self.checked,
            notes=list(self.notes),
            pass_steps=[[i + 1 for i in p.steps] for p in self.plan_passes],
        )

    def close(self) -> None:
        pass

    def __enter__(self) -> RunPlan:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _writer_before(steps, i: int) -> bool:
    return any(s.writes for s in steps[:i])


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
    pass_steps: list[list[int]] = field(default_factory=list)  # the step numbers of each pass

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
    with tempfile.TemporaryDirectory(prefix="surgeon-run-plan-") as tmp:  # the streamed steps' config files
        _plan_steps(plan, probe, Path(tmp), problems)
    if problems:
        raise PlanError(problems, "the run")
    return plan


def _plan_steps(plan: RunPlan, probe: Path, tmp: Path, problems: list[str]) -> None:
    """Plan every step against the headers of its input exactly as the step before would write it (a
    ``StreamedCheckpoint``: nothing is read but headers and config files), and group the steps into passes:
    a writing step joins the pass of the writing step before when that one hands its tensors on in order
    (merge, a data-free prune) and this one reads its input once, tensor by tensor (``fused.*_reads_once``)."""
    cfg = plan.config
    n = len(cfg.steps)
    current: Any = cfg.model if cfg.model is not None else None
    gives = False  # whether the step before is a writing step that can hand its tensors on
    for i, s in enumerate(cfg.steps):
        label = f"step {i + 1} of {n} ({s.kind})"
        reason, nxt, hands_on = None, current, False
        try:
            checked, reason, nxt, hands_on = _check_step(s, current, probe, tmp / f"{i + 1:02d}-{s.kind}", plan)
            plan.checked.append({"step": i + 1, "kind": s.kind, **checked})
        except PlanError as e:
            problems.extend(f"{label}: {p}" for p in e.problems)
        except SurgeonError as e:
            problems.append(f"{label}: {e}")
        if nxt is None:  # a merge that failed: the later steps are checked against its base
            nxt = _stand_in(cfg)
        last = plan.plan_passes[-1] if plan.plan_passes else None
        if s.kind == "report":
            plan.plan_passes.append(Pass([i]))
        elif gives and last is not None and reason is None and not plan.keep_intermediate:
            last.steps.append(i)
        else:
            alone = None
            if gives and plan.keep_intermediate:
                alone = "--keep-intermediate writes every step's output"
            elif gives:
                alone = reason
            plan.plan_passes.append(Pass([i], alone))
        gives = s.writes and hands_on
        current = nxt


def _check_step(s: Step, model: Any, probe: Path, folder: Path, plan: RunPlan) -> tuple[dict, str | None, Any, bool]:
    """Plan one step against ``model`` (a path, or the streamed output of the step before): what its dry run
    says in brief, why it cannot read a stream (None: it can), what the next step reads, and whether this step
    can hand its tensors on as a stream."""
    from .fused import StreamedCheckpoint, prune_reads_once, quantize_reads_once

    if s.kind == "merge":
        from modelsurgeon.ops.merge.plan import plan_merge

        with plan_merge(s.config, Output(probe)) as p:
            plan.notes.extend(f"warning: {w}" for w in p.warnings)
            r = p.result(None).to_dict()
            nxt = StreamedCheckpoint.after_merge(p, folder)
        checked = {"models": [str(m) for m in s.config.recipe.referenced_models()], "merge_method": r.get("merge_method")}
        return checked, None, nxt, True
    if s.kind == "prune":
        from modelsurgeon.ops.prune.plan import plan_prune

        with plan_prune(s.config, model, None) as p:
            r = p.result().to_dict()
            reason = prune_reads_once(p)
            nxt = StreamedCheckpoint.after(p.ck, folder)
        checked = {"targets": r.get("num_targets"), "planned_sparsity": r.get("sparsity"), "pattern": r.get("pattern")}
        return checked, reason, nxt, not s.config.calibrated
    if s.kind == "quantize":
        from modelsurgeon.ops.quantize.plan import plan_quantize

        target = probe.with_suffix(".gguf") if s.gguf else probe
        with plan_quantize(s.config, model, str(target)) as p:
            plan.notes.extend(x for x in p.notes if x not in plan.notes)
            schemes = sorted({p.spec_for(t).scheme.name for t in p.targets})
            checked = {"targets": len(p.targets), "format": p.format, "schemes": schemes}
            reason = quantize_reads_once(p)
        return checked, reason, model, False  # a report after it reads the dequantized view: the same names
    from modelsurgeon.ops.report.run import plan_report

    with plan_report(s.config, model):
        return {"require": list(s.config.require)}, None, model, False


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
            for k, p in enumerate(plan.plan_passes):
                first = cfg.steps[p.steps[0]]
                kinds = " -> ".join(cfg.steps[i].kind for i in p.steps)
                progress.note(f"pass {k + 1} of {len(plan.plan_passes)}: {kinds}")
                if first.kind == "report":
                    i = p.steps[0]
                    r = _report(first, current)
                    results.append({"step": i + 1, "kind": "report", **r.to_dict(), "ok": r.ok})
                    if not r.ok:
                        raise SurgeonError(
                            f"step {i + 1} of {n} (report): requirement failed: {'; '.join(r.failures)}",
                            "nothing was written"
                            + (f"; the steps so far are in {plan.steps_folder}" if plan.keep_intermediate else ""),
                        )
                    continue
                rows, dest = _run_pass(p, current, work, plan, meta, progress)
                results.extend(rows)
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
        pass_steps=[[i + 1 for i in p.steps] for p in plan.plan_passes],
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


def _run_pass(p: Pass, model: str | None, work: Path, plan: RunPlan, meta: dict, progress: Progress) -> tuple[list[dict], Path]:
    """The steps of one pass: every step but the last hands its tensors to the next as a stream (each planned
    against a ``StreamedCheckpoint``: the headers and config files the step would write, its tensors when they
    come); the last one writes into the work folder with its own run function. Returns each step's result and
    where the pass wrote."""
    import dataclasses
    from contextlib import ExitStack

    from modelsurgeon.ops.core.streaming import prefetched

    from .fused import StreamedCheckpoint

    cfg = plan.config
    n = len(cfg.steps)
    shard = plan.max_shard_size
    with ExitStack() as stack:
        plans: list[Any] = []
        src: Any = model
        for i in p.steps:
            s = cfg.steps[i]
            dest = work / (f"{i + 1:02d}-{s.kind}" + (".gguf" if s.gguf else ""))
            final = i == p.steps[-1]
            out = Output(dest, False, shard) if final else None
            if s.kind == "merge":
                from modelsurgeon.ops.merge.plan import plan_merge

                q = stack.enter_context(plan_merge(s.config, out))
                for w in q.warnings:
                    progress.note(f"warning: {w}")
                nxt = None if final else StreamedCheckpoint.after_merge(q, dest)
            elif s.kind == "prune":
                from modelsurgeon.ops.prune.plan import plan_prune

                q = stack.enter_context(plan_prune(s.config, src, out))
                nxt = None if final else StreamedCheckpoint.after(q.ck, dest)
            else:
                from modelsurgeon.ops.quantize.plan import plan_quantize

                q = stack.enter_context(plan_quantize(s.config, src, str(dest), max_shard_size=shard))
                if q.gguf_writer is not None:  # a GGUF file holds the run's provenance in its own metadata
                    from modelsurgeon import __version__

                    q.add_gguf_metadata(
                        {
                            "modelsurgeon.version": __version__,
                            "modelsurgeon.command": step_command(i + 1, n, s.kind),
                            "modelsurgeon.run": meta["modelsurgeon_run"],
                        }
                    )
                nxt = None
            plans.append(q)
            src = nxt
        # the streams, first to last: each step's tensors become the next step's input
        handed: list[tuple[int, Any, Any]] = []  # (step, plan, PruneStream or None) of the steps that stream
        for (i, q), nxt_plan in zip(zip(p.steps[:-1], plans[:-1], strict=True), plans[1:], strict=True):
            if cfg.steps[i].kind == "merge":
                from modelsurgeon.ops.merge.run import merged_tensors

                nxt_plan.ck.attach(merged_tensors(q))
                handed.append((i, q, None))
            else:
                from modelsurgeon.ops.prune.run import PruneStream

                ps = PruneStream(q, SILENT)
                ps.select()
                nxt_plan.ck.attach(prefetched(ps.tensors(), depth=1))
                handed.append((i, q, ps))
        i, q = p.steps[-1], plans[-1]
        s = cfg.steps[i]
        r = _write_last(s, q, step_command(i + 1, n, s.kind), progress)
        rows = []
        for j, q2, ps in handed:
            if ps is None:
                done = dataclasses.replace(q2.result(), dry_run=False, output=None, files=None, bytes_written=0, seconds=0.0)
            else:
                from modelsurgeon.ops.prune.result import PruneResult

                t = ps.selection.threshold if ps.selection is not None else None
                done = PruneResult(q2.ck.label, q2.config, q2.total_params, ps.results, dry_run=False, output=None, threshold=t)
            rows.append({"step": j + 1, "kind": cfg.steps[j].kind, **done.to_dict()})
        rows.append({"step": i + 1, "kind": s.kind, **r.to_dict()})
        return rows, dest


def _write_last(s: Step, q: Any, command: str, progress: Progress) -> Any:
    if s.kind == "merge":
        from modelsurgeon.ops.merge.run import run_merge

        return run_merge(q, progress, command)
    if s.kind == "prune":
        if q.config.calibrated:  # wanda, sparsegpt: the calibration engine, as `surgeon prune` runs it
            from .api import _calibrated_prune

            return _calibrated_prune(q, q.config, False, progress, command)
        from modelsurgeon.ops.prune.run import run_prune

        return run_prune(q, progress, command)
    if q.config.calibrated:  # gptq, awq
        from .api import _calibrated_quantize

        return _calibrated_quantize(q, q.config, False, progress, command)
    from modelsurgeon.ops.quantize.run import run_quantize

    return run_quantize(q, progress, command)


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
