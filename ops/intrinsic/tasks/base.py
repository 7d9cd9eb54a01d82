"""What every task is: its data, how it is cut into batches, the loss, the metric that is thresholded, and
which model reads it. One subclass per kind of data (``toy.py``, ``labelled.py``, ``csv_file.py``,
``text.py``, ``module.py``); the training loop (``train.py``) and the plan only call the methods below.

Data lives in ``train`` and ``test``: name -> tensor, the first dimension counting examples. Without
explicit test data, 20 % of the examples are held out with a fixed seed (``hold_out``); with fewer than 10
examples the metric is measured on the training data and ``eval_split`` says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from modelsurgeon.ops.core.errors import SurgeonError, UsageError, typed

SPLIT_SEED = 0  # the held-out split never changes with --seeds
EVAL_FRACTION = 0.2


@dataclass
class Batch:
    args: tuple
    kwargs: dict
    target: torch.Tensor | None


@dataclass
class Task:
    """The common protocol of the tasks. ``problem`` names what is learned (the JSON's ``task.problem``);
    ``defaults`` holds the settings this task changes unless the user set them."""

    holds: ClassVar[str] = "feature vectors"  # what the data is, for messages
    needs_tokenizer: ClassVar[bool] = False  # raw text that MODEL's tokenizer turns into tokens (``tokenize``)

    spec: str
    problem: str = "classification"
    train: dict = field(default_factory=dict)  # name -> tensor (first dim = examples)
    test: dict = field(default_factory=dict)
    eval_split: str = "held-out"
    n_classes: int = 0
    defaults: dict = field(default_factory=dict)

    # --- what is measured
    @property
    def metric_name(self) -> str:
        raise NotImplementedError

    def loss(self, output, target) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, forward: Callable[[Batch], object], batch_size: int) -> tuple[float, float]:
        """(metric, loss) on the evaluation split; ``forward(batch)`` runs the model."""
        raise NotImplementedError

    # --- the data
    @property
    def n_train(self) -> int:
        return count(self.train)

    @property
    def n_test(self) -> int:
        return count(self.test)

    @property
    def eval_name(self) -> str:
        return "test" if self.test else "train"

    def to(self, device) -> Task:
        self.train = {k: v.to(device) for k, v in self.train.items()}
        self.test = {k: v.to(device) for k, v in self.test.items()}
        return self

    def batches(self, split: str, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """The split in batches of examples, shuffled by ``generator`` (in order without one)."""
        data = self.train if split == "train" else self.test
        n = count(data)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for s in range(0, n, batch_size):
            idx = order[s : s + batch_size].to(next(iter(data.values())).device)
            yield self.batch({k: v[idx] for k, v in data.items()})

    def batch(self, examples: dict) -> Batch:
        """The model's arguments and the target of some examples (name -> tensor)."""
        raise NotImplementedError

    def eval_batch_size(self, batch_size: int) -> int:
        """Examples per evaluation step."""
        return batch_size

    def batch_weight(self, batch: Batch) -> float:
        """A batch's share of the full-batch (L-BFGS) objective: its fraction of the training examples."""
        return batch.target.shape[0] / max(self.n_train, 1)

    def tokenize(self, tokenizer, max_len: int, model_max: int | None = None) -> None:
        """Turn raw text into token tensors (only tasks with ``needs_tokenizer``)."""

    # --- the model that reads it (``models.model_for_task``)
    def builtin_model(self, cfg):
        """The model measured when MODEL is omitted (a ``models.BuiltModel``)."""
        raise SurgeonError(
            f"task {self.spec} holds {self.holds}, which a built-in --arch cannot read",
            "give a transformers MODEL (folder with config.json), or numeric features",
        )

    def transformers_class(self) -> tuple[str, dict]:
        """The transformers Auto class (and its keyword arguments) that reads this task from a checkpoint."""
        raise SurgeonError(
            f"task {self.spec} gives feature vectors; a transformers checkpoint needs token ids or text",
            "use a csv with a text column, an npz with integer token ids, text:PATH for a causal LM, or module:function",
        )

    def checkpoint_model(self, ck):
        """MODEL's checkpoint ``ck`` as the model measured on this task (a ``models.BuiltModel``)."""
        from ..models import load_transformers

        auto_class, kwargs = self.transformers_class()
        return load_transformers(ck, auto_class, kwargs)

    def describe(self) -> dict:
        return {
            "spec": self.spec,
            "problem": self.problem,
            "metric": self.metric_name,
            "n_train": self.n_train,
            "n_eval": self.n_test or self.n_train,
            "eval_split": self.eval_split,
            "n_classes": self.n_classes or None,
        }


def count(data: dict) -> int:
    return int(next(iter(data.values())).shape[0]) if data else 0


def logits(output):
    """The tensor in a model's output (a tensor, an output with ``.logits``, a tuple or a dict)."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)):
        return output[0]
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    raise SurgeonError(f"the model returned {type(output).__name__}, not a tensor or an output with .logits")


def split_indices(n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(train, held-out) indices of n examples, or None when there are too few (under 10) to hold some out."""
    if n < 10:
        return None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = max(1, round(n * EVAL_FRACTION))
    return perm[n_test:], perm[:n_test]


def hold_out(task: Task, data: dict, test: dict | None) -> Task:
    """Give ``task`` its data: the test data given, else a held-out split of ``data``."""
    if test:
        task.train, task.test, task.eval_split = data, test, "given"
    else:
        sp = split_indices(count(data))
        if sp is None:
            task.train, task.test = data, {}
            task.eval_split = f"train ({count(data)} examples: too few to hold some out)"
        else:
            tr, te = sp
            task.train = {k: v[tr] for k, v in data.items()}
            task.test = {k: v[te] for k, v in data.items()}
            task.eval_split = f"held-out {len(te)} of {count(data)} (seed {SPLIT_SEED})"
    return task


def task_file(spec: str, arg: str | None) -> Path:
    """The file a ``KIND:PATH`` task names, or one error line."""
    if not arg:
        raise UsageError(f"task {typed(spec)} needs a path after the colon", "e.g. --task npz:data.npz")
    p = Path(arg).expanduser()
    if not p.is_file():
        raise SurgeonError(f"task {spec} cannot be loaded: no such file {p}")
    return p
