"""Run a planned intrinsic-dimension measurement (``plan.py``): the baseline and the search, the subspace
file and the plot when asked, and the result whose ``to_dict()`` is the JSON ``surgeon intrinsic-dim
--json`` prints.

Threads: training runs are many small ops, so the thread count torch starts with is kept (no
``core.streaming.cpu_threads``: nothing streams here). On a machine shared with other work, idle OpenMP
threads should sleep rather than spin (``OMP_WAIT_POLICY=PASSIVE``, 3-5x faster runs on 2 busy cores,
measured); that setting only takes effect before torch is imported, so the CLI sets it, and a library
caller sets it in the environment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from modelsurgeon.ops.core.interrupt import interruptible
from modelsurgeon.ops.core.progress import SILENT, Progress
from modelsurgeon.ops.core.result import Result
from modelsurgeon.ops.core.units import fmt_bytes

from .plan import IntrinsicDimPlan
from .search import Measurement, measure
from .subspace import save_subspace


@dataclass
class IntrinsicDimResult(Result):
    data: dict  # the JSON, as ``to_dict`` gives it
    measurement: Measurement  # every run, with theta_d (and the SAID scales) of each subspace run
    warnings: list[str] = field(default_factory=list)

    @property
    def d_int(self) -> int | None:
        return self.data["d_int"]

    def to_dict(self) -> dict:
        return dict(self.data)


def run_intrinsic_dim(plan: IntrinsicDimPlan, progress: Progress = SILENT) -> IntrinsicDimResult:
    """Measure; write the subspace file at d_int (seed 0) and the plot when the plan asks for them."""
    progress.note(plan.summary())
    with plan.outputs_locked():
        return _run(plan, progress)


def _run(plan: IntrinsicDimPlan, progress: Progress) -> IntrinsicDimResult:
    m = interruptible(measure, plan.problem, plan.config, progress)
    data = result_data(m, plan)
    warnings = run_warnings(m)
    for w in warnings:
        progress.note(f"warning: {w}")
    if plan.subspace_path is not None:
        if m.d_int is None:
            warnings.append("no d reached the threshold; --save-subspace wrote nothing")
            progress.note(f"warning: {warnings[-1]}")
        else:
            run = m.run_at(m.d_int, 0)
            task = plan.task
            extra = {"task": task.spec, "metric": task.metric_name, "metric_value": run.metric}  # type: ignore[union-attr]
            save_subspace(plan.subspace_path, plan.problem, plan.config, run, extra, plan.command, plan.force, plan.inputs)  # type: ignore[arg-type]
            data["subspace_file"] = plan.subspace_path
    if plan.plot_path is not None:
        from .plot import write_plot

        write_plot(data, plan.plot_path, plan.force, plan.inputs)
        data["plot"] = plan.plot_path
    return IntrinsicDimResult(data, m, warnings)


def run_warnings(m: Measurement) -> list[str]:
    """What the user should know about the runs: diverged ones, and a metric that is not monotone in d."""
    out = []
    bad = [r for r in ([m.baseline_run] if m.baseline_run else []) + m.runs if r.diverged]
    if bad:
        out.append(
            f"{len(bad)} run(s) hit a non-finite loss and stopped early (d = {', '.join(str(r.d or 'all') for r in bad)}); "
            "lower --lr / --baseline-lr"
        )
    if m.memory_stop:
        s = m.memory_stop
        out.append(
            f"the search stopped at d = {s['d']:,}: that run would need about {fmt_bytes(s['need_bytes'])} of memory and "
            f"{fmt_bytes(s['free_bytes'] or 0)} is free; --projection fastfood does not grow with d, or give --d-max"
        )
    if m.non_monotone:
        out.append(
            f"metric not monotone in d: d = {', '.join(map(str, m.non_monotone))} fail above d_int = {m.d_int}; "
            "the runs are noisy here, try --seeds 3"
        )
    return out


def result_data(m: Measurement, plan: IntrinsicDimPlan) -> dict:
    """The JSON of a measurement: d_int and its bracket, the baseline and threshold, the search, the
    projection, the curve (mean metric per d), every run's record, and the complete settings."""
    cfg, problem, task = plan.config, plan.problem, plan.task
    pset = next((r.projection for r in m.runs if r.projection), None) or {}
    seeds_used = sorted({r.seed for r in m.runs})
    projection = {
        "kind": cfg.projection,
        "L": pset.get("L"),
        "seeds": [cfg.proj_seed + s for s in seeds_used],
        "rng": pset.get("rng"),
        "nonzeros_per_column": pset.get("nonzeros_per_column"),
        "said": cfg.said,
        "said_scales": problem.m,
        "fwht": cfg.fwht if cfg.projection == "fastfood" else None,
        "columns": "unit norm, nested across d for a fixed seed",
    }
    name = f"d_int{cfg.threshold * 100:g}".replace(".", "_")  # d_int90, d_int95, d_int99_5
    records = ([m.baseline_run.record()] if m.baseline_run else []) + [r.record() for r in m.runs]
    if task.metric_name == "token_prob":
        for r in records:
            r["perplexity"] = math.exp(r["loss"]) if r["loss"] < 700 else float("inf")
    return {
        "model": plan.built.label,
        "model_source": plan.built.source,
        "task": task.describe(),
        "metric": task.metric_name,
        "D": m.D,
        "frozen_params": problem.frozen,
        "d_int": m.d_int,
        "d_int_name": name,
        name: m.d_int,
        "bracket": list(m.bracket) if m.bracket else None,
        "compression": (m.D / m.d_int) if m.d_int else None,
        "threshold": cfg.threshold,
        "threshold_value": m.threshold_value,
        "threshold_from": cfg.threshold_from,
        "theta0_metric": m.theta0_metric,
        "baseline": {"value": m.baseline, "how": m.baseline_how},
        "search": {
            "mode": "grid" if cfg.grid else "bisect",
            "grid": list(cfg.grid) or None,
            "d_start": None if cfg.grid else cfg.d_start,
            "rel_tol": None if cfg.grid else cfg.rel_tol,
            "seeds": cfg.seeds,
            "runs": len(m.runs) + (1 if m.baseline_run else 0),
            "non_monotone": m.non_monotone,
            "memory_stop": m.memory_stop,
        },
        "projection": projection,
        "curve": m.curve,
        "records": records,
        "recipe": cfg.to_dict(),
        "device": str(plan.device),
        "seconds": round(m.seconds, 3),
    }
