"""`surgeon intrinsic-dim [MODEL] --task T`: the smallest random subspace that trains MODEL (or a built-in
network) to a fraction of its full-training performance (Li et al. 2018; Aghajanyan et al. 2020)."""

from __future__ import annotations

from typing import Annotated

import typer

from ._options import DeviceOpt, ForceOpt, JsonOpt, QuietOpt, RevisionOpt, command_line
from ._output import RichProgress, fmt_float, fmt_seconds, render

EPILOG = """Examples:

  surgeon intrinsic-dim --task toy                                   # Li et al.'s toy: exactly 10

  surgeon intrinsic-dim --task digits --arch fc --width 200 --depth 2 --plot digits.png

  surgeon intrinsic-dim --task npz:mnist.npz --arch lenet --baseline 1.0 --seeds 3

  surgeon intrinsic-dim minilm --task csv:reviews.csv --exclude word_embeddings --said --save-subspace s.safetensors

  surgeon intrinsic-dim ./my-llama --task text:notes.txt --projection fastfood --device cuda --json

  surgeon expand-subspace s.safetensors -o finetuned/
"""


def intrinsic_dim(
    model: Annotated[
        str | None,
        typer.Argument(
            help="A checkpoint folder with config.json (fine-tuning from it, Aghajanyan et al.), a Hub id or 'minilm'. "
            "Omit it to measure a built-in --arch from a seeded init (Li et al.)."
        ),
    ] = None,
    task: Annotated[str, typer.Option("--task", help="toy | digits | npz:PATH | csv:PATH | text:PATH | module:function")] = ...,  # type: ignore[assignment]
    arch: Annotated[
        str | None, typer.Option("--arch", help="Built-in network when MODEL is omitted: fc or lenet. (default fc)")
    ] = None,
    width: Annotated[int | None, typer.Option("--width", help="fc: units per hidden layer. (default 200)")] = None,
    depth: Annotated[int | None, typer.Option("--depth", help="fc: hidden layers. (default 2)")] = None,
    projection: Annotated[
        str | None, typer.Option("--projection", help="auto (sparse on CPU, fastfood on CUDA), dense, sparse or fastfood.")
    ] = None,
    said: Annotated[bool, typer.Option("--said", help="Structure-aware: one learned scale per tensor, taken out of d.")] = False,
    include: Annotated[str | None, typer.Option("--include", help="Regex: only parameters whose name matches join D.")] = None,
    exclude: Annotated[str | None, typer.Option("--exclude", help="Regex: parameters that stay frozen at theta_0.")] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Fraction of the baseline to reach, in (0, 1]. (default 0.9)")
    ] = None,
    threshold_from: Annotated[
        str | None,
        typer.Option(
            "--threshold-from",
            help="zero: threshold x baseline (Li et al.); init: theta_0's metric + threshold x the improvement. (default zero; text: init)",
        ),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option("--baseline", help="auto (train all D directly once) or a number (e.g. 1.0, Li's global baseline)."),
    ] = None,
    seeds: Annotated[
        int | None, typer.Option("--seeds", help="Runs at each bracket end (each grid point); the mean decides. (default 1)")
    ] = None,
    grid: Annotated[
        str | None, typer.Option("--grid", help="Explicit d values, e.g. 100,200,400, instead of the search.")
    ] = None,
    d_start: Annotated[int | None, typer.Option("--d-start", help="First d of the doubling search. (default 32)")] = None,
    d_max: Annotated[int | None, typer.Option("--d-max", help="Largest d the search tries. (default D)")] = None,
    rel_tol: Annotated[
        float | None,
        typer.Option("--rel-tol", help="Stop bisecting when the bracket is narrower than this fraction of d. (default 0.05)"),
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Epochs per run. (default 30; toy: 3 L-BFGS rounds)")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate of the subspace runs. (default 1e-2)")] = None,
    baseline_lr: Annotated[
        float | None,
        typer.Option("--baseline-lr", help="Learning rate of the direct baseline. (default 1e-3; 1e-4 from a checkpoint)"),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Examples per step. (default 128; text: 8 blocks, csv text: 32)")
    ] = None,
    optimizer: Annotated[
        str | None, typer.Option("--optimizer", help="adam, sgd (momentum 0.9) or lbfgs (full batch). (default adam)")
    ] = None,
    weight_decay: Annotated[
        float | None,
        typer.Option("--weight-decay", help="On the trained numbers (theta_d, or theta for the baseline). (default 0)"),
    ] = None,
    proj_seed: Annotated[int | None, typer.Option("--proj-seed", help="Seed of P (run s uses seed + s). (default 0)")] = None,
    init_seed: Annotated[
        int | None, typer.Option("--init-seed", help="Seed of theta_0 for --arch / a new head (run s uses seed + s). (default 0)")
    ] = None,
    fwht: Annotated[
        str | None, typer.Option("--fwht", help="Fastfood's transform: auto (Triton on CUDA), torch or triton.")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="text: tokens per block; csv text: truncation. (default 128)")
    ] = None,
    plot: Annotated[str | None, typer.Option("--plot", help="Write a PNG of the metric against d (needs matplotlib).")] = None,
    save_subspace: Annotated[
        str | None,
        typer.Option("--save-subspace", help="Write theta_d at d_int (seed 0) with its seeds and settings (safetensors)."),
    ] = None,
    device: DeviceOpt = "auto",
    revision: RevisionOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> int:
    """Intrinsic dimension: the smallest random subspace d whose training reaches --threshold of the baseline."""
    from modelsurgeon.recipes.intrinsic_dim import IntrinsicDimConfig

    # every value checked before anything heavy is imported; how they combine is the plan's check
    cfg = IntrinsicDimConfig.build(
        task=task,
        threshold=threshold,
        threshold_from=threshold_from,
        baseline=baseline,
        projection=projection,
        said=True if said else None,
        include=include,
        exclude=exclude,
        proj_seed=proj_seed,
        init_seed=init_seed,
        fwht=fwht,
        grid=grid,
        d_start=d_start,
        d_max=d_max,
        rel_tol=rel_tol,
        seeds=seeds,
        epochs=epochs,
        lr=lr,
        baseline_lr=baseline_lr,
        batch_size=batch_size,
        optimizer=optimizer,
        weight_decay=weight_decay,
        max_tokens=max_tokens,
        arch=arch,
        width=width,
        depth=depth,
    )

    import os

    # Idle OpenMP threads sleep instead of spinning: on a 2-core machine shared with other work, spinning
    # made each training run 3-5x slower (measured). It only takes effect if torch is not imported yet, so
    # it is set here, before the API imports torch; a library caller sets it in its environment.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from modelsurgeon import api

    with RichProgress(quiet) as bar:
        result = api.intrinsic_dim(
            model,
            cfg,
            revision=revision,
            device=device,
            progress=bar,
            save_subspace=save_subspace,
            plot=plot,
            force=force,
            command=command_line(),
        )
    render(result, as_json, _print_summary)
    return 0


