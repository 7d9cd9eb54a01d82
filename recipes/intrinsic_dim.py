"""The one source of defaults for ``surgeon intrinsic-dim`` (imports no torch).

Defaults follow docs/notes/intrinsic_dim.md: Adam, lr 1e-2 for the subspace runs (30 epochs at 1e-3
left d = 750 on MNIST far from converged; 1e-2 reached it), 1e-3 for the direct baseline from a seeded init,
1e-4 for the direct baseline when theta_0 is a pretrained checkpoint (fine-tuning), batch 128, 30 epochs,
threshold 0.9 of the baseline, search by doubling from d = 32 then bisection to 5 % of d.
A task may change some defaults (``toy``: full-batch L-BFGS, one round); a flag always wins.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from modelsurgeon.ops.core.errors import UsageError

VERSION = 1
PROJECTIONS = ("auto", "dense", "sparse", "fastfood")
OPTIMIZERS = ("adam", "sgd", "lbfgs")
ARCHS = ("fc", "lenet")
FWHT = ("auto", "torch", "triton")
THRESHOLD_FROM = ("zero", "init")
TASK_FORMS = "toy, digits, npz:PATH, csv:PATH, text:PATH, module:function"


@dataclass(frozen=True)
class IntrinsicDimConfig:
    version: int = VERSION
    task: str = "digits"
    # what is measured against
    threshold: float = 0.9
    threshold_from: str = "zero"  # zero: threshold x baseline (Li); init: theta_0's metric + threshold x (baseline - it)
    baseline: float | None = None  # None: train directly once (auto)
    # the subspace
    projection: str = "auto"
    said: bool = False
    include: str | None = None
    exclude: str | None = None
    proj_seed: int = 0
    init_seed: int = 0
    fwht: str = "auto"
    max_dense_bytes: int = 2 << 30
    # the search
    grid: tuple[int, ...] = ()
    d_start: int = 32
    d_max: int | None = None
    rel_tol: float = 0.05
    seeds: int = 1
    # training
    epochs: int = 30
    lr: float = 1e-2
    baseline_lr: float | None = None  # None: 1e-3 from a seeded init, 1e-4 from a pretrained checkpoint
    batch_size: int = 128
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lbfgs_max_iter: int = 1000
    max_tokens: int = 128  # text: block length; csv text: truncation
    # built-in architecture (when MODEL is omitted)
    arch: str = "fc"
    width: int = 200
    depth: int = 2
    # which recipe fields the user set explicitly (tasks do not override those)
    explicit: frozenset = field(default_factory=frozenset, compare=False)

    def __post_init__(self) -> None:
        if self.version != VERSION:
            raise UsageError(f"recipe version {self.version} is not supported", f"this modelsurgeon reads version {VERSION}")
        if not (0 < self.threshold <= 1) or math.isnan(self.threshold):
            raise UsageError(f"--threshold {self.threshold} is outside (0, 1]", "give a fraction of the baseline such as 0.9")
        if self.baseline is not None and not (self.baseline > 0 and math.isfinite(self.baseline)):
            raise UsageError(f"--baseline {self.baseline} must be a positive number or auto")
        _choice("--threshold-from", self.threshold_from, THRESHOLD_FROM)
        _choice("--projection", self.projection, PROJECTIONS)
        _choice("--optimizer", self.optimizer, OPTIMIZERS)
        _choice("--arch", self.arch, ARCHS)
        _choice("--fwht", self.fwht, FWHT)
        for flag, v in (
            ("--seeds", self.seeds),
            ("--epochs", self.epochs),
            ("--batch-size", self.batch_size),
            ("--d-start", self.d_start),
            ("--width", self.width),
            ("--depth", self.depth),
        ):
            if v < 1:
                raise UsageError(f"{flag} must be at least 1, got {v}")
        if self.d_max is not None and self.d_max < 1:
            raise UsageError(f"--d-max must be at least 1, got {self.d_max}")
        for flag, v in (("--lr", self.lr), ("--baseline-lr", self.baseline_lr)):
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise UsageError(f"{flag} must be positive, got {v}")
        if not (0 < self.rel_tol < 1):
            raise UsageError(f"--rel-tol must be in (0, 1), got {self.rel_tol}")
        if self.weight_decay < 0:
            raise UsageError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if any(d < 1 for d in self.grid):
            raise UsageError(f"--grid values must be positive integers, got {list(self.grid)}")
        parse_task_spec(self.task)

    def with_task_defaults(self, defaults: dict) -> IntrinsicDimConfig:
        """Apply a task's defaults to the fields the user did not set."""
        changes = {k: v for k, v in defaults.items() if k not in self.explicit}
        return replace(self, **changes) if changes else self

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("explicit")
        d["grid"] = list(self.grid)
        return d


def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"{flag} {value!r} is not one of: {', '.join(allowed)}")


def parse_grid(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        vals = sorted({int(v) for v in text.replace(" ", "").split(",") if v})
    except ValueError:
        raise UsageError(f"--grid {text!r} is not a comma-separated list of integers", "e.g. --grid 100,200,400") from None
    if not vals:
        raise UsageError("--grid is empty")
    return tuple(vals)


def parse_baseline(text: str | None) -> float | None:
    if text is None or text.strip().lower() == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise UsageError(
            f"--baseline {text!r} is neither auto nor a number", "e.g. --baseline 1.0 (Li et al.'s global baseline)"
        ) from None


def parse_task_spec(spec: str) -> tuple[str, str | None]:
    """('toy', None), ('npz', 'path'), ('module', 'pkg.mod:fn'): checks the form only, loads nothing."""
    head, sep, rest = spec.partition(":")
    if not sep:
        if head in ("toy", "digits"):
            return head, None
        raise UsageError(f"unknown task {spec!r}", f"use one of: {TASK_FORMS}")
    if head in ("npz", "csv", "text"):
        if not rest:
            raise UsageError(
                f"task {spec!r} needs a path after the colon", f"e.g. --task {head}:data.{head if head != 'text' else 'txt'}"
            )
        return head, rest
    if head in ("toy", "digits"):
        raise UsageError(f"task {head} takes no argument, got {spec!r}")
    mod, _, fn = spec.rpartition(":")
    if not mod or not fn.isidentifier():
        raise UsageError(f"task {spec!r} is not module:function", f"use one of: {TASK_FORMS}")
    return "module", spec


def config_fields() -> list[str]:
    return [f.name for f in fields(IntrinsicDimConfig) if f.name != "explicit"]
