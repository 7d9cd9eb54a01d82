"""`surgeon dequantize MODEL -o OUT`: a quantized checkpoint (compressed-tensors, FP8, bitsandbytes, GGUF) as plain
safetensors that transformers loads."""

from __future__ import annotations

from typing import Annotated

import typer

from ._options import DEFAULT_MAX_SHARD, ForceOpt, JsonOpt, MaxShardOpt, OutputOpt, QuietOpt, RevisionOpt, command_line
from ._output import RichProgress, fmt_bytes, fmt_seconds, render

EPILOG = """Examples:

  surgeon dequantize model-w4a16/ -o model-dense/                       # compressed-tensors -> bf16 safetensors

  surgeon dequantize model-q4_0.gguf -o model-hf/ --dtype bf16            # GGUF -> transformers layout

  surgeon dequantize model-fp8-block/ -o dense/ --json | jq .bytes_written
"""


def dequantize(
    model: Annotated[
        str, typer.Argument(help="A quantized checkpoint: a folder, .safetensors, .gguf file, or Hub id (org/name[@rev]).")
    ],
    output: OutputOpt,
    dtype: Annotated[
        str, typer.Option("--dtype", help="bf16, fp16, fp32, or auto: each tensor's original dtype (float32 for GGUF).")
    ] = "auto",
    max_shard_size: MaxShardOpt = DEFAULT_MAX_SHARD,
    revision: RevisionOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> int:
    """Dequantize every weight into a plain safetensors checkpoint (config.json without quantization_config)."""
    from modelsurgeon import api
    from modelsurgeon.recipes.dequantize import DequantizeConfig

    cfg = DequantizeConfig(dtype=dtype)
    with RichProgress(quiet) as bar:
        result = api.dequantize(
            model,
            output,
            cfg,
            force=force,
            max_shard_size=max_shard_size,
            revision=revision,
            progress=bar,
            command=command_line(),
        )
    render(result, as_json, _print_summary)
    return 0


def _print_summary(r: dict) -> None:
    from ._output import out_console

    console = out_console()
    kinds: dict[str, int] = {}
    for row in r["tensors"]:
        kinds[row["stored"]] = kinds.get(row["stored"], 0) + 1
    console.print(f"{r['model']} ({r['source_format']}) -> {r['output']}", highlight=False, soft_wrap=True)
    for stored, n in sorted(kinds.items(), key=lambda kv: -kv[1]):
        console.print(f"  {n:5d} x {stored}", highlight=False, soft_wrap=True)
    console.print(
        f"dequantized {r['dequantized_tensors']} of {r['num_tensors']} tensors, dtype {r['dtype']}: "
        f"{fmt_bytes(r['bytes_read'])} read, {fmt_bytes(r['bytes_written'])} written in {fmt_seconds(r['seconds'])}",
        highlight=False,
        soft_wrap=True,
    )
