"""The search for d_int: the baseline, then the smallest d whose training reaches a fraction of it
(Li et al. 2018, d_int90; Aghajanyan et al. 2020 for fine-tuning, SAID).

``measure`` trains the baseline (directly on all D parameters, unless ``--baseline`` gives it), then
searches: doubling from ``d_start`` until a run passes, then bisection until the bracket is narrower than
``rel_tol`` of its top (about 10 runs), or an explicit grid. ``--seeds N`` repeats the two bracket ends (or
every grid point) and the answer is the smallest d whose *mean* metric passes (Li et al.'s rule).

Subspaces are nested for a fixed seed (see ``projections.py``), which is what makes the metric monotone in
d at the optimum and bisection valid.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from modelsurgeon.ops.core.errors import SurgeonError, UsageError
from modelsurgeon.ops.core.memory import available_bytes
from modelsurgeon.ops.core.progress import SILENT, Progress, update
from modelsurgeon.ops.core.units import fmt_bytes

from .problem import Problem
from .projections import estimate_bytes, resolve_kind
from .train import Run, evaluate_theta0, train_run

HEADROOM = 0.8  # a run may take this share of the memory still free when it starts


def fits(problem: Problem, cfg, d: int) -> tuple[bool, int, int | None]:
    """(whether a run at d fits in the memory free now, its estimated need, the bytes free)."""
    need = estimate_bytes(resolve_kind(cfg.projection, problem.device), problem.D, max(d - problem.m, 1))
    free = available_bytes()
    return (free is None or need <= HEADROOM * free), need, free


@dataclass
class Measurement:
    D: int
    baseline: float
    baseline_how: str
    threshold_value: float
    theta0_metric: float | None = None
    runs: list[Run] = field(default_factory=list)
    memory_stop: dict | None = None  # the doubling stopped: the d that would not fit, its need, what was free
    baseline_run: Run | None = None
    d_int: int | None = None
    bracket: tuple[int, int | None] | None = None
    curve: list[dict] = field(default_factory=list)
    non_monotone: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def run_at(self, d: int, seed: int = 0) -> Run | None:
        return next((r for r in self.runs if r.d == d and r.seed == seed), None)


def check_plan(problem: Problem, cfg) -> None:
    """Everything about d that can be refused before training starts. ``cfg`` is the config as the user
    gave it: ``d_start`` is checked only when given (None: the default, which the search clamps to D)."""
    D = problem.D
    d_floor = problem.m
    d_max = min(cfg.d_max or D, D)
    for flag, v in (
        ("--grid", max(cfg.grid, default=0)),
        ("--d-start", cfg.d_start or 0),
        ("--d-max", cfg.d_max or 0),
    ):
        if v > D:
            raise UsageError(f"{flag} {v} is larger than D = {D:,}, the number of parameters being trained", "give d <= D")
    if cfg.grid and min(cfg.grid) <= d_floor:
        raise UsageError(
            f"--grid {min(cfg.grid)} leaves no subspace: --said spends {d_floor} of d on per-tensor scales", f"give d > {d_floor}"
        )
    if d_floor >= d_max:
        raise UsageError(f"--said needs d > {d_floor} (one scale per tensor) but d can be at most {d_max}")
    for flag, d in (("--grid", max(cfg.grid, default=0)), ("--d-start", cfg.d_start or 0)):
        if d:
            ok, need, free = fits(problem, cfg, d)
            if not ok:
                raise SurgeonError(
                    f"{flag} {d}: a run at d = {d:,} with the {resolve_kind(cfg.projection, problem.device)} projection needs about {fmt_bytes(need)} "
                    f"of memory and {fmt_bytes(free or 0)} is free",
                    "give a smaller d, or --projection fastfood (its memory does not grow with d)",
                )


class _RunShare:
    """One run's epochs as shares of one run on the search's bar (``train_run`` advances one per epoch; a run
    that stops early, diverged, gets the rest of its share at ``finish``)."""

    def __init__(self, progress: Progress, epochs: int):
        self.progress, self.step, self.done = progress, 1 / max(epochs, 1), 0.0

    def start(self, description: str, total: float | None = None, unit: str = "items") -> None:
        pass

    def advance(self, n: float = 1) -> None:
        share = min(n * self.step, 1 - self.done)
        self.done += share
        self.progress.advance(share)

    def note(self, message: str) -> None:
        self.progress.note(message)

    def finish(self) -> None:
        if self.done < 1:
            self.progress.advance(1 - self.done)


def bisections(lo: int, hi: int, rel_tol: float) -> int:
    """How many runs the bisection takes at most to narrow (lo, hi] to the tolerance: every run halves the
    bracket, and the path where every run passes is the longest (hi, and with it the tolerance, goes down)."""
    n = 0
    while hi - lo > max(1, int(rel_tol * hi)):
        hi = (lo + hi) // 2
        n += 1
    return n


def measure(problem: Problem, cfg, progress: Progress = SILENT) -> Measurement:
    """The baseline and the search. ``cfg`` has every setting filled and passed ``check_plan``.

    Progress is one phase counted in training runs (each epoch a share of its run), the unit that dominates
    the time: a grid knows its runs; a search's total is the most it can still take (doubling up to d_max or
    to the first d that would not fit in memory, then bisection, then the extra seeds), and it comes down as
    the search learns where d_int is. The label names the run ("run 3: d = 64  seed 0")."""
    # the first torch.optim optimizer of a process imports torch._dynamo (1-3 s): pay it before the clock
    # starts, so that the first run's seconds compare with the others
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    t0 = time.perf_counter()
    D = problem.D
    d_floor = problem.m  # SAID spends m of the d numbers on the scales
    d_max = min(cfg.d_max or D, D)

    n_runs = 0
    extra_seeds = 2 * (cfg.seeds - 1)  # the search repeats both ends of its bracket

    def doubling_ahead(d: int, lo: int) -> int:
        """The most runs a search still takes from a doubling step at d (this one included)."""
        ds = []
        while fits(problem, cfg, d)[0]:
            ds.append(d)
            if d >= d_max:
                break
            d = min(2 * d, d_max)
        if not ds:
            return 0
        return len(ds) + bisections(ds[-2] if len(ds) > 1 else lo, ds[-1], cfg.rel_tol) + extra_seeds

    def expect(ahead: int) -> None:
        update(progress, total=n_runs + ahead)

    def run(d: int | None, seed: int) -> Run:
        nonlocal n_runs
        n_runs += 1
        what = "baseline (all D, direct)" if d is None else f"d = {d:,}  seed {seed}"
        update(progress, description=f"run {n_runs}: {what}")
        share = _RunShare(progress, cfg.epochs)
        r = train_run(problem, cfg, d, seed, share)
        share.finish()
        return r

    d0 = min(max(cfg.d_start, d_floor + 1), d_max)
    searched = len(dict.fromkeys(cfg.grid)) * cfg.seeds if cfg.grid else doubling_ahead(d0, d_floor)
    progress.start("intrinsic-dim", total=int(cfg.baseline is None) + searched, unit="runs")

    if cfg.baseline is None:
        base = run(None, 0)
        base.passed = None
        baseline = base.metric
        opt = cfg.optimizer
        rounds = (
            f"{cfg.epochs} L-BFGS round{'s' if cfg.epochs > 1 else ''}"
            if opt == "lbfgs"
            else f"{cfg.epochs} epoch{'s' if cfg.epochs > 1 else ''}"
        )
        how = f"direct training of all {D:,} parameters ({opt}, lr {cfg.baseline_lr:g}, {rounds}, seed 0)"
        if not baseline > 0 and cfg.threshold_from == "zero":
            raise SurgeonError(
                f"the direct baseline reached {problem.task.metric_name} {baseline:.4g}, so no fraction of it can be a target",
                "train longer (--epochs), change --baseline-lr, or give --baseline FLOAT",
            )
    else:
        base, baseline, how = None, cfg.baseline, "given (--baseline)"
    m0 = evaluate_theta0(problem, cfg)
    if cfg.threshold_from == "init":
        if not baseline > m0:
            raise SurgeonError(
                f"the baseline {problem.task.metric_name} {baseline:.4g} is not above theta_0's {m0:.4g}, so there is no improvement to reach",
                "train the baseline longer (--epochs, --baseline-lr) or give --baseline FLOAT",
            )
        thr = m0 + cfg.threshold * (baseline - m0)
    else:
        thr = cfg.threshold * baseline
    m = Measurement(D, baseline, how, thr, baseline_run=base, theta0_metric=m0)
    cache: dict[tuple[int, int], Run] = {}

    def ev(d: int, seed: int = 0) -> bool:
        if (d, seed) not in cache:
            r = run(d, seed)
            r.passed = r.metric >= thr
            cache[(d, seed)] = r
            m.runs.append(r)
        return bool(cache[(d, seed)].passed)

    seeds = range(cfg.seeds)
    if cfg.grid:
        for d in cfg.grid:
            for s in seeds:
                ev(d, s)
    else:
        lo, hi = d_floor, None
        d = d0
        while True:
            ok, need, free = fits(problem, cfg, d)
            if not ok:  # say so (run_warnings) rather than grow until the kernel kills the process
                m.memory_stop = {"d": d, "need_bytes": need, "free_bytes": free}
                break
            expect(doubling_ahead(d, lo))
            if ev(d):
                hi = d
                break
            lo = d
            if d >= d_max:
                break
            d = min(2 * d, d_max)
        if hi is not None:
            while hi - lo > max(1, int(cfg.rel_tol * hi)):
                expect(bisections(lo, hi, cfg.rel_tol) + extra_seeds)
                mid = (lo + hi) // 2
                if ev(mid):
                    hi = mid
                else:
                    lo = mid
            expect((1 + (lo > d_floor)) * (cfg.seeds - 1))
            for s in seeds[1:]:
                ev(hi, s)
                if lo > d_floor:
                    ev(lo, s)
    expect(0)
    _summarise(m, thr, d_floor)
    m.seconds = time.perf_counter() - t0
    return m


def _summarise(m: Measurement, thr: float, d_floor: int) -> None:
    by_d: dict[int, list[float]] = {}
    for r in m.runs:
        by_d.setdefault(r.d, []).append(r.metric)  # type: ignore[arg-type]
    m.curve = []
    for d in sorted(by_d):
        vals = by_d[d]
        mean = statistics.fmean(vals)
        m.curve.append(
            {
                "d": d,
                "runs": len(vals),
                "mean": mean,
                "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0,
                "min": min(vals),
                "max": max(vals),
                "passed": mean >= thr,
            }
        )
    passing = [c["d"] for c in m.curve if c["passed"]]
    m.d_int = passing[0] if passing else None
    failing_below = [c["d"] for c in m.curve if not c["passed"] and (m.d_int is None or c["d"] < m.d_int)]
    lo = max(failing_below, default=d_floor)
    m.bracket = (lo, m.d_int)
    m.non_monotone = [c["d"] for c in m.curve if not c["passed"] and m.d_int is not None and c["d"] > m.d_int]
