"""Build the `report` result: per-tensor statistics, totals, an optional comparison, and gates.

The whole checkpoint streams through once: chunks are read on a background thread while the
statistics of the previous chunk are computed, so the cost stays close to the read itself.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from modelsurgeon.ops.core.errors import SurgeonError, UsageError
from modelsurgeon.ops.core.streaming import prefetched
from modelsurgeon.ops.io.checkpoint import Checkpoint, TensorInfo
from modelsurgeon.ops.io.targets import compile_regex

from .stats import CompareStats, TensorStats

CHUNK_ELEMS = 1 << 20  # 4 MB of fp32: memory stays bounded, and the several reductions per chunk hit the cache

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
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
_REQ = re.compile(r"^\s*([a-z_0-9]+)\s*(>=|<=|==|!=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Requirement:
    text: str
    key: str
    op: str
    value: float

    def check(self, result: dict) -> tuple[bool, float]:
        actual = result["compare"][self.key] if self.key in COMPARE_KEYS else result[self.key]
        return _OPS[self.op](float(actual), self.value), actual


def parse_requirement(text: str, with_compare: bool) -> Requirement:
    m = _REQ.match(text)
    if not m:
        raise UsageError(
            f"cannot read --require {text!r}",
            "write KEY OP NUMBER, e.g. 'sparsity>=0.5'; OP is one of >= <= > < == !=",
        )
    key, op, value = m.group(1), m.group(2), float(m.group(3))
    if key in COMPARE_KEYS and not with_compare:
        raise UsageError(f"--require {text!r} uses {key}, which needs --compare OTHER")
    if key not in TOTAL_KEYS and key not in COMPARE_KEYS:
        known = ", ".join(list(TOTAL_KEYS) + list(COMPARE_KEYS))
        raise UsageError(f"--require {text!r}: unknown key {key!r}", f"known keys: {known}")
    return Requirement(text.strip(), key, op, value)


def compile_filter(pattern: str | None) -> re.Pattern | None:
    return compile_regex(pattern, "--filter")


def _align(info: TensorInfo) -> int:
    row = info.shape[-1] if info.shape else 1
    return 4 if row % 4 == 0 else 1


def build_report(
    ck: Checkpoint,
    other: Checkpoint | None = None,
    name_filter: re.Pattern | None = None,
    top: int | None = None,
    advance: Callable[[int], None] = lambda n: None,
) -> dict:
    infos = [i for i in ck.infos() if name_filter is None or name_filter.search(i.name)]
    if name_filter is not None and not infos:
        raise SurgeonError(
            f"--filter {name_filter.pattern!r} matches no tensor of {ck.label}",
            "check the pattern against `surgeon report MODEL`",
        )
    stats: list[TensorStats] = [TensorStats(is_float=i.is_float) for i in infos]
    cmp: dict[int, CompareStats] = {}
    missing, shape_changes, dtype_changes = [], [], []
    comparable: set[int] = set()
    if other is not None:
        for i, info in enumerate(infos):
            if info.name not in other:
                missing.append(info.name)
            elif other.info(info.name).shape != info.shape:
                shape_changes.append(
                    {"name": info.name, "shape": list(info.shape), "other_shape": list(other.info(info.name).shape)}
                )
            else:
                comparable.add(i)
                if other.info(info.name).dtype != info.dtype:
                    dtype_changes.append({"name": info.name, "dtype": info.dtype, "other_dtype": other.info(info.name).dtype})
    # one pass: each chunk (and the other model's matching chunk) is folded in as it arrives
    for i in range(len(infos)):
        row = infos[i].shape[-1] if infos[i].shape else 1
        stats[i] = TensorStats.start(infos[i].is_float, row)
        if i in comparable:
            cmp[i] = CompareStats()
    for i, chunk, other_chunk in prefetched(_paired_chunks(ck, other, infos, comparable)):
        stats[i].update(chunk)
        if other_chunk is not None:
            cmp[i].update(chunk, other_chunk)
        advance(chunk.numel() * chunk.element_size())
    rows = []
    for i, info in enumerate(infos):
        row = {"name": info.name, "shape": list(info.shape), "dtype": info.dtype, **stats[i].as_dict()}
        if other is not None:
            row.update(
                cmp[i].as_dict()
                if i in cmp
                else {"rel_l2": None, "cosine": None, "changed_fraction": None, "sign_agreement": None}
            )
        rows.append(row)
    total = sum(s.numel for s in stats)
    nonzero = sum(s.nonzero for s in stats)
    checkable = [s.nm24 for s in stats if s.nm24 is not None]
    dtypes: dict[str, int] = {}
    for info in infos:
        dtypes[info.dtype] = dtypes.get(info.dtype, 0) + info.numel
    result = {
        "model": ck.label,
        "files": [str(f) for f in ck.weight_files],
        "format": ck.kind,
        "num_tensors": len(infos),
        "total_params": total,
        "nonzero_params": nonzero,
        "sparsity": 1 - nonzero / total if total else 0.0,
        "density": nonzero / total if total else 0.0,
        "nm_2_4_fraction": (sum(checkable) / len(checkable)) if checkable else 0.0,
        "bytes_on_disk": ck.bytes_on_disk,
        "dtypes": dtypes,
        "quantization_config": (ck.config or {}).get("quantization_config"),
        "filter": name_filter.pattern if name_filter else None,
        "tensors": rows,
    }
    if other is not None:
        rels = [r["rel_l2"] for r in rows if isinstance(r.get("rel_l2"), float)]
        coss = [r["cosine"] for r in rows if r.get("cosine") is not None]
        compared = sum(cmp[i].numel for i in cmp)
        extra = [n for n in other.names() if n not in ck and (name_filter is None or name_filter.search(n))]
        result["compare"] = {
            "other": other.label,
            "compared_tensors": len(cmp),
            "max_rel_l2": max(rels, default=0.0) if not any(r.get("rel_l2") == "inf" for r in rows) else "inf",
            "mean_rel_l2": sum(rels) / len(rels) if rels else 0.0,
            "min_cosine": min(coss, default=1.0),
            "changed_fraction": sum(cmp[i].changed for i in cmp) / compared if compared else 0.0,
            "missing": len(missing),
            "extra": len(extra),
            "shape_changes": len(shape_changes),
            "missing_tensors": missing,
            "extra_tensors": extra,
            "shape_changed_tensors": shape_changes,
            "dtype_changed_tensors": dtype_changes,
        }
    if top is not None:
        key = (
            (lambda r: r["rel_l2"] if isinstance(r.get("rel_l2"), float) else -1.0)
            if other is not None
            else (lambda r: r["numel"])
        )
        result["tensors"] = sorted(rows, key=key, reverse=True)[:top]
        result["top"] = top
    return result


def _paired_chunks(ck: Checkpoint, other: Checkpoint | None, infos: list[TensorInfo], comparable: set[int]):
    for i, info in enumerate(infos):
        align = _align(info)
        mine = ck.iter_chunks(info.name, CHUNK_ELEMS, align)
        theirs = other.iter_chunks(info.name, CHUNK_ELEMS, align) if i in comparable else None
        for c in mine:
            yield i, c, (next(theirs) if theirs is not None else None)
