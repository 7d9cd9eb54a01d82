"""Intrinsic dimension: train inside theta = theta_0 + P theta_d and find the smallest d that reaches a
fraction of the baseline (Li et al. 2018, d_int90; Aghajanyan et al. 2020 for fine-tuning, SAID).

- ``Problem``: the model, the D parameters that join the subspace (flattened in module order), theta_0 and a
  forward pass through ``torch.func.functional_call`` on ``theta_0 + P theta_d``: the module is never mutated
  during training.
- ``train_run``: one training run at one d (or directly on all D parameters, for the baseline).
- ``measure``: the baseline, then a search for d_int (doubling from ``d_start`` until a run passes, then
  bisection until the bracket is narrower than ``rel_tol`` of its top, about 10 runs), or an explicit grid;
  ``--seeds N`` repeats the two bracket ends (or every grid point) and the answer is the smallest d whose
  *mean* metric passes (Li et al.'s rule).
- ``save_subspace`` / ``expand_subspace``: theta_d with everything needed to rebuild theta_0 and P, and back.

Subspaces are nested for a fixed seed (see ``ops/projections.py``), which is what makes the metric monotone
in d at the optimum and bisection valid; the run at seed s uses projection seed ``proj_seed + s``, init seed
``init_seed + s`` and data order seed s.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modelsurgeon.ops.core.errors import SurgeonError, UsageError
from modelsurgeon.ops.io.targets import compile_regex

from .projections import Projection, make_projection

FORMAT = "modelsurgeon.subspace"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------
# the problem: which parameters, theta_0, the functional forward pass


class Problem:
    def __init__(self, built, task, device, include: str | None = None, exclude: str | None = None, said: bool = False):
        self.built, self.task = built, task
        self.device = torch.device(device)
        module = built.module
        module.float().to(self.device)
        module.requires_grad_(False)
        self.module = module
        named = [(n, p) for n, p in module.named_parameters() if p.is_floating_point()]
        inc, exc = compile_regex(include, "--include"), compile_regex(exclude, "--exclude")
        if inc is not None:
            named = [(n, p) for n, p in named if inc.search(n)]
            if not named:
                raise SurgeonError(
                    f"--include {include!r} matches no parameter of the model", "names look like " + _examples(module)
                )
        if exc is not None:
            before = len(named)
            named = [(n, p) for n, p in named if not exc.search(n)]
            if len(named) == before:
                raise SurgeonError(
                    f"--exclude {exclude!r} matches no parameter of the model", "names look like " + _examples(module)
                )
            if not named:
                raise SurgeonError(f"--exclude {exclude!r} leaves no parameter to train")
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.offsets = [0]
        for k in self.numels:
            self.offsets.append(self.offsets[-1] + k)
        self.D = self.offsets[-1]
        self.include, self.exclude = include, exclude
        self.said = said
        self.m = len(self.names) if said else 0
        self._numels_t = torch.tensor(self.numels, device=self.device)
        self.frozen = sum(p.numel() for p in module.parameters()) - self.D
        task.to(self.device)

    def theta0(self, seed_offset: int, init_seed: int, reinit: bool = True) -> torch.Tensor:
        """theta_0 for one seed: re-initialises the seed-dependent tensors (architecture, new head) first."""
        if reinit and self.built.reinit is not None:
            self.built.reinit(init_seed + seed_offset)
        params = dict(self.module.named_parameters())
        return torch.cat([params[n].detach().reshape(-1).float() for n in self.names]).to(self.device)

    def flat(self, theta0: torch.Tensor, delta: torch.Tensor, scales: torch.Tensor | None = None) -> torch.Tensor:
        if scales is None:
            return theta0 + delta
        return theta0 + scales.repeat_interleave(self._numels_t) * delta

    def params(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        # split, not slices: the backward of one split is one concatenation, while each slice's backward
        # would write a zero-filled gradient of all D entries (100 tensors x 11M = seconds per step on MiniLM)
        return {n: piece.view(s) for n, piece, s in zip(self.names, flat.split(self.numels), self.shapes)}

    def forward(self, flat: torch.Tensor, batch):
        return torch.func.functional_call(self.module, self.params(flat), batch.args, batch.kwargs)

    def layout(self) -> list[list]:
        return [[n, list(s)] for n, s in zip(self.names, self.shapes)]


def _examples(module) -> str:
    names = [n for n, _ in module.named_parameters()]
    return ", ".join(names[:2] + names[-1:]) + " (see `surgeon intrinsic-dim --help`)"


# --------------------------------------------------------------------------------------------
# one training run


@dataclass
class Run:
    kind: str  # subspace | direct
    d: int | None
    seed: int
    metric: float
    loss: float
    train_loss: float
    seconds: float
    passed: bool | None = None
    diverged: bool = False
    theta_d: torch.Tensor | None = None
    scales: torch.Tensor | None = None
    flat: torch.Tensor | None = None
    projection: dict | None = None

    def record(self) -> dict:
        return {
            "kind": self.kind,
            "d": self.d,
            "seed": self.seed,
            "metric": self.metric,
            "loss": self.loss,
            "train_loss": self.train_loss,
            "seconds": round(self.seconds, 3),
            "passed": self.passed,
            "diverged": self.diverged,
        }


Events = Callable[..., None]


def _nothing(*_a, **_k) -> None:
    return None


def _optimizer(name: str, params, lr: float, weight_decay: float, cfg):
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    return torch.optim.LBFGS(
        params,
        lr=lr,
        max_iter=cfg.lbfgs_max_iter,
        history_size=50,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )


def build_projection(problem: Problem, cfg, d: int, seed: int) -> Projection:
    use_triton = {"auto": None, "torch": False, "triton": True}[cfg.fwht]
    return make_projection(
        cfg.projection,
        problem.D,
        d - problem.m,
        cfg.proj_seed + seed,
        problem.device,
        max_bytes=cfg.max_dense_bytes,
        use_triton=use_triton,
    )


def train_run(problem: Problem, cfg, d: int | None, seed: int, events: Events = _nothing, keep_flat: bool = False) -> Run:
    """Train at subspace dimension d (``None``: all D parameters directly) and evaluate."""
    t0 = time.perf_counter()
    task = problem.task
    theta0 = problem.theta0(seed, cfg.init_seed)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout
    proj = None
    scales = None
    if d is None:
        theta = theta0.clone().requires_grad_(True)
        trainable = [theta]

        def flat_now():
            return theta

        lr = cfg.baseline_lr
    else:
        proj = build_projection(problem, cfg, d, seed)
        theta_d = torch.zeros(d - problem.m, device=problem.device, requires_grad=True)
        trainable = [theta_d]
        if problem.said:
            scales = torch.ones(problem.m, device=problem.device, requires_grad=True)
            trainable.append(scales)

        def flat_now():
            return problem.flat(theta0, proj(theta_d), scales)

        lr = cfg.lr
    opt = _optimizer(cfg.optimizer, trainable, lr, cfg.weight_decay, cfg)
    train_loss = float("nan")
    diverged = False
    for epoch in range(cfg.epochs):
        problem.module.train()
        if cfg.optimizer == "lbfgs":
            batches = list(task.batches("train", cfg.batch_size, g))

            def closure(batches=batches):
                opt.zero_grad()
                flat = flat_now()
                total = sum(task.loss(problem.forward(flat, b), b.target) * _weight(b, task) for b in batches)
                total.backward()
                return total

            opt.step(closure)
            with torch.no_grad():
                flat = flat_now()
                train_loss = float(sum(task.loss(problem.forward(flat, b), b.target) * _weight(b, task) for b in batches))
        else:
            losses = []
            for b in task.batches("train", cfg.batch_size, g):
                opt.zero_grad()
                loss = task.loss(problem.forward(flat_now(), b), b.target)
                if not torch.isfinite(loss):
                    diverged = True  # stop here and evaluate what there is; the record says so
                    break
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            train_loss = sum(losses) / len(losses) if losses else float("nan")
        events("epoch", epoch=epoch + 1, epochs=cfg.epochs)
        if diverged:
            break
    problem.module.eval()
    with torch.no_grad():
        flat = flat_now().detach()
        metric, loss = task.evaluate(lambda b: problem.forward(flat, b), eval_batch(task, cfg))
    run = Run(
        "direct" if d is None else "subspace", d, seed, metric, loss, train_loss, time.perf_counter() - t0, diverged=diverged
    )
    if d is not None:
        run.theta_d = trainable[0].detach().cpu().clone()
        run.scales = scales.detach().cpu().clone() if scales is not None else None
        run.projection = proj.settings()
    if keep_flat:
        run.flat = flat.cpu().clone()
    return run


def evaluate_theta0(problem: Problem, cfg) -> float:
    """The metric of theta_0 itself (d = 0), seed 0."""
    theta0 = problem.theta0(0, cfg.init_seed)
    problem.module.eval()
    with torch.no_grad():
        metric, _ = problem.task.evaluate(lambda b: problem.forward(theta0, b), eval_batch(problem.task, cfg))
    return metric


def eval_batch(task, cfg) -> int:
    return max(cfg.batch_size, 256) if task.kind in ("features", "toy") else cfg.batch_size


def _weight(b, task) -> float:
    if task.problem == "toy":
        return 1.0
    return b.target.shape[0] / max(task.n_train, 1)


# --------------------------------------------------------------------------------------------
# the search


@dataclass
class Measurement:
    D: int
    baseline: float
    baseline_how: str
    threshold_value: float
    theta0_metric: float | None = None
    runs: list[Run] = field(default_factory=list)
    baseline_run: Run | None = None
    d_int: int | None = None
    bracket: tuple[int, int | None] | None = None
    curve: list[dict] = field(default_factory=list)
    non_monotone: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def run_at(self, d: int, seed: int = 0) -> Run | None:
        return next((r for r in self.runs if r.d == d and r.seed == seed), None)


def check_plan(problem: Problem, cfg) -> None:
    """Everything about d that can be refused before training starts."""
    D = problem.D
    d_floor = problem.m
    d_max = min(cfg.d_max or D, D)
    explicit = getattr(cfg, "explicit", frozenset())
    for flag, v in (
        ("--grid", max(cfg.grid, default=0)),
        ("--d-start", cfg.d_start if "d_start" in explicit else 0),
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


def measure(problem: Problem, cfg, events: Events = _nothing) -> Measurement:
    # the first torch.optim optimizer of a process imports torch._dynamo (1-3 s): pay it before the clock
    # starts, so that the first run's seconds compare with the others
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    t0 = time.perf_counter()
    check_plan(problem, cfg)
    D = problem.D
    d_floor = problem.m  # SAID spends m of the d numbers on the scales
    d_max = min(cfg.d_max or D, D)

    n_runs = {"i": 0}

    def run(d: int | None, seed: int, label: str) -> Run:
        n_runs["i"] += 1
        events("run", d=d, seed=seed, index=n_runs["i"], label=label)
        r = train_run(problem, cfg, d, seed, events)
        events("done", run=r)
        return r

    if cfg.baseline is None:
        base = run(None, 0, "baseline")
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
            r = run(d, seed, "search")
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
        d = min(max(cfg.d_start, d_floor + 1), d_max)
        while True:
            if ev(d):
                hi = d
                break
            lo = d
            if d >= d_max:
                break
            d = min(2 * d, d_max)
        if hi is not None:
            while hi - lo > max(1, int(cfg.rel_tol * hi)):
                mid = (lo + hi) // 2
                if ev(mid):
                    hi = mid
                else:
                    lo = mid
            for s in seeds[1:]:
                ev(hi, s)
                if lo > d_floor:
                    ev(lo, s)
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


# --------------------------------------------------------------------------------------------
# the subspace file: theta_d, seeds and settings; and back to full weights


def sha256_tensor(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def subspace_record(problem: Problem, cfg, run: Run, theta0: torch.Tensor, flat: torch.Tensor, extra: dict) -> dict:
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "torch": torch.__version__,
        "d": run.d,
        "seed": run.seed,
        "proj_seed": cfg.proj_seed + run.seed,
        "init_seed": cfg.init_seed + run.seed,
        "projection": run.projection,
        "said": problem.said,
        "fwht": cfg.fwht,
        "include": problem.include,
        "exclude": problem.exclude,
        "layout": problem.layout(),
        "head": problem.built.head,
        "source": problem.built.source,
        "theta0_sha256": sha256_tensor(theta0),
        "weights_sha256": sha256_tensor(flat),
        "weights_norm": float(flat.double().norm()),
        **extra,
    }


def trained_flat(problem: Problem, cfg, run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """(theta_0, theta_0 + P theta_d) of a finished run, recomputed exactly as in training."""
    theta0 = problem.theta0(run.seed, cfg.init_seed)
    proj = build_projection(problem, cfg, run.d, run.seed)  # type: ignore[arg-type]
    with torch.no_grad():
        flat = problem.flat(
            theta0, proj(run.theta_d.to(problem.device)), None if run.scales is None else run.scales.to(problem.device)
        )
    return theta0, flat


def save_subspace(path: str | Path, problem: Problem, cfg, run: Run, extra: dict, command: str, force: bool = False) -> dict:
    from safetensors.torch import save_file

    from modelsurgeon.ops.io.output import OutputFile
    from modelsurgeon.ops.io.writer import provenance

    theta0, flat = trained_flat(problem, cfg, run)
    rec = subspace_record(problem, cfg, run, theta0, flat, extra)
    tensors = {"theta_d": run.theta_d.float().contiguous()}
    if run.scales is not None:
        tensors["said_scales"] = run.scales.float().contiguous()
    params = dict(problem.module.named_parameters())
    for name in problem.built.head:  # a new head's theta_0 is not in any checkpoint: keep it (it is small)
        tensors[f"init.{name}"] = params[name].detach().cpu().float().contiguous()
    meta = provenance(command, {FORMAT: json.dumps(rec, separators=(",", ":"))})
    with OutputFile(path, force) as out:
        save_file(tensors, str(out.path), metadata=meta)
        out.commit()
    return rec


def read_subspace(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors import safe_open

    from modelsurgeon.ops.io.checkpoint import read_safetensors_header

    p = Path(path)
    if not p.is_file():
        raise SurgeonError(f"no such subspace file: {p}")
    _, meta = read_safetensors_header(p)
    raw = meta.get(FORMAT)
    if raw is None:
        raise SurgeonError(
            f"{p} is a safetensors file but not a subspace file",
            "write one with `surgeon intrinsic-dim ... --save-subspace FILE`",
        )
    try:
        rec = json.loads(raw)
    except json.JSONDecodeError:
        raise SurgeonError(f"{p}: its subspace record is not valid JSON") from None
    if rec.get("version") != FORMAT_VERSION:
        raise SurgeonError(
            f"{p} is subspace format version {rec.get('version')}; this modelsurgeon reads version {FORMAT_VERSION}"
        )
    with safe_open(str(p), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if "theta_d" not in tensors:
        raise SurgeonError(f"{p} has no theta_d tensor")
    return rec, tensors


@dataclass
class Expanded:
    problem: Problem
    rec: dict
    flat: torch.Tensor
    exact: bool
    checkpoint: object | None


def expand_subspace(path: str | Path, base: str | None = None, device: str | torch.device = "cpu") -> Expanded:
    """Rebuild theta_0 and P from a subspace file and return theta_0 + P theta_d in the model's layout."""
    from types import SimpleNamespace

    from .models import Toy, build_arch, he_init, load_state_strict, load_transformers, toy_init

    rec, tensors = read_subspace(path)
    src = rec["source"]
    kind = src["kind"]
    ck = None
    if kind == "arch":
        module = build_arch(src)
        he_init(module, rec["init_seed"])
    elif kind == "toy":
        module = Toy()
        toy_init(module, rec["init_seed"])
    elif kind == "checkpoint":
        ck = _open_base(src, base)
        built = load_transformers(ck, auto_class=src["auto_class"], kwargs=src.get("kwargs") or {})
        module = built.module
        params = dict(module.named_parameters())
        with torch.no_grad():
            for name in rec.get("head") or []:
                t = tensors.get(f"init.{name}")
                if t is None or name not in params or tuple(t.shape) != tuple(params[name].shape):
                    raise SurgeonError(
                        f"{path}: the initial value of the new head tensor {name} is missing or has the wrong shape"
                    )
                params[name].copy_(t)
    elif kind == "module":
        from .tasks import load_task

        task = load_task(src["task"])
        module = task.module_result["model"]
        if src.get("checkpoint"):
            ck = _open_base(src["checkpoint"], base)
            load_state_strict(module, ck)
    else:
        raise SurgeonError(f"{path}: unknown model source {kind!r}")
    built = SimpleNamespace(module=module, reinit=None, head=rec.get("head") or [], source=src)
    dummy_task = SimpleNamespace(to=lambda dev: None)
    problem = Problem(built, dummy_task, device, rec.get("include"), rec.get("exclude"), bool(rec.get("said")))
    if problem.layout() != rec["layout"]:
        diff = next((a, b) for a, b in zip(problem.layout() + [None], rec["layout"] + [None]) if a != b)
        raise SurgeonError(
            f"the rebuilt model's parameters differ from the subspace's layout (first difference: {diff[0]} vs {diff[1]})"
        )
    theta0 = problem.theta0(0, 0, reinit=False)
    if sha256_tensor(theta0) != rec["theta0_sha256"]:
        raise SurgeonError(
            f"theta_0 rebuilt for {path} differs from the one it was trained from (sha256)",
            f"it was written with torch {rec.get('torch')}; this is torch {torch.__version__}"
            if rec.get("torch") != torch.__version__
            else "pass --base with the original checkpoint",
        )
    pset = rec["projection"]
    cfg = SimpleNamespace(
        projection=pset["kind"],
        proj_seed=rec["proj_seed"],
        init_seed=rec["init_seed"],
        fwht=rec.get("fwht", "auto"),
        max_dense_bytes=1 << 62,
    )
    theta_d = tensors["theta_d"].float()
    if theta_d.numel() != pset["d"]:
        raise SurgeonError(f"{path}: theta_d has {theta_d.numel()} numbers but its projection says d = {pset['d']}")
    proj = make_projection(
        pset["kind"],
        problem.D,
        pset["d"],
        pset["seed"],
        problem.device,
        max_bytes=1 << 62,
        use_triton={"auto": None, "torch": False, "triton": True}[cfg.fwht],
    )
    scales = tensors.get("said_scales")
    with torch.no_grad():
        flat = problem.flat(
            theta0, proj(theta_d.to(problem.device)), None if scales is None else scales.float().to(problem.device)
        )
    exact = sha256_tensor(flat) == rec["weights_sha256"]
    if not exact:
        rel = abs(float(flat.double().norm()) - rec["weights_norm"]) / max(rec["weights_norm"], 1e-30)
        if rel > 1e-5:
            raise SurgeonError(
                f"the projection regenerated for {path} differs from the one used in training (norm off by {rel:.2e})",
                f"it was written with torch {rec.get('torch')}; this is torch {torch.__version__}",
            )
    return Expanded(problem, rec, flat.cpu(), exact, ck)


