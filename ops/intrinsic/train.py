"""One training run: at subspace dimension d (theta = theta_0 + P theta_d, only theta_d and the SAID scales
learn), or directly on all D parameters (the baseline), then one evaluation.

The run at seed s uses projection seed ``proj_seed + s``, init seed ``init_seed + s`` and data order seed s.
Adam and SGD step per batch and stop at the first non-finite loss (the run is then marked ``diverged``);
L-BFGS takes one full-batch step per epoch ("round"), the batches weighted by their share of the data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from modelsurgeon.ops.core.interrupt import check_cancelled
from modelsurgeon.ops.core.progress import SILENT, Progress

from .problem import Problem
from .projections import Projection, make_projection

FWHT_FLAG = {"auto": None, "torch": False, "triton": True}  # --fwht -> use_triton


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
    return make_projection(
        cfg.projection,
        problem.D,
        d - problem.m,
        cfg.proj_seed + seed,
        problem.device,
        max_bytes=cfg.max_dense_bytes,
        use_triton=FWHT_FLAG[cfg.fwht],
    )


def train_run(problem: Problem, cfg, d: int | None, seed: int, progress: Progress = SILENT, keep_flat: bool = False) -> Run:
    """Train at subspace dimension d (``None``: all D parameters directly) and evaluate; ``progress``
    advances by one per epoch. ``cfg`` has every setting filled (``IntrinsicDimConfig.with_task_defaults``)."""
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
    for _ in range(cfg.epochs):
        check_cancelled()
        problem.module.train()
        if cfg.optimizer == "lbfgs":
            batches = list(task.batches("train", cfg.batch_size, g))

            def closure(batches=batches):
                opt.zero_grad()
                flat = flat_now()
                total = sum(task.loss(problem.forward(flat, b), b.target) * task.batch_weight(b) for b in batches)
                total.backward()
                return total

            opt.step(closure)
            with torch.no_grad():
                flat = flat_now()
                train_loss = float(sum(task.loss(problem.forward(flat, b), b.target) * task.batch_weight(b) for b in batches))
        else:
            losses = []
            for b in task.batches("train", cfg.batch_size, g):
                check_cancelled()  # the caller was interrupted (core.interrupt)
                opt.zero_grad()
                loss = task.loss(problem.forward(flat_now(), b), b.target)
                if not torch.isfinite(loss):
                    diverged = True  # stop here and evaluate what there is; the record says so
                    break
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            train_loss = sum(losses) / len(losses) if losses else float("nan")
        progress.advance(1)
        if diverged:
            break
    problem.module.eval()
    with torch.no_grad():
        flat = flat_now().detach()
        metric, loss = task.evaluate(lambda b: problem.forward(flat, b), task.eval_batch_size(cfg.batch_size))
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
    task = problem.task
    with torch.no_grad():
        metric, _ = task.evaluate(lambda b: problem.forward(theta0, b), task.eval_batch_size(cfg.batch_size))
    return metric
