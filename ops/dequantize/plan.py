"""`surgeon dequantize`, first step: open the checkpoint (any format ``open_checkpoint`` reads) and check.

    cfg = DequantizeConfig(dtype="bf16")
    with plan_dequantize(cfg, "model-fp8/", "dense/") as plan:   # headers only; every problem reported at once
        result = run_dequantize(plan, progress)                 # ops/dequantize/run.py

The checkpoint comes back from ``ops/io`` as a dequantizing view (compressed-tensors, FP8 block scales,
bitsandbytes, GGUF), so this command only chooses the output dtype and writes. A plain checkpoint is refused:
there is nothing to dequantize (``surgeon report`` says what a checkpoint holds).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.core.problems import Problems
from modelsurgeon.ops.io.checkpoint import Checkpoint, TensorInfo, open_checkpoint
from modelsurgeon.ops.io.output import DEFAULT_MAX_SHARD, Output
from modelsurgeon.ops.io.quantized import unsupported_quantization
from modelsurgeon.recipes.dequantize import DequantizeConfig


@dataclass
class DequantizePlan:
    config: DequantizeConfig
    ck: Checkpoint
    output: Output
    notes: list[str] = field(default_factory=list)

    def out_dtype(self, info: TensorInfo) -> str:
        """The dtype ``info`` is written in: --dtype for float tensors, their own otherwise."""
        want = self.config.st_dtype
        return want if want is not None and info.is_float else info.dtype

    @property
    def bytes_to_read(self) -> int:
        return self.ck.stored_bytes

    def close(self) -> None:
        self.ck.close()

    def __enter__(self) -> DequantizePlan:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def plan_dequantize(
    cfg: DequantizeConfig,
    model: str,
    output: str,
    *,
    force: bool = False,
    max_shard_size: str | int = DEFAULT_MAX_SHARD,
    revision: str | None = None,
) -> DequantizePlan:
    """Open MODEL (headers only) and check that it can be dequantized into ``output``."""
    out = Output.of(output, force, max_shard_size)
    ck = open_checkpoint(model, revision)
    try:
        return _plan(cfg, ck, out)
    except BaseException:
        ck.close()
        raise


def _plan(cfg: DequantizeConfig, ck: Checkpoint, out: Output) -> DequantizePlan:
    method = unsupported_quantization(ck)
    if method is not None:
        raise SurgeonError(
            f"{ck.label} is quantized with {method!r}, which is not read yet",
            "known: compressed-tensors, fp8 (block scales), bitsandbytes, and GGUF files",
        )
    if ck.source_format is None:
        raise SurgeonError(f"{ck.label} is not quantized: there is nothing to dequantize", "see `surgeon report MODEL`")
    problems = Problems(f"the dequantization of {ck.label}")
    try:
        out.check("dir")
    except SurgeonError as e:
        problems.add(str(e))
    if out.path.resolve() in {ck.resolved.path.resolve(), *(f.resolve() for f in ck.weight_files)}:
        problems.add(f"output {out.path} is the input; pick another -o")
    problems.raise_if_any()
    return DequantizePlan(cfg, ck, out)
