"""`surgeon merge`: merge models from a mergekit recipe or from flags; fold or extract LoRA adapters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import typer

from ._options import DEFAULT_MAX_SHARD, DeviceOpt, ForceOpt, JsonOpt, MaxShardOpt, QuietOpt, command_line
from ._output import REL_L2, RichProgress, emit_json, fmt_bytes, fmt_count, fmt_rel_l2, fmt_seconds, render, warn

EPILOG = """Examples:

  surgeon merge recipe.yaml -o merged/                       # a mergekit recipe, unchanged

  surgeon merge --method ties --base org/base org/a org/b --density 0.5 -o merged/

  surgeon merge --method linear a/ b/ c/ --weight 0.5 --weight 0.3 --weight 0.2 -o soup/

  surgeon merge --method slerp --base a/ b/ --t 0.3 -o slerped/

  surgeon merge --method dare_ties --base base/ a/ b/ --density 0.3 --seed 7 -o dare/

  surgeon merge recipe.yaml -o merged/ --dry-run             # check everything, print the plan, stop

  surgeon merge --base org/base --lora my-adapter/ -o folded/          # fold a PEFT LoRA adapter

  surgeon merge --extract-lora finetuned/ --base org/base --rank 16 -o adapter/

  surgeon merge --adapters --method ties my-adapter/ other-adapter/ --density 0.5 --rank 16 -o merged-adapter/

  surgeon merge --list-methods
