"""`surgeon prune MODEL -o OUT --sparsity S`: magnitude or random pruning, per layer, per row, globally or N:M."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Annotated

import typer

from ._options import DEFAULT_MAX_SHARD, DeviceOpt, ForceOpt, JsonOpt, MaxShardOpt, QuietOpt, RevisionOpt, command_line
from ._output import emit_json, fmt_count, note, progress

EPILOG = """Examples:

  surgeon prune minilm -o minilm-50 --sparsity 0.5

  surgeon prune org/model -o pruned --sparsity 0.6 --scope global --exclude 'layers\\.0\\.'

  surgeon prune org/model -o pruned-24 --pattern 2:4

  surgeon prune org/model -o pruned --recipe recipes/prune_example.yaml --dry-run

  surgeon prune org/model -o rand --sparsity 0.5 --method random --seed 1 --json | jq .target_sparsity
"""


def prune(
    model: Annotated[str, typer.Argument(help="A .safetensors file, a model folder, a Hub id (org/name[@rev]) or 'minilm'.")],
    output: Annotated[str | None, typer.Option("--output", "-o", help="Output folder (written atomically).")] = None,
    sparsity: Annotated[
        float | None, typer.Option("--sparsity", help="Fraction of each targeted tensor to zero, in [0, 1).")
    ] = None,
    method: Annotated[
        str | None, typer.Option("--method", help="What to prune first: magnitude (smallest |w|) or random.")
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
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan (targets and their sparsities); write nothing.")
    ] = False,
    device: DeviceOpt = "auto",
    max_shard_size: MaxShardOpt = DEFAULT_MAX_SHARD,
    force: ForceOpt = False,
    revision: RevisionOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> int:
    """Zero the least important weights; write a dense safetensors checkpoint with exact zeros."""
    from modelsurgeon.ops.core.errors import UsageError
    from modelsurgeon.recipes.prune import build_config

    cfg = build_config(
        recipe, sparsity=sparsity, method=method, scope=scope, pattern=pattern, include=include, exclude=exclude, seed=seed
    )
    if output is None and not dry_run:
        raise UsageError("missing -o OUT", "give the output folder, or --dry-run to print the plan only")

    import json

    from modelsurgeon.ops.core.device import resolve_device
    from modelsurgeon.ops.core.streaming import prefetched
    from modelsurgeon.ops.io.checkpoint import open_checkpoint
    from modelsurgeon.ops.io.output import OutputDir, write_folder
    from modelsurgeon.ops.io.writer import TensorSpec, parse_size
    from modelsurgeon.ops.prune.run import PruneRun, plan_prune

    shard = parse_size(max_shard_size)
    dev = resolve_device(device)
    with _leave_a_core_for_io(), open_checkpoint(model, revision) as ck:
        out = None if dry_run else OutputDir(output, force)
        plan = plan_prune(ck, cfg)
        if dry_run:
            result = _plan_result(ck, plan)
        else:
            run = PruneRun(ck, plan, dev)
            pool_bytes = sum(ck.info(t.name).nbytes for t in plan.pool)
            total = run.stats_passes() * pool_bytes + sum(i.nbytes for i in ck.infos())
            with progress(total, "prune", quiet) as advance:
                run.advance = advance
                run.select()
                specs = [TensorSpec(i.name, i.shape, i.torch_dtype) for i in ck.infos()]
                path = write_folder(
                    out,
                    specs,
                    prefetched(run.tensors(), depth=1),  # prune the next tensor while this one is written
                    source=ck,
                    command=command_line(),
                    max_shard_size=shard,
                    metadata={"modelsurgeon_recipe": json.dumps(cfg.to_recipe(), sort_keys=True)},
                    extra_files={"prune_recipe.yaml": cfg.to_yaml()},
                )
            result = _run_result(ck, plan, run, str(path))
    if as_json:
        emit_json(result)
    else:
        _print(result)
        if not dry_run:
            note(f"wrote {result['output']}", quiet)
    return 0


@contextmanager
def _leave_a_core_for_io():
    """Reading, pruning and writing run on three threads; torch's intra-op pool takes the remaining cores
    (on 2 cores, one: a second pool thread only waits for a descheduled partner). OMP_NUM_THREADS wins.
    The previous setting comes back afterwards (the command may run inside a longer-lived process)."""
    import os

    import torch

    before = torch.get_num_threads()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, min(before, (os.cpu_count() or 2) - 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _head(ck, plan) -> dict:
    cfg = plan.config
    return {
        "model": ck.label,
        "method": cfg.method,
        "scope": "nm" if cfg.pattern else cfg.scope,
        "pattern": cfg.pattern,
        "sparsity": cfg.target_sparsity,
        "seed": cfg.seed,
        "recipe": cfg.to_recipe(),
        "num_targets": len(plan.targets),
        "target_params": sum(t.numel for t in plan.targets),
        "total_params": plan.total_params,
    }


def _plan_result(ck, plan) -> dict:
    rows = []
    for t in plan.targets:
        if t.mode == "global":
            planned = None
        elif t.mode == "row":
            planned = t.k * (t.numel // (t.shape[-1] if t.shape and t.shape[-1] else 1))
        else:
            planned = t.k
        rows.append(
            {
                "name": t.name,
                "shape": list(t.shape),
                "dtype": t.dtype,
                "numel": t.numel,
                "sparsity_target": t.sparsity,
                "mode": t.mode,
                "pruned": planned,
                "aliases": t.aliases,
            }
        )
    fixed = sum(r["pruned"] for r in rows if r["pruned"] is not None)
    return {
        **_head(ck, plan),
        "dry_run": True,
        "output": None,
        "pruned": fixed + plan.pool_k,
        "global_pool": {"tensors": len(plan.pool), "params": plan.pool_numel, "pruned": plan.pool_k} if plan.pool else None,
        "tensors": rows,
    }


def _run_result(ck, plan, run, output: str) -> dict:
    rows = [r.as_dict() for r in run.results]
    target_params = sum(r["numel"] for r in rows)
    zeros = sum(r["zeros"] for r in rows)
    res = {
        **_head(ck, plan),
        "dry_run": False,
        "output": output,
        "pruned": sum(r["pruned"] for r in rows),
        "zeros_before": sum(r["zeros_before"] for r in rows),
        "zeros": zeros,
        "target_sparsity": zeros / target_params if target_params else 0.0,
        "threshold": run.selection.threshold if run.selection is not None else None,
        "tensors": rows,
    }
    if plan.config.pattern:
        res["nm_compliant"] = all(r.get("nm_compliant", True) for r in rows)
    return res


def _print(r: dict) -> None:
    from rich import box
    from rich.table import Table

    from ._output import fmt_float, out_console

    console = out_console()
    what = f"{r['method']} {r['pattern'] or r['scope']}"
    title = f"{'plan: ' if r['dry_run'] else ''}prune {r['model']} ({what}, sparsity {r['sparsity']:.4g})"
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    t.add_column("tensor", overflow="fold", ratio=1, min_width=20)
    t.add_column("shape", no_wrap=True)
    t.add_column("params", justify="right", no_wrap=True)
    t.add_column("target", justify="right", no_wrap=True)
    t.add_column("pruned", justify="right", no_wrap=True)
    if not r["dry_run"]:
        t.add_column("zeros before", justify="right", no_wrap=True)
        t.add_column("sparsity", justify="right", no_wrap=True)
    for row in r["tensors"]:
        name = row["name"] + (f" (= {', '.join(row['aliases'])})" if row["aliases"] else "")
        cells = [
            name,
            "x".join(map(str, row["shape"])) or "()",
            fmt_count(row["numel"]),
            f"{row['sparsity_target']:.2%}",
            "pool" if row["pruned"] is None else fmt_count(row["pruned"]),
        ]
        if not r["dry_run"]:
            cells += [fmt_count(row["zeros_before"]), f"{row['sparsity']:.2%}"]
        t.add_row(*cells)
    console.print(t)
    share = r["target_params"] / r["total_params"] if r["total_params"] else 0
    lines = [
        f"targets {r['num_targets']}   params {fmt_count(r['target_params'])} of {fmt_count(r['total_params'])} ({share:.1%})"
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
        lines[0] += f"   pruned {fmt_count(r['pruned'])}   zeros {fmt_count(r['zeros'])}   sparsity {r['target_sparsity']:.4%}"
        if r.get("threshold") is not None:
            lines.append(f"global threshold: |w| <= {fmt_float(r['threshold'], 6)}")
        if "nm_compliant" in r:
            lines.append(f"{r['pattern']} compliant: {'yes, every group' if r['nm_compliant'] else 'NO'}")
        lines.append(f"output {r['output']}")
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)
