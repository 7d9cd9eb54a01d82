"""`surgeon quantize MODEL -o OUT --scheme S`: quantize weights and write compressed-tensors, GGUF or dense."""

from __future__ import annotations

from typing import Annotated

import typer

from modelsurgeon.recipes.quantize import SCHEME_RULES, QuantizeConfig

from ._options import DEFAULT_MAX_SHARD, DeviceOpt, ForceOpt, JsonOpt, MaxShardOpt, QuietOpt, RevisionOpt, command_line
from ._output import RichProgress, fmt_bytes, fmt_float, render

SCHEME_NAMES = ", ".join(SCHEME_RULES)  # from the torch-free rules, so --help stays light

EPILOG = """Examples:

  surgeon quantize model/ -o model-w4a16/ --scheme w4a16                 # compressed-tensors, vLLM/transformers

  surgeon quantize model/ -o model-q4_k_m.gguf --scheme q4_k_m           # GGUF for llama.cpp, llama-quantize's mix

  surgeon quantize model/ -o model-q4_k_m.gguf --scheme q4_k_m --imatrix imatrix.gguf

  surgeon quantize model/ -o model-w4/ --scheme w4a16 --optimizer hqq    # HQQ-refined scales and zeros

  surgeon quantize model/ -o model-nf4-dense/ --scheme nf4 --format dense --json | jq .sqnr_db

  surgeon quantize model/ -o out/ --scheme w8a8 --ignore 'mlp\\.down_proj'

  surgeon quantize model/ -o out/ --recipe recipes/w4a16_down_proj_8bit.yaml  # 8-bit down_proj, 4-bit elsewhere
"""


def quantize(
    model: Annotated[str, typer.Argument(help="A .safetensors file, a model folder, a Hub id (org/name[@rev]) or 'minilm'.")],
    output: Annotated[
        str, typer.Option("--output", "-o", help="Output folder (a .gguf file with --format gguf), written atomically.")
    ],
    scheme: Annotated[str | None, typer.Option("--scheme", "-s", help=f"Quantization scheme: {SCHEME_NAMES}.")] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help="compressed-tensors, gguf, dense (quantize then dequantize), or auto (default): the scheme's own format.",
        ),
    ] = None,
    group_size: Annotated[
        int | None,
        typer.Option("--group-size", "-g", help="Values per scale along each row; -1 = one per row. Default: the scheme's."),
    ] = None,
    asym: Annotated[bool, typer.Option("--asym", help="Asymmetric (scale and zero point) for w4a16, w8a16, w8a8.")] = False,
    optimizer: Annotated[
        str | None,
        typer.Option("--optimizer", help="rtn (round to nearest, default) or hqq (half-quadratic refinement, data-free)."),
    ] = None,
    ignore: Annotated[
        str | None,
        typer.Option("--ignore", help="Regex of tensors to leave as they are (on top of embeddings, lm_head, norms, biases)."),
    ] = None,
    include: Annotated[
        str | None,
        typer.Option("--include", help="Regex of float tensors to quantize, replacing the default (2-D linear weights)."),
    ] = None,
    pre_tokenizer: Annotated[
        str | None,
        typer.Option(
            "--pre-tokenizer",
            help="--format gguf: llama.cpp's pre-tokenizer name (llama-bpe, qwen2, smollm...) when it is not recognised.",
        ),
    ] = None,
    imatrix: Annotated[
        str | None,
        typer.Option(
            "--imatrix",
            help="--format gguf: llama-imatrix's importance matrix (imatrix.gguf or legacy .dat) to weight the block search.",
        ),
    ] = None,
    target_bpw: Annotated[
        float | None,
        typer.Option(
            "--target-bpw",
            help="Choose a scheme per tensor (from --candidates) to average at most this many bits per weight, least total error.",
        ),
    ] = None,
    candidates: Annotated[
        str | None,
        typer.Option(
            "--candidates",
            help="Comma-separated schemes for --target-bpw. Default: the GGUF types, or w2a16..w8a16, in --scheme's format.",
        ),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            "--recipe",
            help="YAML recipe: the settings above plus per-tensor overrides ({match, scheme, ...}); flags override it.",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    max_shard_size: MaxShardOpt = DEFAULT_MAX_SHARD,
    revision: RevisionOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> int:
    """Quantize a checkpoint's linear weights; report bits per weight and the error of every tensor."""
    from modelsurgeon import api

    cfg = QuantizeConfig.build(
        recipe,
        scheme=scheme,
        format=fmt,
        group_size=group_size,
        asym=asym or None,
        optimizer=optimizer,
        include=include,
        ignore=ignore,
        device=None if device == "auto" else device,
        pre_tokenizer=pre_tokenizer,
        imatrix=imatrix,
        target_bpw=target_bpw,
        candidates=candidates,
    )
    with RichProgress(quiet) as bar:
        result = api.quantize(
            model,
            output,
            cfg,
            force=force,
            max_shard_size=max_shard_size,
            revision=revision,
            progress=bar,
            command=command_line(),
        )
    render(result, as_json, _print_table)
    return 0


def _print_table(r: dict) -> None:
    from rich import box
    from rich.table import Table

    from ._output import out_console

    console = out_console()
    t = Table(
        title=f"{r['model']} -> {r['output']}  ({r['scheme']}, {r['format']})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    t.add_column("tensor", overflow="fold", ratio=1, min_width=20)
    t.add_column("shape", no_wrap=True)
    for c in ("bits/w", "before", "after", "SQNR dB", "rel L2"):
        t.add_column(c, justify="right", no_wrap=True)
    kept = 0
    for row in r["tensors"]:
        if not row["scheme"]:
            kept += 1
            continue
        t.add_row(
            row["name"],
            "x".join(map(str, row["shape"])),
            f"{row['bits_per_weight']:.3f}",
            fmt_bytes(row["bytes_before"]),
            fmt_bytes(row["bytes_after"]),
            fmt_float(row["sqnr_db"], 4),
            fmt_float(row["rel_l2"], 3),
        )
    console.print(t)
    group = "per row" if r["group_size"] == -1 else f"group {r['group_size']}"
    lines = [
        f"quantized {r['quantized_tensors']} of {r['num_tensors']} tensors ({r['quantized_params']:,} weights), {kept} kept as they are; "
        f"{'symmetric' if r['symmetric'] else 'asymmetric'}, {group}, optimizer {r['optimizer']}",
        f"bits per weight {fmt_float(r['bits_per_weight'], 4)}   SQNR {fmt_float(r['sqnr_db'], 4)} dB   rel L2 {fmt_float(r['rel_l2'], 3)}",
        f"size {fmt_bytes(r['bytes_before'])} -> {fmt_bytes(r['bytes_after'])} ({fmt_float(r['compression'], 3)}x) in {r['seconds']:.1f} s",
    ]
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)
