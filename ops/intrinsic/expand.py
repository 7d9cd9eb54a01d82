"""`surgeon expand-subspace` in the command shape: a subspace file (theta_d + seeds) back into a full checkpoint.

    with plan_expand("s.safetensors", "finetuned/") as plan:   # output checked; the model and theta_0 rebuilt, checked
        result = run_expand(plan, progress)                   # theta_0 + P theta_d, written atomically
    result.to_dict()                                          # the JSON `surgeon expand-subspace --json` prints

A checkpoint base contributes its config (with ``architectures`` set), tokenizer and generation files; a
built-in or toy model gets a config.json recording its source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelsurgeon.ops.core.device import resolve_device
from modelsurgeon.ops.core.progress import SILENT, Progress
from modelsurgeon.ops.core.result import Result
from modelsurgeon.ops.io.output import DEFAULT_MAX_SHARD, Output, write_folder
from modelsurgeon.ops.io.writer import TensorSpec

from .models import output_config
from .subspace import FORMAT, Rebuilt, expand, expanded_state, rebuild

PYTHON_COMMAND = "python: modelsurgeon.expand_subspace"


@dataclass
class ExpandPlan:
    subspace: str  # the subspace file, as given
    output: Output
    rebuilt: Rebuilt
    command: str = PYTHON_COMMAND

    def close(self) -> None:
        self.rebuilt.close()

    def __enter__(self) -> ExpandPlan:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class ExpandResult(Result):
    subspace: str
    output: str
    d: int
    D: int
    projection: str
    tensors: int
    params: int
    bit_exact: bool  # False: equal to the trained weights to float rounding (another device or FWHT path)
    source: str  # arch | toy | checkpoint | module


def plan_expand(
    subspace: str | Path,
    output: str | Path,
    *,
    base: str | None = None,
    device: str = "cpu",
    force: bool = False,
    max_shard_size: str | int = DEFAULT_MAX_SHARD,
    command: str = PYTHON_COMMAND,
    task: str | None = None,
) -> ExpandPlan:
    """Check the output, read the subspace file and rebuild its model with theta_0 (checked by sha256).
    ``task``: the ``module:function`` a subspace trained on a Python task's model needs, named by the user."""
    out = Output.of(output, force, max_shard_size)
    out.check("dir", inputs=[subspace])
    rebuilt = rebuild(subspace, base, resolve_device(device), task)
    try:
        ck = rebuilt.checkpoint
        out.check("dir", inputs=ck.input_paths() if ck is not None else [])  # type: ignore[attr-defined]
    except BaseException:
        rebuilt.close()
        raise
    return ExpandPlan(str(subspace), out, rebuilt, command)


def run_expand(plan: ExpandPlan, progress: Progress = SILENT) -> ExpandResult:
    """theta_0 + P theta_d (P regenerated from its seed), the full state dict written atomically."""
    ex = expand(plan.rebuilt)
    state = expanded_state(ex)
    specs = [TensorSpec(n, tuple(t.shape), t.dtype) for n, t in state]
    rec = ex.rec
    config = output_config(ex.problem.module, rec["source"])
    progress.start("expand-subspace", total=len(state), unit="tensors")

    def produce():
        for item in state:
            yield item
            progress.advance(1)

    path = write_folder(
        plan.output,
        specs,
        produce(),
        source=ex.checkpoint,  # type: ignore[arg-type]
        command=plan.command,
        metadata={f"{FORMAT}_d": str(rec["d"]), f"{FORMAT}_weights_sha256": rec["weights_sha256"]},
        update_config=(lambda _c: config) if ex.checkpoint is not None else None,
        extra_files={} if ex.checkpoint is not None else {"config.json": config},
    )
    if not ex.exact:
        progress.note("note: the weights equal the trained ones to float rounding, not bit for bit (another device or FWHT path)")
    return ExpandResult(
        subspace=plan.subspace,
        output=str(path),
        d=rec["d"],
        D=ex.problem.D,
        projection=rec["projection"]["kind"],
        tensors=len(state),
        params=sum(t.numel() for _, t in state),
        bit_exact=ex.exact,
        source=rec["source"]["kind"],
    )
