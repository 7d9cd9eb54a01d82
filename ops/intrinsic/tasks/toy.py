"""``toy``: Li et al.'s Section 2 example. D = 1000 parameters, 10 groups of 100 whose sums must equal
1, 2, ..., 10 (squared error). The solution set has codimension 10, so d_int = 10 exactly. Metric: 1.0 when
every group sum is within 0.01 of its target (solved), else 0.0; below d = 10 the best fit misses by O(1).
Trained with full-batch L-BFGS (3 rounds), which solves the quadratic to float32 precision."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .base import Batch, Task, logits

TOY_TOL = 0.01


@dataclass
class ToyTask(Task):
    problem: str = "toy"
    eval_split: str = "the training objective itself"

    @property
    def metric_name(self) -> str:
        return "solved"

    def batches(self, split: str, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        yield Batch((), {}, (self.train if split == "train" else self.test)["y"])  # the model takes no input

    def loss(self, output, target) -> torch.Tensor:
        return ((logits(output) - target) ** 2).sum()

    def evaluate(self, forward: Callable[[Batch], object], batch_size: int) -> tuple[float, float]:
        b = next(self.batches(self.eval_name, batch_size))
        out = logits(forward(b))
        solved = float((out - b.target).abs().max()) <= TOY_TOL
        return (1.0 if solved else 0.0), float(((out - b.target) ** 2).sum())

    def eval_batch_size(self, batch_size: int) -> int:
        return max(batch_size, 256)

    def batch_weight(self, batch: Batch) -> float:
        return 1.0  # one batch is the whole objective

    def builtin_model(self, cfg):
        from ..models import toy_model

        return toy_model()

    def describe(self) -> dict:
        return {**super().describe(), "n_train": None, "n_eval": None}


def load(spec: str, arg: str | None) -> ToyTask:
    target = torch.arange(1, 11, dtype=torch.float32)
    task = ToyTask(spec, defaults={"optimizer": "lbfgs", "epochs": 3, "lr": 1.0, "baseline_lr": 1.0})
    task.train = task.test = {"y": target}
    return task
