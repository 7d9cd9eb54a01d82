"""`surgeon expand-subspace FILE -o OUT`: a subspace file (theta_d + seeds) back into a full checkpoint."""

from __future__ import annotations

from typing import Annotated

import typer

from ._options import DEFAULT_MAX_SHARD, DeviceOpt, ForceOpt, JsonOpt, MaxShardOpt, OutputOpt, QuietOpt, command_line
from ._output import RichProgress, fmt_count, render

EPILOG = """Examples:

  surgeon intrinsic-dim minilm --task csv:reviews.csv --save-subspace s.safetensors
  surgeon expand-subspace s.safetensors -o finetuned/

  surgeon expand-subspace s.safetensors --base /new/place/of/the/base -o finetuned/ --json

  surgeon expand-subspace s.safetensors --task module:tasks.py:make -o finetuned/   # a Python task's model
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
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            help="The module:function of a subspace trained on a Python task's model: its code runs only when named here.",
        ),
    ] = None,
    device: DeviceOpt = "cpu",
    max_shard_size: MaxShardOpt = DEFAULT_MAX_SHARD,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> int:
    """Rebuild theta_0 + P theta_d from a subspace file and write the full trained checkpoint."""
    from modelsurgeon import api

    with RichProgress(quiet) as bar:
        result = api.expand_subspace(
            subspace,
            output,
            base=base,
            device=device,
            force=force,
            max_shard_size=max_shard_size,
            progress=bar,
            command=command_line(),
            task=task,
        )
    render(result, as_json, _print_summary)
    return 0


def _print_summary(r: dict) -> None:
    from ._output import out_console

    out_console().print(
        f"wrote {r['output']}: {r['tensors']} tensors, {fmt_count(r['params'])} parameters from d = {r['d']:,} numbers "
        f"({r['projection']} projection, {'bit-exact' if r['bit_exact'] else 'to float rounding'})",
        highlight=False,
        soft_wrap=True,
    )
