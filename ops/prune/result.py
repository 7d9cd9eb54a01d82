"""What `surgeon prune` returns: per-tensor rows and totals, for a plan (``--dry-run``) or a finished run.

``PruneResult.to_dict()`` is exactly the JSON ``surgeon prune --json`` prints::

    model, method, scope, pattern, sparsity, seed, recipe, num_targets, target_params, total_params,
    dry_run, output, pruned,
    dry run:  global_pool {tensors, params, pruned} | null, tensors [TensorPlan]
    run:      zeros_before, zeros, target_sparsity, threshold, tensors [TensorResult], nm_compliant (N:M only)
"""

from __future__ import annotations

from dataclasses import dataclass

from modelsurgeon.ops.core.result import Result
from modelsurgeon.recipes.prune import PruneConfig


@dataclass
class TensorPlan:
    """One target as planned: ``pruned`` is the exact count, or None for a tensor in the global pool
    (its share is known only once the threshold is)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    numel: int
    sparsity_target: float
    mode: str  # layer | row | global | nm
    pruned: int | None
    aliases: list[str]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "numel": self.numel,
            "sparsity_target": self.sparsity_target,
            "mode": self.mode,
            "pruned": self.pruned,
            "aliases": list(self.aliases),
        }


@dataclass
class TensorResult:
    """One target as pruned: counts read back from the written values."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    numel: int
    sparsity_target: float
    mode: str
    pruned: int
    zeros_before: int
    zeros: int
    threshold: float | None
    aliases: list[str]
    nm_compliant: bool | None = None

    def to_dict(self) -> dict:
        d = {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "numel": self.numel,
            "sparsity_target": self.sparsity_target,
            "mode": self.mode,
            "pruned": self.pruned,
            "zeros_before": self.zeros_before,
            "zeros": self.zeros,
            "sparsity": self.zeros / self.numel if self.numel else 0.0,
            "threshold": self.threshold,
            "aliases": list(self.aliases),
        }
        if self.nm_compliant is not None:
            d["nm_compliant"] = self.nm_compliant
        return d


@dataclass
class GlobalPool:
    """The tensors that share one threshold (--scope global), planned."""

    tensors: int
    params: int
    pruned: int


@dataclass
class PruneResult(Result):
    """A plan (``dry_run``: rows are ``TensorPlan``) or a finished run (rows are ``TensorResult``)."""

    model: str  # the checkpoint's label
    config: PruneConfig
    total_params: int  # every value of the checkpoint
    tensors: list  # TensorPlan (dry run) or TensorResult, in checkpoint order
    dry_run: bool
    output: str | None = None  # the folder written (None for a dry run)
    global_pool: GlobalPool | None = None  # dry run: the pool sharing one threshold (its rows say None)
    threshold: float | None = None  # run: the global magnitude threshold (largest |w| pruned is <= it)

    @property
    def num_targets(self) -> int:
        return len(self.tensors)

    @property
    def target_params(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def pruned(self) -> int:
        pool = self.global_pool.pruned if self.global_pool is not None else 0
        return sum(t.pruned for t in self.tensors if t.pruned is not None) + pool

    @property
    def zeros(self) -> int:
        return sum(t.zeros for t in self.tensors)

    @property
    def nm_compliant(self) -> bool:
        return all(t.nm_compliant is not False for t in self.tensors)

    def to_dict(self) -> dict:
        cfg = self.config
        out = {
            "model": self.model,
            "method": cfg.method,
            "scope": "nm" if cfg.pattern else cfg.scope,
            "pattern": cfg.pattern,
            "sparsity": cfg.target_sparsity,
            "seed": cfg.seed,
            "recipe": cfg.to_dict(),
            "num_targets": self.num_targets,
            "target_params": self.target_params,
            "total_params": self.total_params,
            "dry_run": self.dry_run,
            "output": self.output,
            "pruned": self.pruned,
        }
        if self.dry_run:
            p = self.global_pool
            out["global_pool"] = None if p is None else {"tensors": p.tensors, "params": p.params, "pruned": p.pruned}
            out["tensors"] = [t.to_dict() for t in self.tensors]
            return out
        target_params, zeros = self.target_params, self.zeros
        out["zeros_before"] = sum(t.zeros_before for t in self.tensors)
        out["zeros"] = zeros
        out["target_sparsity"] = zeros / target_params if target_params else 0.0
        out["threshold"] = self.threshold
        out["tensors"] = [t.to_dict() for t in self.tensors]
        if cfg.pattern:
            out["nm_compliant"] = self.nm_compliant
        return out
