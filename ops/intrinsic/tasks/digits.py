"""``digits``: scikit-learn's bundled 8x8 digits (1797 images, 10 classes), pixels / 16; a fixed 20 % test split."""

from __future__ import annotations

import torch

from modelsurgeon.ops.core.errors import SurgeonError

from .labelled import LabelledTask, examples_task


def load(spec: str, arg: str | None) -> LabelledTask:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SurgeonError(
            "task digits needs scikit-learn", "run: pip install 'modelsurgeon[tasks]'  (or pip install scikit-learn)"
        ) from None
    X, y = load_digits(return_X_y=True)
    task = examples_task(spec, torch.tensor(X, dtype=torch.float32) / 16.0, torch.tensor(y, dtype=torch.long))
    task.input_shape = (1, 8, 8)
    return task
