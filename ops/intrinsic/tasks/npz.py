"""``npz:PATH``: arrays ``X`` and ``y`` (also ``x``/``inputs``/``input_ids`` and ``Y``/``labels``/``targets``),
optionally ``X_test``/``y_test``; float X = features, integer 2-D X = token ids for a transformers MODEL
(``attention_mask`` optional). Integer y = classification (accuracy), float y = regression (R^2)."""

from __future__ import annotations

import zipfile

import torch

from modelsurgeon.ops.core.errors import SurgeonError

from .base import task_file
from .labelled import LabelledTask, examples_task

X_KEYS = ("X", "x", "inputs", "input_ids")
Y_KEYS = ("y", "Y", "labels", "label", "targets")


def load(spec: str, arg: str | None) -> LabelledTask:
    import numpy as np

    p = task_file(spec, arg)
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

    X, y = pick(X_KEYS), pick(Y_KEYS)
    if X is None or y is None:
        raise SurgeonError(
            f"task {spec} cannot be loaded: {p.name} holds {sorted(arrays)} but needs arrays X and y",
            "write it with numpy.savez(PATH, X=..., y=...)",
        )
    Xt, yt = pick(X_KEYS, "_test"), pick(Y_KEYS, "_test")
    if (Xt is None) != (yt is None):
        raise SurgeonError(f"task {spec}: give both X_test and y_test, or neither")
    for name, a in (("X", X), ("y", y)):
        if a.dtype.kind not in "biuf":
            raise SurgeonError(f"task {spec}: {name} has dtype {a.dtype}, not numbers")
    t = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return examples_task(spec, t(X), t(y), t(Xt), t(yt), t(arrays.get("attention_mask")), t(arrays.get("attention_mask_test")))
