"""Tasks for ``intrinsic-dim``: data, loss and the metric that is thresholded, all offline.

A task spec is one of (registry ``TASKS``, by prefix):

- ``toy``: Li et al.'s Section 2 example. D = 1000 parameters, 10 groups of 100 whose sums must equal
  1, 2, ..., 10 (squared error). The solution set has codimension 10, so d_int = 10 exactly. Metric: 1.0 when
  every group sum is within 0.01 of its target (solved), else 0.0; below d = 10 the best fit misses by O(1).
  Trained with full-batch L-BFGS (3 rounds), which solves the quadratic to float32 precision.
- ``digits``: scikit-learn's bundled 8x8 digits (1797 images, 10 classes), pixels / 16; a fixed 20 % test split.
- ``npz:PATH``: arrays ``X`` and ``y`` (also ``x``/``inputs``/``input_ids`` and ``Y``/``labels``/``targets``),
  optionally ``X_test``/``y_test``; float X = features, integer 2-D X = token ids for a transformers MODEL
  (``attention_mask`` optional). Integer y = classification (accuracy), float y = regression (R^2).
- ``csv:PATH``: one example per row. With a ``text`` (or ``sentence``) column: text classification for a
  transformers MODEL, labels from ``label``; otherwise numeric features with the label in ``label``/``y``/
  ``target`` or the last column. A header row is needed when there is a text column.
- ``text:PATH``: UTF-8 text for a causal LM MODEL: tokenised with MODEL's tokenizer, cut into blocks;
  loss = next-token cross-entropy, metric = exp(-loss) = 1 / perplexity (so 90 % of the baseline means a
  perplexity within 1/0.9 of full fine-tuning's).
- ``module:function`` (``pkg.mod:fn`` or ``path/file.py:fn``): a function returning a dict with ``model``
  (an nn.Module), ``train`` = (X, y), optional ``test`` = (X, y), ``loss(output, y)`` and ``metric`` (a
  callable ``(output, y) -> float``, higher is better, or ``"accuracy"``/``"r2"``).

Without explicit test data, 20 % of the examples (10 % of the text blocks) are held out with a fixed seed;
with fewer than 10 examples the metric is measured on the training data and the JSON says so.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import math
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from modelsurgeon.ops.core.errors import SurgeonError, UsageError
from modelsurgeon.ops.core.registry import Registry
from modelsurgeon.recipes.intrinsic_dim import parse_task_spec

TOY_TOL = 0.01
SPLIT_SEED = 0  # the held-out split never changes with --seeds
EVAL_FRACTION = 0.2


@dataclass
class Batch:
    args: tuple
    kwargs: dict
    target: torch.Tensor | None


@dataclass
class Task:
    spec: str
    kind: str  # toy | features | tokens | text | lm | module
    problem: str  # toy | classification | regression | lm
    train: dict = field(default_factory=dict)  # name -> tensor (first dim = examples)
    test: dict = field(default_factory=dict)
    eval_split: str = "held-out"
    n_classes: int = 0
    texts: tuple[list[str], list[str]] | None = None  # raw text to tokenise (csv text / text:)
    raw_text: str | None = None
    module_result: dict | None = None
    loss_fn: Callable | None = None
    metric_fn: Callable | None = None
    defaults: dict = field(default_factory=dict)  # recipe fields this task changes unless the user set them
    input_shape: tuple[int, ...] | None = None  # per example, for --arch lenet
    class_names: list[str] | None = None  # csv string labels, in label order

    @property
    def metric_name(self) -> str:
        if self.problem == "toy":
            return "solved"
        if self.problem == "lm":
            return "token_prob"
        if self.problem == "regression":
            return "r2"
        if self.kind == "module" and callable(self.metric_fn):
            return getattr(self.metric_fn, "__name__", "metric")
        return "accuracy"

    @property
    def n_train(self) -> int:
        return _n(self.train)

    @property
    def n_test(self) -> int:
        return _n(self.test)

    @property
    def in_features(self) -> int:
        x = self.train.get("x")
        return int(x[0].numel()) if x is not None else 0

    def to(self, device) -> Task:
        self.train = {k: v.to(device) for k, v in self.train.items()}
        self.test = {k: v.to(device) for k, v in self.test.items()}
        return self

    # --- batches
    def batches(self, split: str, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        data = self.train if split == "train" else self.test
        if self.problem == "toy":
            yield Batch((), {}, data["y"])
            return
        n = _n(data)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for s in range(0, n, batch_size):
            idx = order[s : s + batch_size].to(next(iter(data.values())).device)
            yield self._batch({k: v[idx] for k, v in data.items()})

    def _batch(self, b: dict) -> Batch:
        if "input_ids" in b:
            kw = {"input_ids": b["input_ids"]}
            if "attention_mask" in b:
                kw["attention_mask"] = b["attention_mask"]
            if "y" in b:
                return Batch((), kw, b["y"])
            labels = b["input_ids"]  # a causal LM predicts its own tokens; padding is ignored
            if "attention_mask" in b:
                labels = labels.masked_fill(b["attention_mask"] == 0, -100)
            return Batch((), kw, labels)
        return Batch((b["x"],), {}, b["y"])

    # --- loss and metric
    def loss(self, output, target) -> torch.Tensor:
        out = _logits(output)
        if self.problem == "toy":
            return ((out - target) ** 2).sum()
        if self.loss_fn is not None:
            return self.loss_fn(out, target)
        if self.problem == "lm":
            return _lm_loss(out, target)
        if self.problem == "regression":
            return F.mse_loss(out.reshape(target.shape), target)
        return F.cross_entropy(out, target)

    def evaluate(self, forward: Callable[[Batch], object], batch_size: int) -> tuple[float, float]:
        """(metric, loss) on the evaluation split; ``forward(batch)`` runs the model."""
        split = "test" if self.test else "train"
        if self.problem == "toy":
            b = next(self.batches(split, batch_size))
            out = _logits(forward(b))
            solved = float((out - b.target).abs().max()) <= TOY_TOL
            return (1.0 if solved else 0.0), float(((out - b.target) ** 2).sum())
        if self.kind == "module" and callable(self.metric_fn):
            outs, ys = [], []
            for b in self.batches(split, batch_size):
                outs.append(_logits(forward(b)).detach())
                ys.append(b.target)
            out, y = torch.cat(outs), torch.cat(ys)
            return float(self.metric_fn(out, y)), float(self.loss(out, y))
        if self.problem == "lm":
            nll, count = 0.0, 0
            for b in self.batches(split, batch_size):
                s, c = _lm_nll_sum(_logits(forward(b)), b.target)
                nll, count = nll + s, count + c
            loss = nll / max(count, 1)
            return math.exp(-loss), loss
        total, loss_sum, correct, sse = 0, 0.0, 0.0, 0.0
        for b in self.batches(split, batch_size):
            out = _logits(forward(b))
            n = b.target.shape[0]
            loss_sum += float(self.loss(out, b.target)) * n
            total += n
            if self.problem == "regression":
                sse += float(((out.reshape(b.target.shape) - b.target) ** 2).sum())
            else:
                correct += float((out.argmax(-1) == b.target).sum())
        if self.problem == "regression":
            y = (self.test or self.train)["y"]
            sst = float(((y - y.mean()) ** 2).sum())
            return (1.0 - sse / sst if sst > 0 else 0.0), loss_sum / total
        return correct / total, loss_sum / total

    # --- text
    def tokenize(self, tokenizer, max_len: int, model_max: int | None = None) -> None:
        """Turn raw text into token tensors (csv text classification, or text: blocks for an LM)."""
        if self.kind == "text":
            (tr_texts, tr_y), (te_texts, te_y) = self.texts  # type: ignore[misc]
            self.train = {**_encode(tokenizer, tr_texts, max_len), "y": tr_y}
            self.test = {**_encode(tokenizer, te_texts, max_len), "y": te_y} if te_texts else {}
            self.kind = "tokens"
        elif self.kind == "lm":
            block = min(max_len, model_max or max_len)
            ids = tokenizer(self.raw_text, add_special_tokens=False)["input_ids"]
            if len(ids) < 2:
                raise SurgeonError(f"task {self.spec}: the text gives {len(ids)} token(s)", "give a longer text")
            blocks = [ids[i : i + block] for i in range(0, len(ids), block)]
            if len(blocks) > 1 and len(blocks[-1]) < 2:
                blocks.pop()
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            width = max(len(b) for b in blocks)
            input_ids = torch.full((len(blocks), width), pad, dtype=torch.long)
            mask = torch.zeros((len(blocks), width), dtype=torch.long)
            for i, b in enumerate(blocks):
                input_ids[i, : len(b)] = torch.tensor(b)
                mask[i, : len(b)] = 1
            data = {"input_ids": input_ids, "attention_mask": mask}
            if len(blocks) >= 10:
                n_eval = max(1, len(blocks) // 10)
                self.train = {k: v[:-n_eval] for k, v in data.items()}
                self.test = {k: v[-n_eval:] for k, v in data.items()}
                self.eval_split = f"last {n_eval} of {len(blocks)} blocks of {block} tokens"
            else:
                self.train, self.test = data, {}
                self.eval_split = f"train ({len(blocks)} blocks of {block} tokens: too few to hold some out)"

    def describe(self) -> dict:
        return {
            "spec": self.spec,
            "problem": self.problem,
            "metric": self.metric_name,
            "n_train": None if self.problem == "toy" else self.n_train,
            "n_eval": None if self.problem == "toy" else (self.n_test or self.n_train),
            "eval_split": self.eval_split,
            "n_classes": self.n_classes or None,
        }


def _n(data: dict) -> int:
    return int(next(iter(data.values())).shape[0]) if data else 0


def _logits(output):
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)):
        return output[0]
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    raise SurgeonError(f"the model returned {type(output).__name__}, not a tensor or an output with .logits")


def _lm_nll_sum(logits, labels) -> tuple[float, int]:
    tgt = labels[:, 1:].reshape(-1)
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), tgt, ignore_index=-100, reduction="sum")
    return float(nll), int((tgt != -100).sum())


def _lm_loss(logits, labels) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100)


def _encode(tokenizer, texts: list[str], max_len: int) -> dict:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    out = {"input_ids": enc["input_ids"]}
    if "attention_mask" in enc:
        out["attention_mask"] = enc["attention_mask"]
    return out


# --------------------------------------------------------------------------------------------
# splits and label handling


def _split(n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    if n < 10:
        return None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = max(1, round(n * EVAL_FRACTION))
    return perm[n_test:], perm[:n_test]


def _finish(task: Task, data: dict, test: dict | None) -> Task:
    if test:
        task.train, task.test, task.eval_split = data, test, "given"
    else:
        sp = _split(_n(data))
        if sp is None:
            task.train, task.test = data, {}
            task.eval_split = f"train ({_n(data)} examples: too few to hold some out)"
        else:
            tr, te = sp
            task.train = {k: v[tr] for k, v in data.items()}
            task.test = {k: v[te] for k, v in data.items()}
            task.eval_split = f"held-out {len(te)} of {_n(data)} (seed {SPLIT_SEED})"
    return task


def _labels(spec: str, y: torch.Tensor) -> tuple[str, int]:
    if y.ndim != 1:
        raise SurgeonError(f"task {spec}: y must be 1-D (one label per example), got shape {list(y.shape)}")
    if y.is_floating_point():
        return "regression", 0
    if int(y.min()) < 0:
        raise SurgeonError(f"task {spec}: class labels must be 0..K-1, found {int(y.min())}")
    k = int(y.max()) + 1
    if k < 2:
        raise SurgeonError(f"task {spec}: y holds a single class", "classification needs at least 2 classes")
    return "classification", k


def _features_task(spec: str, X: torch.Tensor, y: torch.Tensor, Xt=None, yt=None, mask=None, mask_t=None) -> Task:
    if X.shape[0] != y.shape[0]:
        raise SurgeonError(f"task {spec}: X has {X.shape[0]} examples but y has {y.shape[0]}")
    if X.shape[0] == 0:
        raise SurgeonError(f"task {spec}: no examples")
    problem, k = _labels(spec, y)
    if Xt is not None:
        if Xt.shape[0] != yt.shape[0] or (X.is_floating_point() and Xt.shape[1:] != X.shape[1:]):
            raise SurgeonError(f"task {spec}: X_test/y_test do not match X/y in shape")
        if problem == "classification":
            k = max(k, int(yt.max()) + 1)
    ylab = (lambda t: t.float()) if problem == "regression" else (lambda t: t.long())  # noqa: E731
    tokens = not X.is_floating_point()
    if tokens:
        if X.ndim != 2:
            raise SurgeonError(f"task {spec}: integer X must be 2-D token ids (examples x tokens), got {list(X.shape)}")
        data = {"input_ids": X.long(), "y": ylab(y)}
        test = {"input_ids": Xt.long(), "y": ylab(yt)} if Xt is not None else None
        for d, m, x in ((data, mask, X), (test, mask_t, Xt)):
            if d is not None and m is not None:
                if tuple(m.shape) != tuple(x.shape):
                    raise SurgeonError(f"task {spec}: attention_mask shape {list(m.shape)} differs from X {list(x.shape)}")
                d["attention_mask"] = m.long()
    else:
        data = {"x": X.float(), "y": ylab(y)}
        test = {"x": Xt.float(), "y": ylab(yt)} if Xt is not None else None
    task = Task(spec, "tokens" if tokens else "features", problem, n_classes=k)
    if not tokens:
        task.input_shape = tuple(X.shape[1:])
    return _finish(task, data, test)


# --------------------------------------------------------------------------------------------
# the tasks


def _toy(spec: str, arg: str | None) -> Task:
    target = torch.arange(1, 11, dtype=torch.float32)
    task = Task(spec, "toy", "toy", eval_split="the training objective itself")
    task.train = task.test = {"y": target}
    task.defaults = {"optimizer": "lbfgs", "epochs": 3, "lr": 1.0, "baseline_lr": 1.0}
    return task


def _digits(spec: str, arg: str | None) -> Task:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SurgeonError("task digits needs scikit-learn", "run: pip install scikit-learn") from None
    X, y = load_digits(return_X_y=True)
    task = _features_task(spec, torch.tensor(X, dtype=torch.float32) / 16.0, torch.tensor(y, dtype=torch.long))
    task.input_shape = (1, 8, 8)
    return task


def _path(spec: str, arg: str | None) -> Path:
    if not arg:
        raise UsageError(f"task {spec!r} needs a path after the colon", "e.g. --task npz:data.npz")
    p = Path(arg).expanduser()
    if not p.is_file():
        raise SurgeonError(f"task {spec} cannot be loaded: no such file {p}")
    return p


_X_KEYS = ("X", "x", "inputs", "input_ids")
_Y_KEYS = ("y", "Y", "labels", "label", "targets")


def _npz(spec: str, arg: str | None) -> Task:
    import numpy as np

    p = _path(spec, arg)
    if not zipfile.is_zipfile(p):
        raise SurgeonError(
            f"task {spec} cannot be loaded: {p} is not a .npz file", "write it with numpy.savez(PATH, X=..., y=...)"
        )
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        raise SurgeonError(f"task {spec} cannot be loaded: {e}", "save plain numeric arrays with numpy.savez") from None
    except Exception as e:
        raise SurgeonError(
            f"task {spec} cannot be loaded: {p} is not a .npz file ({type(e).__name__})",
            "write it with numpy.savez(PATH, X=..., y=...)",
        ) from None

    def pick(keys, suffix=""):
        for k in keys:
            if k + suffix in arrays:
                return arrays[k + suffix]
        return None

    X, y = pick(_X_KEYS), pick(_Y_KEYS)
    if X is None or y is None:
        raise SurgeonError(
            f"task {spec} cannot be loaded: {p.name} holds {sorted(arrays)} but needs arrays X and y",
            "write it with numpy.savez(PATH, X=..., y=...)",
        )
    Xt, yt = pick(_X_KEYS, "_test"), pick(_Y_KEYS, "_test")
    if (Xt is None) != (yt is None):
        raise SurgeonError(f"task {spec}: give both X_test and y_test, or neither")
    for name, a in (("X", X), ("y", y)):
        if a.dtype.kind not in "biuf":
            raise SurgeonError(f"task {spec}: {name} has dtype {a.dtype}, not numbers")
    t = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return _features_task(spec, t(X), t(y), t(Xt), t(yt), t(arrays.get("attention_mask")), t(arrays.get("attention_mask_test")))


def _csv(spec: str, arg: str | None) -> Task:
    p = _path(spec, arg)
    try:
        with open(p, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SurgeonError(f"task {spec} cannot be loaded: {e}") from None
    if len(rows) < 2:
        raise SurgeonError(f"task {spec} cannot be loaded: {p.name} has fewer than 2 rows")
    width = len(rows[0])
    bad = next((i for i, r in enumerate(rows) if len(r) != width), None)
    if bad is not None:
        raise SurgeonError(f"task {spec} cannot be loaded: row {bad + 1} has {len(rows[bad])} fields, the first has {width}")

    def numeric(s: str) -> bool:
        try:
            float(s)
            return True
        except ValueError:
            return False

    header = [h.strip().lower() for h in rows[0]] if not all(numeric(c) for c in rows[0]) else None
    body = rows[1:] if header else rows
    label_names = ("label", "y", "target", "labels", "class")
    text_col = next((header.index(n) for n in ("text", "sentence") if header and n in header), None)
    label_col = next((header.index(n) for n in label_names if header and n in header), width - 1 if text_col is None else None)
    if label_col is None:
        raise SurgeonError(f"task {spec}: a text column needs a label column", f"name one of: {', '.join(label_names)}")
    labels_raw = [r[label_col].strip() for r in body]
    if all(numeric(v) for v in labels_raw):
        vals = [float(v) for v in labels_raw]
        if all(v == int(v) for v in vals):
            y = torch.tensor([int(v) for v in vals], dtype=torch.long)
        else:
            y = torch.tensor(vals, dtype=torch.float32)
    else:
        classes = sorted(set(labels_raw))
        y = torch.tensor([classes.index(v) for v in labels_raw], dtype=torch.long)
    class_names = None if all(numeric(v) for v in labels_raw) else classes
    if text_col is not None:
        problem, k = _labels(spec, y)
        if problem != "classification":
            raise SurgeonError(f"task {spec}: text tasks need class labels, {header[label_col]} holds fractions")
        texts = [r[text_col] for r in body]
        task = Task(spec, "text", "classification", n_classes=k, class_names=class_names)
        task.defaults = {"batch_size": 32}
        sp = _split(len(texts))
        if sp is None:
            task.texts = ((texts, y), ([], y[:0]))
            task.eval_split = f"train ({len(texts)} examples: too few to hold some out)"
        else:
            tr, te = sp
            task.texts = (([texts[i] for i in tr.tolist()], y[tr]), ([texts[i] for i in te.tolist()], y[te]))
            task.eval_split = f"held-out {len(te)} of {len(texts)} (seed {SPLIT_SEED})"
        return task
    feats = [c for c in range(width) if c != label_col]
    try:
        X = torch.tensor([[float(r[c]) for c in feats] for r in body], dtype=torch.float32)
    except ValueError as e:
        raise SurgeonError(
            f"task {spec}: a feature is not a number ({e})", "features must be numeric, or name a text column"
        ) from None
    task = _features_task(spec, X, y)
    task.class_names = class_names
    return task


def _text(spec: str, arg: str | None) -> Task:
    p = _path(spec, arg)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SurgeonError(f"task {spec} cannot be loaded: {e}") from None
    if not text.strip():
        raise SurgeonError(f"task {spec} cannot be loaded: {p.name} is empty")
    task = Task(spec, "lm", "lm", raw_text=text)
    # a pretrained LM starts far above zero: count the fraction of the improvement over theta_0 instead
    task.defaults = {"threshold_from": "init", "batch_size": 8}  # 128 blocks of logits over a real vocabulary would not fit
    return task


def _module(spec: str, arg: str | None) -> Task:
    mod_name, _, fn_name = spec.rpartition(":")
    fn = _import_function(spec, mod_name, fn_name)
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
    problem = "regression" if y.is_floating_point() else "classification"
    task = Task(spec, "module", problem, n_classes=int(y.max()) + 1 if problem == "classification" else 0)
    data = {"x": X, "y": y}
    task = _finish(task, data, {"x": test[0], "y": test[1]} if test is not None else None)
    task.kind = "module"
    task.module_result = result
    loss, metric = result.get("loss"), result.get("metric")
    if loss is not None and not callable(loss):
        raise SurgeonError(f"task {spec}: 'loss' must be callable(output, y)")
    task.loss_fn = loss
    if metric in (None, "accuracy", "r2"):
        if metric == "r2":
            task.problem = "regression"
        elif metric == "accuracy":
            task.problem = "classification"
    elif callable(metric):
        task.metric_fn = metric
    else:
        raise SurgeonError(f"task {spec}: 'metric' must be 'accuracy', 'r2' or callable(output, y) -> float")
    return task


def _import_function(spec: str, mod_name: str, fn_name: str):
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


@dataclass(frozen=True)
class TaskKind:
    name: str
    load: Callable[[str, str | None], Task]
    summary: str


TASKS: Registry[TaskKind] = Registry("task", usage=False)


def register(name: str, load, summary: str) -> None:
    TASKS.add(name, TaskKind(name, load, summary))


register("toy", _toy, "Li et al.'s D = 1000 group-sum example; d_int = 10 exactly")
register("digits", _digits, "scikit-learn's 8x8 digits, 10 classes")
register("npz", _npz, "npz:PATH with arrays X, y (optional X_test, y_test)")
register("csv", _csv, "csv:PATH, numeric features or a text column, and a label column")
register("text", _text, "text:PATH, a UTF-8 text for a causal LM (1 / perplexity)")


def load_task(spec: str) -> Task:
    kind, arg = parse_task_spec(spec)
    if kind == "module":
        return _module(spec, arg)
    return TASKS[kind].load(spec, arg)
