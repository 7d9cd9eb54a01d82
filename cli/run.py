"""`surgeon run RECIPE -o OUT`: the steps of a recipe (merge, prune, quantize, report) one after another."""

from __future__ import annotations

from typing import Annotated

import typer

from ._options import DEFAULT_MAX_SHARD, ForceOpt, JsonOpt, MaxShardOpt, QuietOpt
from ._output import RichProgress, fmt_bytes, fmt_float, fmt_pct, fmt_seconds, fmt_sqnr, render

EPILOG = """Examples:

  surgeon run recipes/run_2of4_w4a16_vllm.yaml --model model/ -o model-2of4-w4a16/

  surgeon run recipes/run_2of4_w4a16_vllm.yaml --model model/ -o planned/ --dry-run   # check every step, print the passes

  surgeon run recipes/run_2of4_w4a16_vllm.yaml --model model/ -o kept/ --keep-intermediate   # steps kept in kept.steps/
"""


def run(
    recipe: Annotated[str, typer.Argument(help="A run recipe (YAML): version, model, steps.")],
    output: Annotated[
        str,
        typer.Option("--output", "-o", help="Output folder (a .gguf file when the last step writes GGUF), written atomically."),
    ],
    model: Annotated[str | None, typer.Option("--model", "-m", help="The input model; replaces the recipe's model:.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check every step and print the plan; write nothing.")] = False,
    keep_intermediate: Annotated[
        bool, typer.Option("--keep-intermediate", help="Write every step's output (no fused passes) and keep them in OUT.steps/.")
    ] = False,
    max_shard_size: MaxShardOpt = DEFAULT_MAX_SHARD,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> int:
    """Run a recipe of steps: merge, prune, quantize, report (its require gates fail the run)."""
    from modelsurgeon import pipeline

    with RichProgress(quiet) as bar:
        result = pipeline.run(
            recipe,
            output,
            model=model,
            dry_run=dry_run,
            force=force,
            keep_intermediate=keep_intermediate,
            max_shard_size=max_shard_size,
            progress=bar,
        )
    render(result, as_json, _print_table)
    return 0


def _summary(s: dict) -> str:
    kind = s.get("kind")
    if kind == "prune" and "zeros" in s:
        return f"sparsity {fmt_pct(s.get('target_sparsity'))} of {s.get('num_targets')} tensors" + (
            f", {s['pattern']}" if s.get("pattern") else ""
        )
    if kind == "quantize" and "bits_per_weight" in s:
        return (
            f"{s.get('scheme')} ({s.get('format')}), {fmt_float(s.get('bits_per_weight'))} bits/weight, "
            f"SQNR {fmt_sqnr(s.get('sqnr_db'))} dB, {fmt_bytes(s.get('bytes_after'))}"
        )
    if kind == "merge" and "merge_method" in s:
        return f"{s.get('merge_method')}, {s.get('num_tensors', '')} tensors".rstrip(", ")
    if kind == "report" and "requirements" in s:
        return "; ".join(f"{r['require']}: {'ok' if r['ok'] else 'FAILED'} ({fmt_float(r['value'])})" for r in s["requirements"])
    shown = {k: v for k, v in s.items() if k not in ("step", "kind") and v is not None and not isinstance(v, (list, dict))}
    return ", ".join(f"{k.replace('_', ' ')} {_value(k, v)}" for k, v in shown.items())


def _value(key: str, v) -> str:
    """A plan's value in the format its quantity has everywhere (sparsities as percentages, sizes in bytes)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if "sparsity" in key:
        return fmt_pct(v)
    if "bytes" in key:
        return fmt_bytes(v)
    return fmt_float(v) if isinstance(v, float) else str(v)


def _print_table(r: dict) -> None:
    from rich import box
    from rich.table import Table

    from ._output import out_console

    t = Table(box=box.SIMPLE, title="dry run: nothing was written" if r["dry_run"] else None)
    t.add_column("step", justify="right")
    t.add_column("kind")
    t.add_column("result" if not r["dry_run"] else "checked")
    for s in r["steps"]:
        t.add_row(str(s.get("step")), str(s.get("kind")), _summary(s))
    con = out_console()
    con.print(t)
    for line in r["passes"]:
        con.print(line, highlight=False, markup=False)
    if not r["dry_run"]:
        con.print(f"output: {r['output']}  ({fmt_seconds(r['seconds'])})", highlight=False, markup=False)
    if r.get("intermediate"):
        con.print(f"intermediate outputs kept in {r['intermediate']}", highlight=False, markup=False)
