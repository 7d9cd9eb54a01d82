"""Tasks for ``intrinsic-dim``: data, loss and the metric that is thresholded, all offline.

A task spec is one of (registry ``TASKS``, by prefix; each entry's module documents its form):

- ``toy`` (``toy.py``): Li et al.'s D = 1000 group-sum example, d_int = 10 exactly.
- ``digits`` (``digits.py``): scikit-learn's 8x8 digits, 10 classes.
- ``npz:PATH`` (``npz.py``): arrays X, y (optional X_test, y_test); float X = features, integer X = token ids.
- ``csv:PATH`` (``csv_file.py``): numeric features, or a text column, and a label column.
- ``text:PATH`` (``text.py``): a UTF-8 text for a causal LM MODEL; metric 1 / perplexity.
- ``module:function`` (``module.py``): a user's function returning the model and the data.

Each loader returns a ``Task`` (``base.py``) of the class that fits the data: ``ToyTask``, ``FeatureTask``
and ``TokenTask`` (``labelled.py``), ``TextClassificationTask``, ``LanguageModelTask`` or ``ModuleTask``.
Without explicit test data, 20 % of the examples (10 % of the text blocks) are held out with a fixed seed;
with fewer than 10 examples the metric is measured on the training data and the JSON says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from modelsurgeon.ops.core.registry import Registry
from modelsurgeon.recipes.intrinsic_dim import parse_task_spec

from . import csv_file, digits, module, npz, text, toy
from .base import Batch, Task
from .labelled import FeatureTask, LabelledTask, TokenTask

__all__ = ["TASKS", "Batch", "FeatureTask", "LabelledTask", "Task", "TaskKind", "TokenTask", "load_task", "task_kind"]


@dataclass(frozen=True)
class TaskKind:
    name: str
    load: Callable[[str, str | None], Task]  # (spec, the part after the colon) -> the task
    summary: str
    refuses_model: str | None = None  # the usage error when MODEL is given (the task brings its own model)


TASKS: Registry[TaskKind] = Registry("task", usage=False)


def register(name: str, load, summary: str, refuses_model: str | None = None) -> None:
    TASKS.add(name, TaskKind(name, load, summary, refuses_model))


register(
    "toy",
    toy.load,
    "Li et al.'s D = 1000 group-sum example; d_int = 10 exactly",
    refuses_model="--task toy has its own D = 1000 model; drop MODEL",
)
register("digits", digits.load, "scikit-learn's 8x8 digits, 10 classes")
register("npz", npz.load, "npz:PATH with arrays X, y (optional X_test, y_test)")
register("csv", csv_file.load, "csv:PATH, numeric features or a text column, and a label column")
register("text", text.load, "text:PATH, a UTF-8 text for a causal LM (1 / perplexity)")
register("module", module.load, "module:function (pkg.mod:fn or path/file.py:fn) returning the model and the data")


def task_kind(spec: str) -> TaskKind:
    """The registry entry of a spec, from its form alone (nothing is loaded)."""
    return TASKS[parse_task_spec(spec)[0]]


def load_task(spec: str) -> Task:
    kind, arg = parse_task_spec(spec)
    return TASKS[kind].load(spec, arg)
