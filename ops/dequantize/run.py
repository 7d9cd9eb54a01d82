"""`surgeon dequantize`, second step: every tensor through the dequantizing view into plain safetensors.

    with plan_dequantize(cfg, "model-fp8/", "dense/") as plan:   # ops/dequantize/plan.py
        result = run_dequantize(plan, progress)                 # one tensor at a time, atomic output

The output is what transformers loads: the logical tensors under their transformers names, config.json
without ``quantization_config`` (a GGUF source gets the config and tokenizer its metadata describes), and the
tokenizer and generation files copied over. Memory follows the largest tensor: one is decoded, cast and
appended to its shard while the next one's stored parts are read.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from modelsurgeon.ops.core.progress import SILENT, Progress
from modelsurgeon.ops.core.result import Result
from modelsurgeon.ops.core.streaming import cpu_threads
from modelsurgeon.ops.io.checkpoint import st_dtype_to_torch
from modelsurgeon.ops.io.output import write_folder
from modelsurgeon.ops.io.writer import TensorSpec

from .plan import DequantizePlan


@dataclass
class DequantizedRow:
    name: str
    shape: list[int]
    stored: str  # the stored form: "compressed-tensors pack-quantized int4 group 128 symmetric", or its dtype
    dtype: str  # written


@dataclass
class DequantizeResult(Result):
    model: str
    output: str
    source_format: str
    dtype: str
    num_tensors: int
    dequantized_tensors: int
    bytes_read: int
    bytes_written: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    tensors: list[DequantizedRow] = field(default_factory=list)


def run_dequantize(plan: DequantizePlan, progress: Progress = SILENT, command: str | None = None) -> DequantizeResult:
    ck = plan.ck
    for n in plan.notes:
        progress.note(n)
    if command is None:
        command = f"modelsurgeon.dequantize({ck.label!r}, {str(plan.output.path)!r}, dtype={plan.config.dtype!r})"
    infos = ck.infos()
    specs = [TensorSpec(i.name, tuple(i.shape), st_dtype_to_torch(plan.out_dtype(i))) for i in infos]
    rows, stored_of = [], {}
    raw = getattr(ck, "raw", None)
    for i in infos:
        d = ck.describe(i.name)
        rows.append(DequantizedRow(i.name, list(i.shape), f"{d['format']} {d['scheme']}" if d else i.dtype, plan.out_dtype(i)))
        if d is None:
            stored_of[i.name] = i.nbytes
        elif raw is not None:
            stored_of[i.name] = sum(raw.info(p["name"]).nbytes for p in d["parts"].values())
        else:  # a GGUF tensor: its bytes in the file
            stored_of[i.name] = d["parts"]["data"]["bytes"]
    progress.start(f"dequantize {ck.source_format}", sum(stored_of.values()), "bytes")

    def produce():
        for (name, t), spec in zip(ck.iter_tensors(), specs):
            yield name, t.to(spec.dtype)
            progress.advance(stored_of[name])

    meta = {
        "modelsurgeon_recipe": json.dumps(plan.config.to_dict(), sort_keys=True),
        "modelsurgeon_source_format": ck.source_format,
    }
    t0 = time.perf_counter()
    with cpu_threads():
        write_folder(
            plan.output,
            specs,
            produce(),
            source=ck,
            command=command,
            metadata=meta,
            update_config=lambda c: plain_config(c, plan.config.st_dtype),
        )
    return DequantizeResult(
        model=ck.label,
        output=str(plan.output.path),
        source_format=ck.source_format,
        dtype=plan.config.dtype,
        num_tensors=len(infos),
        dequantized_tensors=sum(1 for i in infos if ck.is_quantized(i.name)),
        bytes_read=sum(stored_of.values()),
        bytes_written=sum(s.nbytes for s in specs),
        seconds=round(time.perf_counter() - t0, 3),
        notes=list(plan.notes),
        tensors=rows,
    )


def plain_config(cfg: dict, dtype: str | None) -> dict:
    """config.json of the dense output: no quantization_config, and the dtype written when --dtype set one."""
    cfg = {k: v for k, v in cfg.items() if k != "quantization_config"}
    if dtype is not None:
        name = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}[dtype]
        for key in ("torch_dtype", "dtype"):
            if key in cfg or key == "torch_dtype":
                cfg[key] = name
    return cfg
