"""`surgeon quantize MODEL -o OUT --scheme S`: quantize weights and write compressed-tensors, GGUF or dense."""

from __future__ import annotations

from typing import Annotated

import typer

from modelsurgeon.recipes.quantize import SCHEME_RULES, QuantizeConfig

from ._options import (
    DEFAULT_MAX_SHARD,
    BlocksizeOpt,
    CalibOpt,
    CalibSamplesOpt,
    CalibSeqlenOpt,
    DampeningOpt,
    DeviceOpt,
    ForceOpt,
    JsonOpt,
    MaxShardOpt,
    QuietOpt,
    RevisionOpt,
    WideOpt,
    calib_flags,
    command_line,
)
from ._output import (
    REL_L2,
    RichProgress,
    calibration_lines,
    fmt_bytes,
    fmt_count,
    fmt_float,
    fmt_rel_l2,
    fmt_seconds,
    fmt_sqnr,
    print_lines,
    render,
    settings,
)

SCHEME_NAMES = ", ".join(SCHEME_RULES)  # from the torch-free rules, so --help stays light

EPILOG = """Examples:

  surgeon quantize model/ -o model-w4a16/ --scheme w4a16                 # compressed-tensors, vLLM/transformers

  surgeon quantize model/ -o model-q4_k_m.gguf --scheme q4_k_m           # GGUF for llama.cpp, llama-quantize's mix

  surgeon quantize model/ -o model-q4_k_m.gguf --scheme q4_k_m --imatrix imatrix.dat

  surgeon quantize model/ -o model-w4/ --scheme w4a16 --optimizer hqq    # HQQ-refined scales and zeros

  surgeon quantize model/ -o model-nf4-dense/ --scheme nf4 --format dense --json | jq .sqnr_db

  surgeon quantize model/ -o out/ --scheme w8a8 --ignore 'layers?\\.0\\.'    # keep the first layer as it is

  surgeon quantize model/ -o out/ --recipe recipes/w4a16_down_proj_8bit.yaml  # 8-bit down_proj, 4-bit elsewhere

  surgeon quantize model/ -o model-gptq/ --scheme w4a16 --method gptq --calib held-out.txt   # calibrated, layer by layer

  surgeon quantize model/ -o model-awq.gguf --scheme q4_0 --method awq --dry-run
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
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="rtn (round to nearest, data-free), or calibrated on text one layer at a time: gptq, awq (integer and GGUF schemes).",
        ),
    ] = "rtn",
    calib: CalibOpt = None,
    calib_samples: CalibSamplesOpt = None,
    calib_seqlen: CalibSeqlenOpt = None,
    act_order: Annotated[
        bool | None,
        typer.Option("--act-order/--no-act-order", help="GPTQ: columns by descending input energy, static groups (default on)."),
    ] = None,
    dampening: DampeningOpt = None,
    blocksize: BlocksizeOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check everything and print the plan; write nothing.")] = False,
    device: DeviceOpt = "auto",
    max_shard_size: MaxShardOpt = DEFAULT_MAX_SHARD,
    revision: RevisionOpt = None,
    force: ForceOpt = False,
    top: Annotated[
        int | None, typer.Option("--top", min=1, help="List only the N largest tensors in the table (--json lists all).")
    ] = None,
    wide: WideOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> int:
    """Quantize a checkpoint's linear weights; report bits per weight and the error of every tensor."""
    from modelsurgeon import api

    settings.wide, settings.top = wide, top
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
        method=method,
        calib=calib_flags(calib, calib_samples, calib_seqlen),
        act_order=act_order,
        dampening=dampening,
        blocksize=blocksize,
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
            dry_run=dry_run,
        )
    render(result, as_json, _print_plan if dry_run else _print_table)
    return 0


def _print_plan(r: dict) -> None:
    from ._output import out_console

    console = out_console()
    group = "per row" if r["group_size"] == -1 else f"group {r['group_size']}"
    lines = [
        f"plan: quantize {r['model']} -> {r['output']} ({r['scheme']}, {r['format']}, method {r['method']})",
        f"{r['targets']} tensors, {fmt_count(r['quantized_params'])} weights; "
        f"{'symmetric' if r['symmetric'] else 'asymmetric'}, {group}",
    ]
    if r.get("calibration"):
        lines += calibration_lines(r["calibration"])
    cal_notes = (r.get("calibration") or {}).get("notes", [])
    lines += [f"note: {n}" for n in r["notes"] if n not in cal_notes] + ["dry run: nothing was written"]
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


def _print_table(r: dict) -> None:
    from ._output import Col, out_console, print_table, top_rows, top_title

    console = out_console()
    title = f"{r['model']} -> {r['output']}  ({r['scheme']}, {r['format']})"
    cols = [Col("tensor", "left"), Col("shape", "left", drop=2), Col("bits/w", drop=1)]
    cols += [Col("before", drop=3), Col("after", drop=4), Col("SQNR dB"), Col(REL_L2)]
    quantized = [row for row in r["tensors"] if row["scheme"]]
    kept = len(r["tensors"]) - len(quantized)
    rows = [
        [
            row["name"],
            "x".join(map(str, row["shape"])),
            f"{row['bits_per_weight']:.3f}",
            fmt_bytes(row["bytes_before"]),
            fmt_bytes(row["bytes_after"]),
            fmt_sqnr(row["sqnr_db"]),
            fmt_rel_l2(row["rel_l2"]),
        ]
        for row in top_rows(quantized)
    ]
    legend = "SQNR: signal-to-quantization-noise ratio (higher is better); rel L2 = |w - q(w)|/|w|"
    print_table(cols, rows, title=top_title(title, len(rows), len(quantized)), console=console, legend=legend)
    group = "per row" if r["group_size"] == -1 else f"group {r['group_size']}"
    lines = [
        f"quantized {r['quantized_tensors']} of {r['num_tensors']} tensors ({r['quantized_params']:,} weights), {kept} kept as they are; "
        f"{'symmetric' if r['symmetric'] else 'asymmetric'}, {group}, optimizer {r['optimizer']}",
        f"bits per weight {fmt_float(r['bits_per_weight'], 4)}   SQNR {fmt_sqnr(r['sqnr_db'])} dB   {REL_L2} {fmt_rel_l2(r['rel_l2'])}",
        f"size {fmt_bytes(r['bytes_before'])} -> {fmt_bytes(r['bytes_after'])} "
        f"({fmt_float(r['compression'], 3)}x compression{_why_dense(r)}) in {fmt_seconds(r['seconds'])}",
    ]
    if r.get("calibration"):
        lines += calibration_lines(r["calibration"])
    print_lines(lines, console)


def _why_dense(r: dict) -> str:
    """Why a dense output is not smaller: it stores the dequantized values in the input's dtype."""
    return ": a dense output stores the dequantized values in the input dtype" if r["format"] == "dense" else ""
