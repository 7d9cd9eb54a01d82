"""``csv:PATH``: one example per row. With a ``text`` (or ``sentence``) column: text classification for a
transformers MODEL (``TextClassificationTask``), labels from ``label``; otherwise numeric features
(``FeatureTask``) with the label in ``label``/``y``/``target`` or the last column. A header row is needed
when there is a text column. String labels become classes in sorted order (their names go to the model's
config as ``id2label``)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import ClassVar

import torch

from modelsurgeon.ops.core.errors import SurgeonError

from .base import SPLIT_SEED, Task, split_indices, task_file
from .labelled import TokenTask, examples_task, problem_of

LABEL_NAMES = ("label", "y", "target", "labels", "class")


@dataclass
class TextClassificationTask(TokenTask):
    """Texts with class labels; MODEL's tokenizer turns them into token ids (``tokenize``) before training."""

    holds: ClassVar[str] = "text"
    needs_tokenizer: ClassVar[bool] = True

    texts: tuple[tuple[list[str], torch.Tensor], tuple[list[str], torch.Tensor]] | None = None  # (train, eval) texts, labels

    def tokenize(self, tokenizer, max_len: int, model_max: int | None = None) -> None:
        (tr_texts, tr_y), (te_texts, te_y) = self.texts  # type: ignore[misc]
        self.train = {**_encode(tokenizer, tr_texts, max_len), "y": tr_y}
        self.test = {**_encode(tokenizer, te_texts, max_len), "y": te_y} if te_texts else {}


def _encode(tokenizer, texts: list[str], max_len: int) -> dict:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    out = {"input_ids": enc["input_ids"]}
    if "attention_mask" in enc:
        out["attention_mask"] = enc["attention_mask"]
    return out


def _numeric(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def load(spec: str, arg: str | None) -> Task:
    p = task_file(spec, arg)
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

    header = [h.strip().lower() for h in rows[0]] if not all(_numeric(c) for c in rows[0]) else None
    body = rows[1:] if header else rows
    text_col = next((header.index(n) for n in ("text", "sentence") if header and n in header), None)
    label_col = next((header.index(n) for n in LABEL_NAMES if header and n in header), width - 1 if text_col is None else None)
    if label_col is None:
        raise SurgeonError(f"task {spec}: a text column needs a label column", f"name one of: {', '.join(LABEL_NAMES)}")
    labels_raw = [r[label_col].strip() for r in body]
    if all(_numeric(v) for v in labels_raw):
        vals = [float(v) for v in labels_raw]
        if all(v == int(v) for v in vals):
            y = torch.tensor([int(v) for v in vals], dtype=torch.long)
        else:
            y = torch.tensor(vals, dtype=torch.float32)
        class_names = None
    else:
        class_names = sorted(set(labels_raw))
        y = torch.tensor([class_names.index(v) for v in labels_raw], dtype=torch.long)
    if text_col is not None:
        return _text_task(spec, [r[text_col] for r in body], y, class_names, header[label_col])  # type: ignore[index]
    feats = [c for c in range(width) if c != label_col]
    try:
        X = torch.tensor([[float(r[c]) for c in feats] for r in body], dtype=torch.float32)
    except ValueError as e:
        raise SurgeonError(
            f"task {spec}: a feature is not a number ({e})", "features must be numeric, or name a text column"
        ) from None
    task = examples_task(spec, X, y)
    task.class_names = class_names
    return task


def _text_task(spec: str, texts: list[str], y: torch.Tensor, class_names, label_name: str) -> TextClassificationTask:
    problem, k = problem_of(spec, y)
    if problem != "classification":
        raise SurgeonError(f"task {spec}: text tasks need class labels, {label_name} holds fractions")
    task = TextClassificationTask(spec, problem, n_classes=k, class_names=class_names, defaults={"batch_size": 32})
    sp = split_indices(len(texts))
    if sp is None:
        task.texts = ((texts, y), ([], y[:0]))
        task.eval_split = f"train ({len(texts)} examples: too few to hold some out)"
    else:
        tr, te = sp
        task.texts = (([texts[i] for i in tr.tolist()], y[tr]), ([texts[i] for i in te.tolist()], y[te]))
        task.eval_split = f"held-out {len(te)} of {len(texts)} (seed {SPLIT_SEED})"
    return task
