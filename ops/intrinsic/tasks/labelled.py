"""Examples with one label each: classification (cross-entropy; metric accuracy) or regression (mean squared
error; metric R^2 on the evaluation split). Integer labels mean classification, float labels regression.

- ``FeatureTask``: float feature vectors ``x`` (digits, a float npz, a numeric csv), read by a built-in
  ``--arch``; ``input_shape`` is one example's shape (``--arch lenet`` needs images).
- ``TokenTask``: token ids ``input_ids`` (optionally ``attention_mask``), read by a transformers
  sequence classifier (an integer npz; a csv with a text column once tokenised).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from modelsurgeon.ops.core.errors import SurgeonError

from .base import Batch, Task, hold_out, logits


class Classification:
    name = "classification"
    metric_name = "accuracy"

    def loss(self, out, target) -> torch.Tensor:
        return F.cross_entropy(out, target)

    def batch_score(self, out, target) -> float:
        """Correct predictions in a batch."""
        return float((out.argmax(-1) == target).sum())

    def metric(self, score: float, total: int, y: torch.Tensor) -> float:
        return score / total


class Regression:
    name = "regression"
    metric_name = "r2"

    def loss(self, out, target) -> torch.Tensor:
        return F.mse_loss(out.reshape(target.shape), target)

    def batch_score(self, out, target) -> float:
        """The batch's sum of squared errors."""
        return float(((out.reshape(target.shape) - target) ** 2).sum())

    def metric(self, score: float, total: int, y: torch.Tensor) -> float:
        sst = float(((y - y.mean()) ** 2).sum())
        return 1.0 - score / sst if sst > 0 else 0.0


OBJECTIVES = {"classification": Classification(), "regression": Regression()}


@dataclass
class LabelledTask(Task):
    """Examples ``x`` with labels ``y``; what is learned (``problem``) picks the loss and the metric."""

    class_names: list[str] | None = None  # csv string labels, in label order

    @property
    def objective(self) -> Classification | Regression:
        return OBJECTIVES[self.problem]

    @property
    def metric_name(self) -> str:
        return self.objective.metric_name

    def batch(self, examples: dict) -> Batch:
        return Batch((examples["x"],), {}, examples["y"])

    def loss(self, output, target) -> torch.Tensor:
        return self.objective.loss(logits(output), target)

    def evaluate(self, forward: Callable[[Batch], object], batch_size: int) -> tuple[float, float]:
        total, loss_sum, score = 0, 0.0, 0.0
        for b in self.batches(self.eval_name, batch_size):
            out = logits(forward(b))
            n = b.target.shape[0]
            loss_sum += float(self.loss(out, b.target)) * n
            total += n
            score += self.objective.batch_score(out, b.target)
        return self.objective.metric(score, total, (self.test or self.train)["y"]), loss_sum / total


@dataclass
class FeatureTask(LabelledTask):
    input_shape: tuple[int, ...] | None = None  # per example, for --arch lenet

    @property
    def in_features(self) -> int:
        x = self.train.get("x")
        return int(x[0].numel()) if x is not None else 0

    def eval_batch_size(self, batch_size: int) -> int:
        return max(batch_size, 256)

    def builtin_model(self, cfg):
        from ..models import arch_model

        n_out = self.n_classes if self.problem == "classification" else 1
        return arch_model(cfg, self.input_shape or (self.in_features,), n_out)


@dataclass
class TokenTask(LabelledTask):
    holds: ClassVar[str] = "token ids"

    def batch(self, examples: dict) -> Batch:
        kw = {"input_ids": examples["input_ids"]}
        if "attention_mask" in examples:
            kw["attention_mask"] = examples["attention_mask"]
        return Batch((), kw, examples["y"])

    def transformers_class(self) -> tuple[str, dict]:
        if self.problem == "regression":
            return "AutoModelForSequenceClassification", {"num_labels": 1, "problem_type": "regression"}
        kw: dict = {"num_labels": self.n_classes}
        if self.class_names:
            kw["id2label"] = dict(enumerate(self.class_names))
            kw["label2id"] = {n: i for i, n in enumerate(self.class_names)}
        return "AutoModelForSequenceClassification", kw


