"""`surgeon intrinsic-dim [MODEL] --task T`: the smallest random subspace that trains MODEL (or a built-in
network) to a fraction of its full-training performance (Li et al. 2018; Aghajanyan et al. 2020)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Annotated

import typer

from ._options import DeviceOpt, ForceOpt, JsonOpt, QuietOpt, RevisionOpt, command_line
from ._output import emit_json, fmt_float, note, warn

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
    from modelsurgeon.ops.core.errors import SurgeonError, UsageError
    from modelsurgeon.recipes.intrinsic_dim import IntrinsicDimConfig, parse_baseline, parse_grid

    # plan: every flag checked before anything heavy is imported
    given = {
        "task": task,
        "threshold_from": threshold_from,
        "arch": arch,
        "width": width,
        "depth": depth,
        "projection": projection,
        "threshold": threshold,
        "seeds": seeds,
        "d_start": d_start,
        "d_max": d_max,
        "rel_tol": rel_tol,
        "epochs": epochs,
        "lr": lr,
        "baseline_lr": baseline_lr,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "weight_decay": weight_decay,
        "proj_seed": proj_seed,
        "init_seed": init_seed,
        "fwht": fwht,
        "max_tokens": max_tokens,
        "include": include,
        "exclude": exclude,
    }
    kwargs = {k: v for k, v in given.items() if v is not None}
    if said:
        kwargs["said"] = True
    if baseline is not None:
        kwargs["baseline"] = parse_baseline(baseline)
    if grid is not None:
        kwargs["grid"] = parse_grid(grid)
    if model is not None:
        clash = [f"--{k}" for k in ("arch", "width", "depth") if given[k] is not None]
        if clash:
            raise UsageError(f"{', '.join(clash)} describe a built-in network; they cannot be combined with MODEL {model}")
    if grid is not None and (d_start is not None or d_max is not None or rel_tol is not None):
        raise UsageError("--grid replaces the search: drop --d-start, --d-max and --rel-tol")
    cfg = IntrinsicDimConfig(**kwargs, explicit=frozenset(kwargs))
    if plot is not None and importlib.util.find_spec("matplotlib") is None:
        raise SurgeonError("--plot needs matplotlib", "run: pip install 'modelsurgeon[plot]'  (or pip install matplotlib)")
    for flag, path in (("--plot", plot), ("--save-subspace", save_subspace)):
        if path is not None and Path(path).exists() and not force:
            raise SurgeonError(f"{flag} {path} already exists", "pass --force to replace it, or pick another name")
        if path is not None and Path(path).is_dir():
            raise SurgeonError(f"{flag} {path} is a folder", "give a file name")

    import dataclasses
    import os

    # Idle OpenMP threads sleep instead of spinning: on a 2-core machine shared with other work, spinning
    # made each training run 3-5x slower (measured); only takes effect if torch is not imported yet.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from modelsurgeon.ops.core.device import resolve_device
    from modelsurgeon.ops.intrinsic.models import load_tokenizer, model_for_task
    from modelsurgeon.ops.intrinsic.projections import resolve_kind
    from modelsurgeon.ops.intrinsic.search import Problem, check_plan, measure
    from modelsurgeon.ops.intrinsic.search import save_subspace as save_sub
    from modelsurgeon.ops.intrinsic.tasks import load_task

    dev = resolve_device(device)
    t = load_task(cfg.task)
    cfg = cfg.with_task_defaults(t.defaults)
    if t.problem == "toy" and model is not None:
        raise UsageError("--task toy has its own D = 1000 model; drop MODEL")
    built = model_for_task(t, cfg, model, revision)
    if t.kind in ("text", "lm"):
        if built.checkpoint is None:
            raise SurgeonError(f"task {t.spec} is text; it needs a transformers MODEL with a tokenizer")
        tok = load_tokenizer(built.checkpoint)
        model_max = getattr(built.module.config, "max_position_embeddings", None)
        t.tokenize(tok, cfg.max_tokens, model_max)
    if cfg.baseline_lr is None:
        cfg = dataclasses.replace(cfg, baseline_lr=built.default_baseline_lr)
    cfg = dataclasses.replace(cfg, projection=resolve_kind(cfg.projection, dev))
    problem = Problem(built, t, dev, cfg.include, cfg.exclude, cfg.said)
    check_plan(problem, cfg)
    note(
        f"intrinsic-dim: {built.label} on {t.spec}: D = {problem.D:,} ({problem.frozen:,} frozen), {cfg.projection} projection, "
        f"{cfg.optimizer} lr {cfg.lr:g}, {cfg.epochs} epoch(s), device {dev}, {torch.get_num_threads()} threads",
        quiet,
    )
    with _RunProgress(quiet, cfg.epochs) as events:
        result = measure(problem, cfg, events)

    out = _result_json(result, problem, built, t, cfg, dev)
    bad = [r for r in ([result.baseline_run] if result.baseline_run else []) + result.runs if r.diverged]
    if bad:
        warn(
            f"{len(bad)} run(s) hit a non-finite loss and stopped early (d = {', '.join(str(r.d or 'all') for r in bad)}); "
            "lower --lr / --baseline-lr"
        )
    if result.non_monotone:
        warn(
            f"metric not monotone in d: d = {', '.join(map(str, result.non_monotone))} fail above d_int = {result.d_int}; "
            "the runs are noisy here, try --seeds 3"
        )
    if save_subspace is not None:
        if result.d_int is None:
            warn("no d reached the threshold; --save-subspace wrote nothing")
        else:
            run = result.run_at(result.d_int, 0)
            save_sub(
                save_subspace,
                problem,
                cfg,
                run,
                {"task": t.spec, "metric": t.metric_name, "metric_value": run.metric},
                command_line(),
                force,
            )
            out["subspace_file"] = str(save_subspace)
    if plot is not None:
        _plot(out, plot)
        out["plot"] = str(plot)
    if as_json:
        emit_json(out)
    else:
        _print_summary(out)
    return 0


def _result_json(m, problem, built, task, cfg, dev) -> dict:
    pset = next((r.projection for r in m.runs if r.projection), None) or {}
    seeds_used = sorted({r.seed for r in m.runs})
    projection = {
        "kind": cfg.projection,
        "L": pset.get("L"),
        "seeds": [cfg.proj_seed + s for s in seeds_used],
        "rng": pset.get("rng"),
        "nonzeros_per_column": pset.get("nonzeros_per_column"),
        "said": cfg.said,
        "said_scales": problem.m,
        "fwht": cfg.fwht if cfg.projection == "fastfood" else None,
        "columns": "unit norm, nested across d for a fixed seed",
    }
    name = f"d_int{cfg.threshold * 100:g}".replace(".", "_")  # d_int90, d_int95, d_int99_5
    records = ([m.baseline_run.record()] if m.baseline_run else []) + [r.record() for r in m.runs]
    if task.metric_name == "token_prob":
        for r in records:
            r["perplexity"] = math.exp(r["loss"]) if r["loss"] < 700 else float("inf")
    return {
        "model": built.label,
        "model_source": built.source,
        "task": task.describe(),
        "metric": task.metric_name,
        "D": m.D,
        "frozen_params": problem.frozen,
        "d_int": m.d_int,
        "d_int_name": name,
        name: m.d_int,
        "bracket": list(m.bracket) if m.bracket else None,
        "compression": (m.D / m.d_int) if m.d_int else None,
        "threshold": cfg.threshold,
        "threshold_value": m.threshold_value,
        "threshold_from": cfg.threshold_from,
        "theta0_metric": m.theta0_metric,
        "baseline": {"value": m.baseline, "how": m.baseline_how},
        "search": {
            "mode": "grid" if cfg.grid else "bisect",
            "grid": list(cfg.grid) or None,
            "d_start": None if cfg.grid else cfg.d_start,
            "rel_tol": None if cfg.grid else cfg.rel_tol,
            "seeds": cfg.seeds,
            "runs": len(m.runs) + (1 if m.baseline_run else 0),
            "non_monotone": m.non_monotone,
        },
        "projection": projection,
        "curve": m.curve,
        "records": records,
        "recipe": cfg.to_dict(),
        "device": str(dev),
        "seconds": round(m.seconds, 3),
    }


class _RunProgress:
    """A Rich bar on stderr: one line per run (d, seed, run number) filling with its epochs."""

    def __init__(self, quiet: bool, epochs: int):
        self.quiet, self.epochs = quiet, epochs

    def __enter__(self):
        if self.quiet:
            return lambda *a, **k: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from ._output import err_console

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("epochs"),
            TimeElapsedColumn(),
            console=err_console(),
            transient=True,
        )
        self.bar.__enter__()
        self.task = self.bar.add_task("starting", total=self.epochs)
        return self.event

    def event(self, kind: str, **info) -> None:
        if kind == "run":
            d = info["d"]
            what = "baseline (all D, direct)" if d is None else f"d = {d:,}  seed {info['seed']}"
            self.bar.reset(self.task, total=self.epochs, description=f"run {info['index']}: {what}")
        elif kind == "epoch":
            self.bar.update(self.task, completed=info["epoch"])

    def __exit__(self, *exc):
        if not self.quiet:
            self.bar.__exit__(*exc)


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
        ("seconds", "right"),
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
            f"{r['seconds']:.2f}",
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
        f"{out['search']['runs']} runs in {out['seconds']:.1f} s on {out['device']}",
    ]
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"\n{metric} against d ('|' = threshold):", highlight=False)
    for line in chart_lines(out):
        console.print(line, highlight=False, soft_wrap=True)
    for key, label in (("subspace_file", "subspace written to"), ("plot", "plot written to")):
        if out.get(key):
            console.print(f"{label} {out[key]}", highlight=False)


def _plot(out: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from modelsurgeon.ops.io.output import OutputFile

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    runs = [r for r in out["records"] if r["d"] is not None]
    ax.scatter([r["d"] for r in runs], [r["metric"] for r in runs], s=14, alpha=0.6, label="runs")
    curve = out["curve"]
    ax.plot([c["d"] for c in curve], [c["mean"] for c in curve], "-", lw=1, label="mean")
    ax.axhline(out["threshold_value"], ls="--", color="tab:red", lw=1, label=f"{out['threshold']:g} x baseline")
    ax.axhline(out["baseline"]["value"], ls=":", color="gray", lw=1, label="baseline")
    if out["d_int"]:
        ax.axvline(out["d_int"], color="tab:green", lw=1, label=f"{out['d_int_name']} = {out['d_int']:,}")
    if len({r["d"] for r in runs}) > 1 and min(r["d"] for r in runs) > 0:
        ax.set_xscale("log", base=2)
    ax.set_xlabel("subspace dimension d")
    ax.set_ylabel(out["metric"])
    ax.set_title(f"{out['model']} on {out['task']['spec']} (D = {out['D']:,})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with OutputFile(path, force=True) as f:
        fig.savefig(str(f.path), format="png")
        f.commit()
    plt.close(fig)
