"""The one source of defaults for ``surgeon intrinsic-dim`` (imports no torch).

Defaults follow docs/notes/intrinsic_dim.md: Adam, lr 1e-2 for the subspace runs (30 epochs at 1e-3
left d = 750 on MNIST far from converged; 1e-2 reached it), 1e-3 for the direct baseline from a seeded init,
1e-4 for the direct baseline when theta_0 is a pretrained checkpoint (fine-tuning), batch 128, 30 epochs,
threshold 0.9 of the baseline, search by doubling from d = 32 then bisection to 5 % of d.

A task may change some defaults (``toy``: full-batch L-BFGS, 3 rounds; ``text:``: threshold from theta_0,
batch 8; a csv with text: batch 32); a value the user gives always wins. So the settings a task may change,
and those whose *presence* matters (``--arch``/``--width``/``--depth`` clash with MODEL, ``--d-start``/
``--d-max``/``--rel-tol`` with ``--grid``), are None until the plan fills them: ``with_task_defaults`` puts
in the task's default, else the general one in ``DEFAULTS``, so the result records the complete settings::

    cfg = IntrinsicDimConfig.build(task="toy", grid="8,9,10")   # flags as typed; checked here, no I/O
    cfg.with_task_defaults({"optimizer": "lbfgs", "epochs": 3}) # every setting filled (the plan does this)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from modelsurgeon.ops.core.errors import UsageError

from .base import Config, check_regex, check_seed

PROJECTIONS = ("auto", "dense", "sparse", "fastfood")
OPTIMIZERS = ("adam", "sgd", "lbfgs")
ARCHS = ("fc", "lenet")
FWHT = ("auto", "torch", "triton")
THRESHOLD_FROM = ("zero", "init")
TASK_FORMS = "toy, digits, npz:PATH, csv:PATH, text:PATH, module:function"

# the defaults of the settings that are None until the plan fills them (a task's defaults come first)
DEFAULTS = {
    "threshold_from": "zero",
    "d_start": 32,
    "rel_tol": 0.05,
    "epochs": 30,
    "lr": 1e-2,
    "batch_size": 128,
    "optimizer": "adam",
    "arch": "fc",
    "width": 200,
    "depth": 2,
}


@dataclass(frozen=True)
class IntrinsicDimConfig(Config):
    KIND = "intrinsic-dim"
    VERSION = 1

    task: str = "digits"  # toy | digits | npz:PATH | csv:PATH | text:PATH | module:function
    # what is measured against
    threshold: float = 0.9
    threshold_from: str | None = None  # zero: threshold x baseline (Li); init: theta_0's metric + threshold x (baseline - it)
    baseline: float | None = None  # None: train directly once (auto); "auto" or a number as text is read too
    # the subspace
    projection: str = "auto"  # auto: sparse on CPU, fastfood on CUDA
    said: bool = False
    include: str | None = None
    exclude: str | None = None
    proj_seed: int = 0
    init_seed: int = 0
    fwht: str = "auto"
    max_dense_bytes: int = 2 << 30
    # the search
    grid: tuple[int, ...] = ()  # explicit d values instead of the search ("100,200,400" is read too)
    d_start: int | None = None  # 32
    d_max: int | None = None  # None: D
    rel_tol: float | None = None  # 0.05
    seeds: int = 1
    # training
    epochs: int | None = None  # 30 (toy: 3 L-BFGS rounds)
    lr: float | None = None  # 1e-2 (toy: 1)
    baseline_lr: float | None = None  # 1e-3 from a seeded init, 1e-4 from a pretrained checkpoint (toy: 1)
    batch_size: int | None = None  # 128 (text: 8 blocks, csv text: 32)
    optimizer: str | None = None  # adam (toy: lbfgs)
    weight_decay: float = 0.0
    lbfgs_max_iter: int = 1000
    max_tokens: int = 128  # text: block length; csv text: truncation
    # built-in architecture (when MODEL is omitted)
    arch: str | None = None  # fc
    width: int | None = None  # 200
    depth: int | None = None  # 2

    def validate(self) -> None:
        """Each value on its own; how values combine with each other and with MODEL is the plan's check."""
        if isinstance(self.baseline, str):
            self._set("baseline", parse_baseline(self.baseline))
        if isinstance(self.grid, str):
            self._set("grid", parse_grid(self.grid))
        elif isinstance(self.grid, (list, tuple)):
            self._set("grid", tuple(self.grid))
        else:
            raise UsageError(f"--grid values must be positive integers, got {self.grid!r}")
        if not _number(self.threshold) or not (0 < self.threshold <= 1) or math.isnan(self.threshold):
            raise UsageError(f"--threshold {self.threshold} is outside (0, 1]", "give a fraction of the baseline such as 0.9")
        if self.baseline is not None and not (_number(self.baseline) and self.baseline > 0 and math.isfinite(self.baseline)):
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
            ("--d-max", self.d_max),
            ("--width", self.width),
            ("--depth", self.depth),
            ("--max-tokens", self.max_tokens),
        ):
            if v is not None and (not _integer(v) or v < 1):
                raise UsageError(f"{flag} must be at least 1, got {v}")
        for flag, v in (("--lr", self.lr), ("--baseline-lr", self.baseline_lr)):
            if v is not None and not (_number(v) and v > 0 and math.isfinite(v)):
                raise UsageError(f"{flag} must be positive, got {v}")
        if self.rel_tol is not None and not (_number(self.rel_tol) and 0 < self.rel_tol < 1):
            raise UsageError(f"--rel-tol must be in (0, 1), got {self.rel_tol}")
        if not _number(self.weight_decay) or self.weight_decay < 0:
            raise UsageError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if any(not _integer(d) or d < 1 for d in self.grid):
            raise UsageError(f"--grid values must be positive integers, got {list(self.grid)}")
        check_seed(self.proj_seed, "--proj-seed")
        check_seed(self.init_seed, "--init-seed")
        if not _integer(self.lbfgs_max_iter):
            raise UsageError(f"lbfgs_max_iter must be an integer, got {self.lbfgs_max_iter!r}")
        for flag, pattern in (("--include", self.include), ("--exclude", self.exclude)):
            if pattern is not None:
                check_regex(pattern, flag)
        if not isinstance(self.task, str):
            raise UsageError(f"--task must be a task spec such as digits or npz:PATH, got {self.task!r}")
        parse_task_spec(self.task)

    @classmethod
    def convert(cls, data: dict, source: str) -> dict:
        if isinstance(data.get("grid"), list):
            data["grid"] = tuple(data["grid"])
        return data

    def with_task_defaults(self, defaults: dict) -> IntrinsicDimConfig:
        """Every unset setting filled: the task's default where it has one, else the general one (``DEFAULTS``).
        ``baseline_lr`` stays None unless the task sets it: its default depends on the model."""
        changes = {
            name: defaults.get(name, DEFAULTS.get(name))
            for name in self.field_names()
            if getattr(self, name) is None and (name in defaults or name in DEFAULTS)
        }
        return replace(self, **changes) if changes else self

    def given(self, *names: str) -> list[str]:
        """The flags among ``names`` that were set (not None), as the user typed them (``--d-start``)."""
        return [f"--{n.replace('_', '-')}" for n in names if getattr(self, n) is not None]

    def to_dict(self) -> dict:
        """Every setting, unset ones as None, in field order: the result JSON's ``recipe`` records a run's
        complete settings this way, and ``from_dict`` reads it back."""
        return {f.name: list(v) if isinstance(v, tuple) else v for f in fields(self) for v in (getattr(self, f.name),)}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _choice(flag: str, value: str | None, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
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