def chart_lines(out: dict, width: int = 36) -> list[str]:
    """A compact text chart: one bar per d (mean metric), '|' marks the threshold."""
    curve = out["curve"]
    if not curve:
        return []
    top = max([c["mean"] for c in curve] + [out["baseline"]["value"], out["threshold_value"], 1e-12])
    thr_pos = min(width - 1, int(round(out["threshold_value"] / top * (width - 1))))
    lines = []
    for c in curve:
        n = max(0.0, c["mean"]) / top * width
        full = int(n)
        bar = "█" * full + ("▌" if n - full >= 0.5 else "")
        cells = list(bar.ljust(width))
        if cells[thr_pos] == " ":
            cells[thr_pos] = "|"
        mark = "  <- d_int" if c["d"] == out["d_int"] else ""
        spread = f" ±{c['std']:.3f}" if c["runs"] > 1 else ""
        lines.append(f"{c['d']:>10,} {''.join(cells)} {c['mean']:.4f}{spread}{mark}")
    return lines


def _print_summary(out: dict) -> None:
    from rich import box
    from rich.table import Table

    from ._output import out_console

    console = out_console()
    metric = out["metric"]
    name = out["d_int_name"]
    t = Table(title=f"{out['model']} on {out['task']['spec']}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col, j in (
        ("run", "left"),
        ("d", "right"),
        ("seed", "right"),
        (metric, "right"),
        ("eval loss", "right"),
        ("train loss", "right"),
        ("time", "right"),
        ("pass", "center"),
    ):
        t.add_column(col, justify=j, no_wrap=True)
    for r in out["records"]:
        passed = {True: "yes", False: "no", None: "-"}[r["passed"]]
        t.add_row(
            r["kind"],
            "all" if r["d"] is None else f"{r['d']:,}",
            str(r["seed"]),
            f"{r['metric']:.4f}",
            fmt_float(r["loss"]),
            fmt_float(r["train_loss"]),
            fmt_seconds(r["seconds"]),
            passed,
        )
    console.print(t)
    d_int = out["d_int"]
    lo, hi = out["bracket"] or (None, None)
    if d_int is None:
        head = f"{name}: not reached up to d = {lo:,} (D = {out['D']:,})"
    else:
        head = f"{name} = {d_int:,}  bracket ({lo:,}, {hi:,}]   D = {out['D']:,}   compression D/d = {out['compression']:,.1f}x"
    p = out["projection"]
    extra = (
        f", L = {p['L']:,}"
        if p.get("L")
        else (f", {p['nonzeros_per_column']} nonzeros per column" if p.get("nonzeros_per_column") else "")
    )
    lines = [
        head,
        f"baseline {metric} {out['baseline']['value']:.4f}: {out['baseline']['how']}",
        (
            f"threshold {out['threshold']:g} x baseline = {out['threshold_value']:.4f}"
            if out["threshold_from"] == "zero"
            else f"threshold theta_0 + {out['threshold']:g} x (baseline - theta_0) = {out['threshold_value']:.4f}"
        )
        + f" on {out['task']['eval_split']}; theta_0 (d = 0) scores {out['theta0_metric']:.4f}",
        f"projection {p['kind']}{extra}, seeds {p['seeds']}{', SAID (' + str(p['said_scales']) + ' scales)' if p['said'] else ''}; "
        f"{out['search']['runs']} runs in {fmt_seconds(out['seconds'])} on {out['device']}",
    ]
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"\n{metric} against d ('|' = threshold):", highlight=False)
    for line in chart_lines(out):
        console.print(line, highlight=False, soft_wrap=True)
    for key, label in (("subspace_file", "subspace written to"), ("plot", "plot written to")):
        if out.get(key):
            console.print(f"{label} {out[key]}", highlight=False)