"""

_RECIPE_SUFFIXES = (".yaml", ".yml")


def merge(
    inputs: Annotated[
        list[str] | None,
        typer.Argument(
            help="A mergekit recipe (.yaml), or with --method the models to merge (path, org/name[@rev], or MODEL+ADAPTER)."
        ),
    ] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Output folder (written atomically).")] = None,
    method: Annotated[str | None, typer.Option("--method", "-m", help="Merge method (flag form); see --list-methods.")] = None,
    base: Annotated[str | None, typer.Option("--base", "-b", help="Base model (flag form, --lora and --extract-lora).")] = None,
    weight: Annotated[
        list[float] | None, typer.Option("--weight", "-w", help="Model weight: once for all models, or once per model in order.")
    ] = None,
    density: Annotated[
        list[float] | None,
        typer.Option("--density", help="Fraction of each task vector kept, in (0, 1]: once, or once per model."),
    ] = None,
    t: Annotated[
        float | None, typer.Option("--t", help="Interpolation factor for slerp (0 = base, 1 = the other model).")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Any global parameter as KEY=VALUE (e.g. lambda=0.8, normalize=false); repeatable."),
    ] = None,
    lora: Annotated[str | None, typer.Option("--lora", help="Fold this PEFT LoRA adapter folder into --base.")] = None,
    adapters: Annotated[
        bool,
        typer.Option(
            "--adapters", help="With --method: the arguments are PEFT LoRA adapters of one base, merged into one adapter."
        ),
    ] = False,
    extract_lora: Annotated[
        str | None, typer.Option("--extract-lora", help="Extract a LoRA adapter of --rank from this fine-tune of --base.")
    ] = None,
    rank: Annotated[
        int | None, typer.Option("--rank", "-r", min=1, help="LoRA rank for --extract-lora (the cap with --sv-threshold).")
    ] = None,
    sv_threshold: Annotated[
        float | None,
        typer.Option(
            "--sv-threshold",
            help="--extract-lora: per module, keep the singular values >= this fraction of its largest (adaptive rank).",
        ),
    ] = None,
    embed_lora: Annotated[
        bool, typer.Option("--embed-lora", help="--extract-lora: factor the embeddings too (else saved whole if changed).")
    ] = False,
    include: Annotated[
        str | None,
        typer.Option("--include", help="--extract-lora: regex of the weights to factor (default: all linear weights)."),
    ] = None,
    exclude: Annotated[str | None, typer.Option("--exclude", help="--extract-lora: regex of weights to leave out.")] = None,
    exact_svd: Annotated[
        bool, typer.Option("--exact-svd", help="--extract-lora: full SVD instead of the randomized one.")
    ] = False,
    tokenizer_source: Annotated[
        str | None,
        typer.Option("--tokenizer-source", help="base, or one of the models: its tokenizer and vocabulary order are kept."),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed for the random methods (dare_*, della*): same seed, same output.")
    ] = 0,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="Cast inputs to this before merging (float32, bfloat16, float16).")
    ] = None,
    out_dtype: Annotated[
        str | None, typer.Option("--out-dtype", help="Saved dtype (default: --dtype, else each tensor's source dtype).")
    ] = None,
    device: DeviceOpt = "auto",
    max_shard_size: MaxShardOpt = DEFAULT_MAX_SHARD,
    allow_same: Annotated[
        bool,
        typer.Option(
            "--i-understand-this-is-not-useful-without-training",
            help="MoE recipes: allow every expert to be the same model (mergekit-moe's flag).",
        ),
    ] = False,
    intermediate_dir: Annotated[
        str | None,
        typer.Option("--intermediate-dir", help="Multi-document recipes: keep the stages' outputs here (and reuse them)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check everything and print the plan; write nothing.")] = False,
    list_methods: Annotated[bool, typer.Option("--list-methods", help="List the merge methods and exit.")] = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> int:
    """Merge models (mergekit recipes or flags), fold a LoRA adapter, or extract one."""
    if list_methods:
        return _list_methods(as_json)
    inputs = list(inputs or [])
    merge_params = {"--weight": weight, "--density": density, "--t": t, "--param": param}
    if adapters:
        refused = (lora, extract_lora, include, exclude, embed_lora)
        adapter_flags = dict(base=base, t=t, weight=weight, density=density, param=param, rank=rank, sv_threshold=sv_threshold)
        run_flags = dict(exact_svd=exact_svd, seed=seed, out_dtype=out_dtype, device=device)
        write_flags = dict(force=force, dry_run=dry_run, as_json=as_json, quiet=quiet)
        return _merge_adapters(inputs, output, method, refused, **adapter_flags, **run_flags, **write_flags)
    extract_flags = rank is not None or include or exclude or exact_svd or sv_threshold is not None or embed_lora
    mode = _mode(inputs, output, method, base, lora, extract_lora, merge_params, bool(extract_flags))
    write = _Write(output, force, max_shard_size, dry_run, as_json, quiet, intermediate_dir, allow_same)
    if mode == "--extract-lora":
        from modelsurgeon.recipes.merge import dtype_name

        dtype_name(dtype, "--dtype")  # a merge option: checked, not used
        settings = dict(
            rank=rank,
            sv_threshold=sv_threshold,
            embed_lora=embed_lora,
            include=include,
            exclude=exclude,
            exact_svd=exact_svd,
            seed=seed,
            out_dtype=out_dtype,
            device=device,
        )
        return _extract(extract_lora, base, settings, write)
    run = dict(seed=seed, dtype=dtype, out_dtype=out_dtype, tokenizer_source=tokenizer_source, device=device)
    if mode == "a recipe file":
        return _merge_recipe_file(inputs[0], run, write)
    if mode == "--lora":
        return _fold_lora(base, lora, run, write)
    return _merge_flags(method, base, inputs, weight, density, t, param, run, write)


@dataclass(frozen=True)
class _Write:
    """Where and how a mode writes and prints."""

    output: str
    force: bool
    max_shard_size: str
    dry_run: bool
    as_json: bool
    quiet: bool
    intermediate_dir: str | None = None
    allow_same: bool = False


def _mode(inputs, output, method, base, lora, extract_lora, merge_params: dict, extract_flags: bool) -> str:
    """Which of the four forms the flags describe ("a recipe file", "--method", "--lora", "--extract-lora"),
    after checking that the flags given go together; a usage error otherwise."""
    from modelsurgeon.ops.core.errors import UsageError

    if len(inputs) > 1 and any(x.lower().endswith(_RECIPE_SUFFIXES) for x in inputs):
        raise UsageError("a recipe file takes no other arguments", "put the models in the recipe, or use --method with models")
    recipe_file = len(inputs) == 1 and inputs[0].lower().endswith(_RECIPE_SUFFIXES)
    given = (("a recipe file", recipe_file), ("--method", method is not None), ("--lora", lora is not None))
    modes = [name for name, on in (*given, ("--extract-lora", extract_lora is not None)) if on]
    if len(modes) > 1:
        raise UsageError(
            f"give {' or '.join(modes)}, not both", "a recipe holds the method and models; flags describe them without one"
        )
    if not modes:
        if inputs:
            raise UsageError(
                f"{inputs[0]} is not a recipe (.yaml) and no --method was given",
                "run `surgeon merge RECIPE.yaml -o OUT` or `surgeon merge --method ties --base B A C -o OUT`",
            )
        raise UsageError("give a recipe file or --method with models", "e.g. surgeon merge recipe.yaml -o merged/ (see --help)")
    if output is None:
        raise UsageError("-o/--output is required", "name the folder to write, e.g. -o merged/")
    mode = modes[0]
    used = [k for k, v in merge_params.items() if v]
    if mode != "--method" and used:
        where = "put them in the recipe's parameters" if mode == "a recipe file" else f"{mode} takes no merge parameters"
        raise UsageError(f"{', '.join(used)} belong{'s' if len(used) == 1 else ''} to the --method form", where)
    if mode == "a recipe file" and base is not None:
        raise UsageError("--base belongs to the --method form", "set base_model in the recipe")
    if mode != "--extract-lora" and extract_flags:
        raise UsageError("--rank, --sv-threshold, --embed-lora, --include, --exclude and --exact-svd go with --extract-lora")
    if mode in ("--lora", "--extract-lora"):
        if inputs:
            raise UsageError(
                f"{mode} takes no model arguments", f"give the base with --base, e.g. surgeon merge {mode} X --base B -o OUT"
            )
        if base is None:
            raise UsageError(f"{mode} needs --base")
    return mode


def _merge_adapters(
    inputs,
    output,
    method,
    refused,
    *,
    base,
    t,
    weight,
    density,
    param,
    rank,
    sv_threshold,
    exact_svd,
    seed,
    out_dtype,
    device,
    force,
    dry_run,
    as_json,
    quiet,
) -> int:
    """``surgeon merge --adapters --method M ADAPTER...``: one adapter from several, in adapter space."""
    from modelsurgeon import api
    from modelsurgeon.ops.core.errors import UsageError
    from modelsurgeon.ops.merge.flags import parse_params

    if any(refused) or base is not None or t is not None:
        raise UsageError(
            "--adapters takes --method, adapters, --weight, --density, --param, --rank, --sv-threshold and --exact-svd only"
        )
    if method is None:
        raise UsageError(
            "--adapters needs --method", "e.g. surgeon merge --adapters --method ties a/ b/ --density 0.5 -o merged/"
        )
    if output is None:
        raise UsageError("-o/--output is required", "name the adapter folder to write, e.g. -o merged/")
    settings = dict(
        method=method,
        weight=tuple(weight or ()),
        density=tuple(density or ()),
        params=parse_params(param or ()),
        rank=rank,
        sv_threshold=sv_threshold,
        exact_svd=exact_svd,
        seed=seed,
        out_dtype=out_dtype,
        device=device,
    )
    with RichProgress(quiet) as bar:
        result = api.merge_adapters(
            inputs, output, dry_run=dry_run, force=force, progress=bar, command=command_line(), **settings
        )
    render(result, as_json, _print_plan)
    return 0


def _merge_recipe_file(path: str, run: dict, write: _Write) -> int:
    """``surgeon merge RECIPE.yaml``: a mergekit recipe (one or several stages), the run flags over it."""
    from modelsurgeon.ops.merge.stages import count_documents
    from modelsurgeon.recipes.merge import MergeConfig

    if count_documents(path) > 1 or write.allow_same or _is_moe(path):
        return _merge(path, write, {**run, "allow_same": write.allow_same} if write.allow_same else run)
    return _merge(MergeConfig.build(path, **run), write)


def _is_moe(path: str) -> bool:
    from modelsurgeon.recipes.base import read_yaml
    from modelsurgeon.recipes.merge import is_moe_recipe

    try:
        return is_moe_recipe(read_yaml(path))
    except Exception:  # noqa: BLE001 - the merge reader reports a bad file with line and column
        return False


def _merge_flags(method, base, models, weight, density, t, param, run: dict, write: _Write) -> int:
    """``surgeon merge --method M [--base B] MODEL...``: the recipe the flags describe."""
    from modelsurgeon.ops.merge.flags import recipe_from_flags
    from modelsurgeon.recipes.merge import MergeConfig

    recipe = recipe_from_flags(method, models, base, weight, density, t, param)
    return _merge(MergeConfig.build(recipe, **run), write)


def _fold_lora(base: str, adapter: str, run: dict, write: _Write) -> int:
    """``surgeon merge --base B --lora ADAPTER``: a passthrough of B with the adapter folded in."""
    from modelsurgeon.recipes.merge import MergeConfig, MergeRecipe

    return _merge(MergeConfig.build(MergeRecipe.fold_lora(base, adapter), **run), write)


def _merge(cfg, write: _Write, settings: dict | None = None) -> int:
    from modelsurgeon import api

    with RichProgress(write.quiet) as bar:
        result = api.merge(
            cfg,
            write.output,
            dry_run=write.dry_run,
            force=write.force,
            max_shard_size=write.max_shard_size,
            progress=bar,
            command=command_line(),
            intermediate_dir=write.intermediate_dir,
            **(settings or {}),
        )
    render(result, write.as_json, _print_plan)
    return 0


def _extract(finetune: str, base: str, settings: dict, write: _Write) -> int:
    """``surgeon merge --extract-lora FT --base B --rank R``: a LoRA adapter from a fine-tune."""
    from modelsurgeon import api
    from modelsurgeon.recipes.merge import ExtractConfig

    cfg = ExtractConfig(finetune=finetune, base=base, **settings)
    with RichProgress(write.quiet) as bar:
        result = api.extract_lora(
            config=cfg, output=write.output, dry_run=write.dry_run, force=write.force, progress=bar, command=command_line()
        )
    render(result, write.as_json, _print_plan)
    if not write.dry_run and result.modules and result.mean_rel_error > LORA_POOR_ERROR:
        warn(
            f"the rank-{result.rank} adapter reproduces the fine-tune poorly: mean {REL_L2} "
            f"{fmt_rel_l2(result.mean_rel_error)} (above {LORA_POOR_ERROR}); a higher --rank keeps more of the change"
        )
    return 0


def _list_methods(as_json: bool) -> int:
    from modelsurgeon.ops.merge.methods import describe_methods

    rows = describe_methods()
    if as_json:
        emit_json({"methods": rows})
        return 0
    from rich import box
    from rich.table import Table

    from ._output import out_console

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("method", "base", "models", "parameters (default)", "per model (default)", "summary"):
        table.add_column(col, overflow="fold")
    fmt = lambda d: ", ".join(f"{k}={'required' if v is None else v}" for k, v in d.items()) or "-"  # noqa: E731
    for r in rows:
        table.add_row(r["name"], r["base"], r["models"], fmt(r["parameters"]), fmt(r["model_parameters"]), r["summary"])
    out_console().print(table)
    return 0


LORA_POOR_ERROR = 0.5  # an extracted adapter's mean rel L2 error above this gets a warning


def _label(key: str, s: dict) -> str:
    return {"mean_rel_error": f"mean {REL_L2}", "max_rel_error": f"max {REL_L2}"}.get(key, key.replace("_", " "))


def _print_plan(s: dict) -> None:
    """A merge's (or an extraction's) summary as a two-column table: setting, value."""
    from rich import box
    from rich.table import Table

    from ._output import out_console, print_lines

    console = out_console()
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_header=False, title_justify="left")
    t.add_column("setting", no_wrap=True, style="bold")
    t.add_column("value", overflow="fold")
    for key, value in s.items():
        if key in ("warnings", "dry_run") or value is None:
            continue
        if key == "per_module":
            ranks = sorted({m["rank"] for m in value.values()})
            worst = max(value.items(), key=lambda kv: kv[1]["rel_error"], default=None)
            value = f"{len(value)} modules, ranks {ranks[0]}-{ranks[-1]}" if ranks else "-"
            if worst is not None:
                value += f", worst {REL_L2} {fmt_rel_l2(worst[1]['rel_error'])} ({worst[0]})"
        elif key in ("mean_rel_error", "max_rel_error"):
            value = fmt_rel_l2(value)
        elif key == "seconds":
            value = fmt_seconds(value)
        elif key in ("output_bytes", "bytes_written", "peak_memory_estimate"):
            value = fmt_bytes(value)
        elif key == "dtypes":
            value = ", ".join(f"{k} {fmt_count(v)}" for k, v in value.items())
        elif key == "method" and value == "passthrough" and any("+" in str(m) for m in s.get("models") or []):
            value = "fold LoRA (passthrough of MODEL+ADAPTER)"
        elif isinstance(value, list):
            value = ", ".join(map(str, value)) if value else "-"
        elif isinstance(value, float):
            value = f"{value:.4g}"
        t.add_row(_label(key, s), str(value))
    t.title = "plan (dry run: nothing was written)" if s.get("dry_run") else None
    console.print(t)
    if s.get("mean_rel_error") is not None and "rank" in s:
        print_lines([f"{REL_L2} = |delta - B A| / |delta| per weight, delta = fine-tune - base"], console)
