"""`surgeon expand-subspace FILE -o OUT`: a subspace file (theta_d + seeds) back into a full checkpoint."""

from __future__ import annotations

from typing import Annotated

import typer

from ._options import DEFAULT_MAX_SHARD, DeviceOpt, ForceOpt, JsonOpt, MaxShardOpt, OutputOpt, QuietOpt, command_line
from ._output import emit_json, fmt_count, note

EPILOG = """Examples:

  surgeon intrinsic-dim minilm --task csv:reviews.csv --save-subspace s.safetensors
  surgeon expand-subspace s.safetensors -o finetuned/

  surgeon expand-subspace s.safetensors --base /new/place/of/the/base -o finetuned/ --json
"""


def expand_subspace(
    subspace: Annotated[str, typer.Argument(help="A file written by `surgeon intrinsic-dim --save-subspace`.")],
    output: OutputOpt = ...,  # type: ignore[assignment]
    base: Annotated[
        str | None,
        typer.Option(
            "--base", help="The checkpoint theta_0 came from, if it moved (checked by sha256). (default the recorded path)"
        ),
    ] = None,
    device: DeviceOpt = "cpu",
    max_shard_size: MaxShardOpt = DEFAULT_MAX_SHARD,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> int:
    """Rebuild theta_0 + P theta_d from a subspace file and write the full trained checkpoint."""
    from modelsurgeon.ops.io.output import OutputDir
    from modelsurgeon.ops.io.writer import TensorSpec, parse_size

    limit = parse_size(max_shard_size)
    out = OutputDir(output, force)

    from modelsurgeon.ops.core.device import resolve_device
    from modelsurgeon.ops.intrinsic.search import FORMAT, expanded_state
    from modelsurgeon.ops.intrinsic.search import expand_subspace as expand
    from modelsurgeon.ops.io.output import write_folder

    ex = expand(subspace, base, resolve_device(device))
    state = expanded_state(ex)
    specs = [TensorSpec(n, tuple(t.shape), t.dtype) for n, t in state]
    rec = ex.rec
    cfg = _output_config(ex)
    extra = {} if ex.checkpoint is not None else {"config.json": cfg}
    path = write_folder(
        out,
        specs,
        iter(state),
        source=ex.checkpoint,
        command=command_line(),
        max_shard_size=limit,
        metadata={f"{FORMAT}_d": str(rec["d"]), f"{FORMAT}_weights_sha256": rec["weights_sha256"]},
        update_config=(lambda _c: cfg) if ex.checkpoint is not None else None,
        extra_files=extra,
    )
    summary = {
        "subspace": subspace,
        "output": str(path),
        "d": rec["d"],
        "D": ex.problem.D,
        "projection": rec["projection"]["kind"],
        "tensors": len(state),
        "params": sum(t.numel() for _, t in state),
        "bit_exact": ex.exact,
        "source": rec["source"]["kind"],
    }
    if not ex.exact:
        note("note: the weights equal the trained ones to float rounding, not bit for bit (another device or FWHT path)", quiet)
    if as_json:
        emit_json(summary)
    else:
        from ._output import out_console

        out_console().print(
            f"wrote {path}: {summary['tensors']} tensors, {fmt_count(summary['params'])} parameters from d = {rec['d']:,} numbers "
            f"({summary['projection']} projection, {'bit-exact' if ex.exact else 'to float rounding'})",
            highlight=False,
            soft_wrap=True,
        )
    return 0


def _output_config(ex) -> dict:
    module = ex.problem.module
    src = ex.rec["source"]
    if src["kind"] == "checkpoint":
        cfg = module.config
        cfg.architectures = [type(module).__name__]
        return cfg.to_dict()
    return {"modelsurgeon_model": src}
