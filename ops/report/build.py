"""Build the `report` numbers: per-tensor statistics, totals, and an optional comparison.

The whole checkpoint streams through once: chunks are read on a background thread while the
statistics of the previous chunk are computed, so the cost stays close to the read itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.core.patterns import UserPattern
from modelsurgeon.ops.core.streaming import prefetched
from modelsurgeon.ops.io.checkpoint import Checkpoint, TensorInfo

from .stats import CompareStats, TensorStats

CHUNK_ELEMS = 1 << 20  # 4 MB of fp32: memory stays bounded, and the several reductions per chunk hit the cache


def _align(info: TensorInfo) -> int:
    row = info.shape[-1] if info.shape else 1
    return 4 if row % 4 == 0 else 1


def provenance(ck: Checkpoint) -> dict | None:
    """What made the checkpoint, when modelsurgeon did: its version, the command and, for `surgeon run`,
    the recipe (from the weight file's metadata)."""
    meta = getattr(ck, "metadata", None) or {}
    out: dict = {}
    for key in ("version", "command", "recipe", "run"):
        v = meta.get(f"modelsurgeon_{key}")
        if v is None:
            continue
        if key in ("recipe", "run"):
            try:
                v = json.loads(v)
            except ValueError:
                pass
        out[key] = v
    return out or None


def build_report(
    ck: Checkpoint,
    other: Checkpoint | None = None,
    name_filter: UserPattern | None = None,
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
        stats[i] = TensorStats.start(infos[i].is_float or infos[i].is_fp8, row)
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
        stored = ck.describe(info.name)  # a quantized tensor: how it is stored (the statistics are of its values)
        if stored is not None:
            row["stored"] = stored
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
        "quantization_config": ck.source_quantization or (ck.config or {}).get("quantization_config"),
        "source_format": ck.source_format,
        "stored_bytes": ck.stored_bytes,
        "filter": name_filter.pattern if name_filter else None,
        "provenance": provenance(ck),
        "tensors": rows,
    }
    if other is not None:
        rels = [r["rel_l2"] for r in rows if isinstance(r.get("rel_l2"), float)]
        coss = [r["cosine"] for r in rows if isinstance(r.get("cosine"), float)]
        nan = any(r.get("rel_l2") == "nan" for r in rows)  # NaN anywhere: the summary is NaN and gates on it fail
        compared = sum(cmp[i].numel for i in cmp)
        extra = [n for n in other.names() if n not in ck and (name_filter is None or name_filter.search(n))]
        result["compare"] = {
            "other": other.label,
            "compared_tensors": len(cmp),
            "max_rel_l2": "nan" if nan else "inf" if any(r.get("rel_l2") == "inf" for r in rows) else max(rels, default=0.0),
            "mean_rel_l2": "nan" if nan else sum(rels) / len(rels) if rels else 0.0,
            "min_cosine": "nan" if nan else min(coss, default=1.0),
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
