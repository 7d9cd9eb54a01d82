"""`surgeon prune MODEL -o OUT --sparsity S`: magnitude, random, Wanda or SparseGPT pruning, per layer, per row,
globally or N:M."""

from __future__ import annotations

from typing import Annotated

import typer

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
from ._output import RichProgress, calibration_lines, fmt_count, fmt_pct, note, print_lines, render, settings, top_rows

EPILOG = """Examples:

  surgeon prune minilm -o minilm-50 --sparsity 0.5

  surgeon prune org/model -o pruned --sparsity 0.6 --scope global --exclude 'layers?\\.0\\.'

  surgeon prune org/model -o pruned-24 --pattern 2:4

  surgeon prune org/model -o pruned --recipe recipes/prune_example.yaml --dry-run

  surgeon prune org/model -o rand --sparsity 0.5 --method random --seed 1 --json | jq .target_sparsity

  surgeon prune model/ -o wanda-50 --method wanda --sparsity 0.5 --calib held-out.txt

  surgeon prune model/ -o sgpt-24 --method sparsegpt --pattern 2:4 --calib-samples 64 --dry-run
"""


def prune(
    model: Annotated[str, typer.Argument(help="A .safetensors file, a model folder, a Hub id (org/name[@rev]) or 'minilm'.")],
    output: Annotated[str | None, typer.Option("--output", "-o", help="Output folder (written atomically).")] = None,
    sparsity: Annotated[
        float | None, typer.Option("--sparsity", help="Fraction of each targeted tensor to zero, in [0, 1).")
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            help="What to prune first: magnitude (smallest |w|), random, or calibrated on text: wanda (|w| x input norm), "
            "sparsegpt (with weight updates).",
        ),
    ] = None,
    scope: Annotated[
        str | None,
        typer.Option(
            "--scope", help="Where the count is exact: layer (each tensor), row (each output row), global (all targets)."
        ),
    ] = None,
    pattern: Annotated[
        str | None,
        typer.Option("--pattern", help="Keep the N largest of every M weights along the input dimension (N:M, e.g. 2:4)."),
    ] = None,
    include: Annotated[
        str | None, typer.Option("--include", help="Regex: prune these float tensors instead of the linear weights.")
    ] = None,
    exclude: Annotated[str | None, typer.Option("--exclude", help="Regex: leave these tensors alone.")] = None,
    recipe: Annotated[
        str | None, typer.Option("--recipe", help="YAML recipe (settings and per-tensor sparsity overrides); flags override it.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for --method random (default 0).")] = None,
    calib: CalibOpt = None,
    calib_samples: CalibSamplesOpt = None,
    calib_seqlen: CalibSeqlenOpt = None,
    owl: Annotated[
        bool | None,
        typer.Option("--owl/--no-owl", help="wanda/sparsegpt: OWL non-uniform layer sparsities (outlier-weighted)."),
    ] = None,
    dampening: DampeningOpt = None,
    blocksize: BlocksizeOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan (targets and their sparsities); write nothing.")
    ] = False,
    device: DeviceOpt = "auto",
    max_shard_size: MaxShardOpt = DEFAULT_MAX_SHARD,
    force: ForceOpt = False,
    revision: RevisionOpt = None,
    top: Annotated[
        int | None, typer.Option("--top", min=1, help="List only the N largest tensors in the table (--json lists all).")
    ] = None,
    wide: WideOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> int:
    """Zero the least important weights; write a dense safetensors checkpoint with exact zeros."""
    from modelsurgeon import api
    from modelsurgeon.recipes.prune import PruneConfig

    settings.wide, settings.top = wide, top
    cfg = PruneConfig.build(
        recipe,
        sparsity=sparsity,
        method=method,
        scope=scope,
        pattern=pattern,
        include=include,
        exclude=exclude,
        seed=seed,
        calib=calib_flags(calib, calib_samples, calib_seqlen),
        owl=owl,
        dampening=dampening,
        blocksize=blocksize,
    )
    with RichProgress(quiet) as bar:
        result = api.prune(
            model,
            output,
            cfg,
            dry_run=dry_run,
            force=force,
            max_shard_size=max_shard_size,
            device=device,
            revision=revision,
            progress=bar,
            command=command_line(),
        )
    render(result, as_json, _print)
    if not dry_run:
        note(f"wrote {result.output}", quiet)
    return 0


def _print(r: dict) -> None:
    from rich.text import Text

    from ._output import Col, fmt_float, out_console, print_table, status, top_title

    console = out_console()
    what = f"{r['method']} {r['pattern'] or r['scope']}"
    title = f"{'plan: ' if r['dry_run'] else ''}prune {r['model']} ({what}, sparsity {fmt_pct(r['sparsity'])})"
    cols = [Col("tensor", "left"), Col("shape", "left", drop=2), Col("params", drop=3), Col("target"), Col("pruned", drop=1)]
    if not r["dry_run"]:
        cols += [Col("zeros before", drop=4), Col("sparsity")]
    rows = []
    for row in top_rows(r["tensors"]):
        name = row["name"] + (f" (= {', '.join(row['aliases'])})" if row["aliases"] else "")
        cells = [
            name,
            "x".join(map(str, row["shape"])) or "()",
            fmt_count(row["numel"]),
            fmt_pct(row["sparsity_target"]),
            "pool" if row["pruned"] is None else fmt_count(row["pruned"]),
        ]
        if not r["dry_run"]:
            cells += [fmt_count(row["zeros_before"]), fmt_pct(row["sparsity"])]
        rows.append(cells)
    print_table(cols, rows, title=top_title(title, len(rows), len(r["tensors"])), console=console)
    share = r["target_params"] / r["total_params"] if r["total_params"] else 0
    lines = [
        f"targets {r['num_targets']}   params {fmt_count(r['target_params'])} of {fmt_count(r['total_params'])} ({fmt_pct(share)})"
    ]
    if r["dry_run"]:
        lines[0] += f"   would prune {fmt_count(r['pruned'])}"
        if r.get("global_pool"):
            g = r["global_pool"]
            lines.append(
                f"global pool: {g['tensors']} tensors, {fmt_count(g['params'])} params, {fmt_count(g['pruned'])} to prune by one threshold"
            )
        lines.append("dry run: nothing was written")
    else:
        lines[0] += (
            f"   pruned {fmt_count(r['pruned'])}   zeros {fmt_count(r['zeros'])}   sparsity {fmt_pct(r['target_sparsity'])}"
        )
        if r.get("threshold") is not None:
            lines.append(f"global threshold: |w| <= {fmt_float(r['threshold'], 6)}")
        if "nm_compliant" in r:
            lines.append(Text.assemble(f"{r['pattern']} compliant: ", status(r["nm_compliant"], "yes, every group", "NO")))
        lines.append(f"output {r['output']}")
    if r.get("calibration"):
        lines += calibration_lines(r["calibration"])
    print_lines(lines, console)
