"""The prune plan: everything checked before a value is read.

    with plan_prune(cfg, "org/model", Output.of("out")) as plan:   # opens the checkpoint (headers only)
        plan.result()                                              # --dry-run: the targets and their counts
        run_prune(plan, progress)                                  # run.py: stream, prune, write

``plan_prune`` refuses a bad output before it opens anything, then chooses the targets (``--include`` /
``--exclude``, or the linear weights), folds tied names into one target each, decides how each target is
counted (layer, row, global pool or N:M) and how many values it loses, and reports every N:M divisibility
problem at once. It creates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from modelsurgeon.ops.core.device import resolve_device
from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.core.problems import Problems
from modelsurgeon.ops.io.checkpoint import Checkpoint, open_checkpoint
from modelsurgeon.ops.io.output import Output, local_inputs
from modelsurgeon.ops.io.targets import select_targets
from modelsurgeon.recipes.prune import PruneConfig

from .criteria import Criterion, get_criterion
from .result import GlobalPool, PruneResult, TensorPlan
from .select import proportional_counts, prune_count


@dataclass
class Target:
    name: str  # canonical name (tied aliases listed separately)
    shape: tuple[int, ...]
    dtype: str
    numel: int
    sparsity: float
    mode: str  # layer | row | global | nm
    k: int  # values to prune: in the tensor (layer), in every row (row), or 0 for global (decided later)
    aliases: list[str] = field(default_factory=list)

    @property
    def planned(self) -> int | None:
        """The exact number of values this target loses, or None for the global pool (decided by the run)."""
        if self.mode == "global":
            return None
        if self.mode == "row":
            return self.k * (self.numel // (self.shape[-1] if self.shape and self.shape[-1] else 1))
        return self.k


@dataclass
class PrunePlan:
    config: PruneConfig
    ck: Checkpoint
    criterion: Criterion
    targets: list[Target]
    alias_of: dict[str, str]  # every member of a targeted tied group -> its canonical name
    output: Output | None = None  # None: a dry run
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    use_triton: bool | None = None  # None: Triton on CUDA tensors (kernels.should_use_triton)
    pool_k: int = 0  # global scope: values to prune over the pool
    pool_numel: int = 0
    total_params: int = 0

    def __post_init__(self):
        self._by_name = {t.name: t for t in self.targets}

    @property
    def pool(self) -> list[Target]:
        """The targets that share one threshold (--scope global, at the recipe's sparsity)."""
        return [t for t in self.targets if t.mode == "global"]

    def target(self, name: str) -> Target | None:
        canon = self.alias_of.get(name, name)
        return self._by_name.get(canon)

    def result(self) -> PruneResult:
        """The plan as `surgeon prune --dry-run` prints it."""
        rows = [
            TensorPlan(t.name, t.shape, t.dtype, t.numel, t.sparsity, t.mode, t.planned, list(t.aliases)) for t in self.targets
        ]
        pool = GlobalPool(len(self.pool), self.pool_numel, self.pool_k) if self.pool else None
        return PruneResult(self.ck.label, self.config, self.total_params, rows, dry_run=True, global_pool=pool)

    def close(self) -> None:
        self.ck.close()

    def __enter__(self) -> PrunePlan:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def plan_prune(
    cfg: PruneConfig,
    model: str | Path,
    output: Output | None = None,
    revision: str | None = None,
    *,
    device: str | torch.device = "auto",
    use_triton: bool | None = None,
) -> PrunePlan:
    """Open MODEL (headers only) and plan the pruning; ``output`` None plans a dry run. The caller closes
    the plan (it is a context manager)."""
    if output is not None:
        output.check("dir", inputs=local_inputs(model))
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    criterion = get_criterion(cfg.method)
    ck = open_checkpoint(model, revision)
    try:
        if output is not None:  # again with what it may not touch, and the room it needs
            output.check("dir", inputs=ck.input_paths(), expected_bytes=sum(i.nbytes for i in ck.infos()))
        return _plan(ck, cfg, criterion, output, dev, use_triton)
    except BaseException:
        ck.close()
        raise


def _plan(ck: Checkpoint, cfg: PruneConfig, criterion: Criterion, output, device, use_triton) -> PrunePlan:
    names = select_targets(ck, cfg.include, cfg.exclude)
    if not names:
        raise SurgeonError(
            f"{ck.label} has no tensor to prune (no 2-D float weight of a linear layer)",
            "choose tensors with --include REGEX",
        )
    aliases = ck.tied_aliases()
    canon = lambda n: aliases.get(n, n)  # noqa: E731
    members: dict[str, list[str]] = {}
    for n in ck.names():
        members.setdefault(canon(n), []).append(n)
    chosen = []
    for n in names:
        c = canon(n)
        if c not in chosen:
            chosen.append(c)
    order = {n: i for i, n in enumerate(ck.names())}
    chosen.sort(key=order.__getitem__)
    nm = cfg.nm
    problems = Problems(f"--pattern {cfg.pattern}")
    targets, alias_of = [], {}
    for name in chosen:
        info = ck.info(name)
        s = cfg.sparsity_for(name)
        last = info.shape[-1] if info.shape else 1
        if nm:
            mode = "nm"
            if last % nm[1]:
                problems.add(
                    f"rows of {last} values are not a multiple of M={nm[1]} for --pattern {cfg.pattern}",
                    tensor=f"{name} {list(info.shape)}",
                )
            k = info.numel - info.numel // nm[1] * nm[0]
        elif cfg.scope == "row":
            mode, k = "row", prune_count(s, last)
        elif cfg.scope == "global" and criterion.global_mode == "radix" and s == cfg.target_sparsity:
            mode, k = "global", 0
        else:
            mode, k = "layer", prune_count(s, info.numel)
        group = members.get(name, [name])
        for m_ in group:
            alias_of[m_] = name
        targets.append(Target(name, tuple(info.shape), info.dtype, info.numel, s, mode, k, [m_ for m_ in group if m_ != name]))
    problems.raise_if_any(hint="exclude the tensor with --exclude, or pick another M")
    plan = PrunePlan(
        cfg, ck, criterion, targets, alias_of, output, device, use_triton, total_params=sum(i.numel for i in ck.infos())
    )
    if cfg.scope == "global" and not nm:
        same = [t for t in targets if t.sparsity == cfg.target_sparsity]
        total = sum(t.numel for t in same)
        if criterion.global_mode == "radix":
            plan.pool_numel, plan.pool_k = total, prune_count(cfg.target_sparsity, total)
        else:
            counts = proportional_counts({t.name: t.numel for t in same}, prune_count(cfg.target_sparsity, total))
            for t in same:
                t.k = counts[t.name]
    return plan
