"""``module:function`` (``pkg.mod:fn`` or ``path/file.py:fn``): a function returning a dict (or an object)
with ``model`` (an nn.Module), ``train`` = (X, y), optional ``test`` = (X, y), optional ``loss(output, y)``
and ``metric`` (a callable ``(output, y) -> float``, higher is better, or ``"accuracy"``/``"r2"``).
The model is the one measured; a MODEL checkpoint, if given, supplies its theta_0 (matched by name)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from modelsurgeon.ops.core.errors import SurgeonError, UsageError

from .base import Batch, hold_out, logits
from .labelled import LabelledTask, check_finite, problem_of


@dataclass
class ModuleTask(LabelledTask):
    user_model: torch.nn.Module | None = None
    loss_fn: Callable | None = None
    metric_fn: Callable | None = None

    @property
    def metric_name(self) -> str:
        # float labels name the metric r2 even when the function computes it: kept as the command has always
        # reported it (the JSON's "metric"); the value is the function's either way
        if callable(self.metric_fn) and self.problem != "regression":
            return getattr(self.metric_fn, "__name__", "metric")
        return super().metric_name

    def loss(self, output, target) -> torch.Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(logits(output), target)
        return super().loss(output, target)

    def evaluate(self, forward: Callable[[Batch], object], batch_size: int) -> tuple[float, float]:
        if not callable(self.metric_fn):
            return super().evaluate(forward, batch_size)
        outs, ys = [], []
        for b in self.batches(self.eval_name, batch_size):
            outs.append(logits(forward(b)).detach())
            ys.append(b.target)
        out, y = torch.cat(outs), torch.cat(ys)
        return float(self.metric_fn(out, y)), float(self.loss(out, y))

    def builtin_model(self, cfg):
        from ..models import module_model

        return module_model(self.user_model, self.spec)

    def checkpoint_model(self, ck):
        from ..models import module_model

        return module_model(self.user_model, self.spec, ck)


def load(spec: str, arg: str | None) -> ModuleTask:
    mod_name, _, fn_name = spec.rpartition(":")
    fn = import_function(spec, mod_name, fn_name)
    try:
        result = fn()
    except SurgeonError:
        raise
    except Exception as e:
        raise SurgeonError(f"task {spec} cannot be loaded: {fn_name}() raised {type(e).__name__}: {e}") from None
    if not isinstance(result, dict):
        result = {k: getattr(result, k) for k in ("model", "train", "test", "loss", "metric") if hasattr(result, k)}
    model, train = result.get("model"), result.get("train")
    if not isinstance(model, torch.nn.Module):
        raise SurgeonError(f"task {spec}: {fn_name}() must return a dict with 'model' (a torch.nn.Module)")
    if not (isinstance(train, (tuple, list)) and len(train) == 2 and all(isinstance(t, torch.Tensor) for t in train)):
        raise SurgeonError(f"task {spec}: {fn_name}() must return 'train' = (X, y) tensors")
    test = result.get("test")
    if test is not None and not (isinstance(test, (tuple, list)) and len(test) == 2):
        raise SurgeonError(f"task {spec}: 'test' must be (X, y) tensors")
    X, y = train
    if X.shape[0] != y.shape[0] or X.shape[0] == 0:
        raise SurgeonError(f"task {spec}: X has {X.shape[0]} examples but y has {y.shape[0]}")
    check_finite(spec, "X", X)
    if y.is_floating_point():  # regression targets may have any shape here
        check_finite(spec, "y", y)
        problem, k = "regression", 0
    else:
        problem, k = problem_of(spec, y, X.shape[0] + (0 if test is None else len(test[1])))
    task = ModuleTask(spec, problem, n_classes=k, user_model=model)
    hold_out(task, {"x": X, "y": y}, {"x": test[0], "y": test[1]} if test is not None else None)
    loss, metric = result.get("loss"), result.get("metric")
    if loss is not None and not callable(loss):
        raise SurgeonError(f"task {spec}: 'loss' must be callable(output, y)")
    task.loss_fn = loss
    if metric in ("accuracy", "r2"):
        task.problem = "regression" if metric == "r2" else "classification"
    elif callable(metric):
        task.metric_fn = metric
    elif metric is not None:
        raise SurgeonError(f"task {spec}: 'metric' must be 'accuracy', 'r2' or callable(output, y) -> float")
    return task


def import_function(spec: str, mod_name: str, fn_name: str):
    """The function ``fn_name`` of a module (a dotted name, imported with the working folder on the path,
    or a ``.py`` file), or one error line."""
    if not mod_name or not fn_name:
        raise UsageError(f"task {spec!r} is not module:function")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name).expanduser()
            if not path.is_file():
                raise SurgeonError(f"task {spec} cannot be loaded: no such file {path}")
            ms = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(ms)  # type: ignore[arg-type]
            ms.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            added = "" not in sys.path and "." not in sys.path
            if added:
                sys.path.insert(0, "")
            try:
                module = importlib.import_module(mod_name)
            finally:
                if added:
                    sys.path.remove("")
    except SurgeonError:
        raise
    except ImportError as e:
        raise SurgeonError(
            f"task {spec} cannot be loaded: cannot import {mod_name} ({e})", "check the name and PYTHONPATH"
        ) from None
    except Exception as e:
        raise SurgeonError(f"task {spec} cannot be loaded: importing {mod_name} raised {type(e).__name__}: {e}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise SurgeonError(f"task {spec} cannot be loaded: {mod_name} has no function {fn_name}")
    return fn