def _open_base(src: dict, base: str | None):
    from modelsurgeon.ops.io.checkpoint import open_checkpoint

    from .models import sha256_file

    where = base or src["path"]
    try:
        ck = open_checkpoint(where)
    except SurgeonError as e:
        raise SurgeonError(
            f"cannot open the base checkpoint {where} ({e.message})",
            "pass --base with the checkpoint the subspace was trained from",
        ) from None
    have = {f.name: sha256_file(f) for f in ck.weight_files}
    if have != src["files"]:
        raise SurgeonError(
            f"{where} is not the checkpoint the subspace was trained from (sha256 of its weight files differs)",
            "pass --base with the original checkpoint",
        )
    return ck


def expanded_state(ex: Expanded) -> list[tuple[str, torch.Tensor]]:
    """The full state dict of the trained model: subspace parameters from ``flat``, the rest as loaded."""
    p = ex.problem
    trained = {n: ex.flat[o : o + k].view(s) for n, o, k, s in zip(p.names, p.offsets, p.numels, p.shapes)}
    out, seen = [], set()
    for name, t in p.module.state_dict(keep_vars=True).items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:  # tied weights are written once, as transformers does
            continue
        seen.add(key)
        out.append((name, trained[name] if name in trained else t.detach().cpu()))
    return out
