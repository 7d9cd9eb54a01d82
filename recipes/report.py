"""`surgeon report` settings: the one place that holds their defaults (imports no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from modelsurgeon.ops.core.errors import UsageError
from modelsurgeon.ops.core.gates import Gate, parse_gate

from .base import Config, check_int, check_regex

TOTAL_KEYS = {
    "total_params": "number of values in the reported tensors",
    "nonzero_params": "number of nonzero values",
    "sparsity": "fraction of zeros, 0..1",
    "density": "fraction of nonzeros, 0..1",
    "num_tensors": "number of reported tensors",
    "bytes_on_disk": "size of the weight files",
    "nm_2_4_fraction": "fraction of 2:4-checkable tensors whose every group of 4 has at most 2 nonzeros",
}
COMPARE_KEYS = {
    "max_rel_l2": "largest per-tensor ||a-b||/||a||",
    "mean_rel_l2": "mean per-tensor ||a-b||/||a||",
    "min_cosine": "smallest per-tensor cosine similarity",
    "changed_fraction": "fraction of values that differ",
    "missing": "tensors of MODEL absent from OTHER",
    "extra": "tensors of OTHER absent from MODEL",
    "shape_changes": "tensors whose shape differs",
}


def parse_requirement(text: str, with_compare: bool) -> Gate:
    needs = {} if with_compare else {k: "--compare OTHER" for k in COMPARE_KEYS}
    return parse_gate(text, {**TOTAL_KEYS, **COMPARE_KEYS}, "--require", needs)


@dataclass(frozen=True)
class ReportConfig(Config):
    KIND = "report"
    VERSION = 1

    compare: str | None = None  # another checkpoint: per-tensor distances
    filter: str | None = None  # regex: only these tensors (totals too)
    top: int | None = None  # list only the N largest (most changed with compare)
    require: tuple[str, ...] = ()  # gates such as 'sparsity>=0.5'

    def validate(self) -> None:
        if self.filter is not None:
            check_regex(self.filter, "--filter")
        if self.top is not None:
            check_int(self.top, "--top", minimum=1)
        if isinstance(self.require, str):
            self._set("require", (self.require,))
        if not isinstance(self.require, (list, tuple)) or not all(isinstance(r, str) for r in self.require):
            raise UsageError(f"require must be a list of gates such as 'sparsity>=0.5', got {self.require!r}")
        self._set("require", tuple(self.require))
        for r in self.require:
            parse_requirement(r, self.compare is not None)