def problem_of(spec: str, y: torch.Tensor, examples: int | None = None) -> tuple[str, int]:
    """(problem, number of classes) of labels ``y``; refuses labels that are neither, non-finite values, and
    class labels beyond the number of ``examples`` (a head with a row per class would be allocated from it)."""
    if y.ndim != 1:
        raise SurgeonError(f"task {spec}: y must be 1-D (one label per example), got shape {list(y.shape)}")
    if y.is_floating_point():
        check_finite(spec, "y", y)
        return "regression", 0
    if y.numel() == 0:
        raise SurgeonError(f"task {spec}: no labels")
    if int(y.min()) < 0:
        raise SurgeonError(f"task {spec}: class labels must be 0..K-1, found {int(y.min())}")
    top = int(y.max())
    n = y.numel() if examples is None else examples
    if top >= max(n, 2):
        raise SurgeonError(
            f"task {spec}: class label {top} but only {n} examples; labels must be 0..K-1 for K classes",
            "renumber the classes from 0",
        )
    k = top + 1
    if k < 2:
        raise SurgeonError(f"task {spec}: y holds a single class", "classification needs at least 2 classes")
    return "classification", k


def check_finite(spec: str, name: str, t: torch.Tensor) -> None:
    """Refuse NaN or infinite training data: it would train silently to a meaningless metric."""
    if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise SurgeonError(f"task {spec}: {name} holds {bad} NaN or infinite value(s)", "clean the data first")


def examples_task(spec: str, X: torch.Tensor, y: torch.Tensor, Xt=None, yt=None, mask=None, mask_t=None) -> LabelledTask:
    """A task from arrays: float X = features (``FeatureTask``), integer 2-D X = token ids (``TokenTask``,
    with an optional attention mask); optional test arrays, else a held-out split."""
    if X.shape[0] != y.shape[0]:
        raise SurgeonError(f"task {spec}: X has {X.shape[0]} examples but y has {y.shape[0]}")
    if X.shape[0] == 0:
        raise SurgeonError(f"task {spec}: no examples")
    n = X.shape[0] + (0 if Xt is None else Xt.shape[0])
    problem, k = problem_of(spec, y, n)
    check_finite(spec, "X", X)
    if Xt is not None:
        if Xt.ndim == 0 or yt.ndim != 1 or Xt.shape[0] != yt.shape[0] or (X.is_floating_point() and Xt.shape[1:] != X.shape[1:]):
            raise SurgeonError(f"task {spec}: X_test/y_test do not match X/y in shape")
        check_finite(spec, "X_test", Xt)
        if yt.is_floating_point() != y.is_floating_point():
            raise SurgeonError(f"task {spec}: y_test and y hold different kinds of labels (classes vs numbers)")
        if problem == "classification" and yt.numel():
            k = max(k, problem_of(spec, yt, n)[1])
        elif problem == "regression":
            check_finite(spec, "y_test", yt)
    ylab = (lambda t: t.float()) if problem == "regression" else (lambda t: t.long())  # noqa: E731
    if X.is_floating_point():
        data = {"x": X.float(), "y": ylab(y)}
        test = {"x": Xt.float(), "y": ylab(yt)} if Xt is not None else None
        return hold_out(FeatureTask(spec, problem, n_classes=k, input_shape=tuple(X.shape[1:])), data, test)
    if X.ndim != 2:
        raise SurgeonError(f"task {spec}: integer X must be 2-D token ids (examples x tokens), got {list(X.shape)}")
    data = {"input_ids": X.long(), "y": ylab(y)}
    test = {"input_ids": Xt.long(), "y": ylab(yt)} if Xt is not None else None
    for d, m, x in ((data, mask, X), (test, mask_t, Xt)):
        if d is not None and m is not None:
            if tuple(m.shape) != tuple(x.shape):
                raise SurgeonError(f"task {spec}: attention_mask shape {list(m.shape)} differs from X {list(x.shape)}")
            d["attention_mask"] = m.long()
    return hold_out(TokenTask(spec, problem, n_classes=k), data, test)
