"""`surgeon merge`: merge models from a mergekit recipe or from flags; fold or extract LoRA adapters."""

from __future__ import annotations

from typing import Annotated

import typer

from ._options import DEFAULT_MAX_SHARD, DeviceOpt, ForceOpt, JsonOpt, MaxShardOpt, QuietOpt, command_line
from ._output import emit_json, fmt_bytes, fmt_count, progress, warn

EPILOG = """Examples:

  surgeon merge recipe.yaml -o merged/                       # a mergekit recipe, unchanged

  surgeon merge --method ties --base org/base org/a org/b --density 0.5 -o merged/

  surgeon merge --method linear a/ b/ c/ --weight 0.5 --weight 0.3 --weight 0.2 -o soup/

  surgeon merge --method slerp --base a/ b/ --t 0.3 -o slerped/

  surgeon merge --method dare_ties --base base/ a/ b/ --density 0.3 --seed 7 -o dare/

  surgeon merge recipe.yaml -o merged/ --dry-run             # check everything, print the plan, stop

  surgeon merge --base org/base --lora my-adapter/ -o folded/          # fold a PEFT LoRA adapter

  surgeon merge --extract-lora finetuned/ --base org/base --rank 16 -o adapter/

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
    extract_lora: Annotated[
        str | None, typer.Option("--extract-lora", help="Extract a LoRA adapter of --rank from this fine-tune of --base.")
    ] = None,
    rank: Annotated[int | None, typer.Option("--rank", "-r", min=1, help="LoRA rank for --extract-lora.")] = None,
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
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check everything and print the plan; write nothing.")] = False,
    list_methods: Annotated[bool, typer.Option("--list-methods", help="List the merge methods and exit.")] = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> int:
    """Merge models (mergekit recipes or flags), fold a LoRA adapter, or extract one."""
    from modelsurgeon.ops.core.errors import UsageError

    if list_methods:
        return _list_methods(as_json)
    inputs = list(inputs or [])
    if len(inputs) > 1 and any(x.lower().endswith(_RECIPE_SUFFIXES) for x in inputs):
        raise UsageError("a recipe file takes no other arguments", "put the models in the recipe, or use --method with models")
    recipe_file = inputs[0] if len(inputs) == 1 and inputs[0].lower().endswith(_RECIPE_SUFFIXES) else None
    modes = [
        name
        for name, on in (
            ("a recipe file", recipe_file is not None),
            ("--method", method is not None),
            ("--lora", lora is not None),
            ("--extract-lora", extract_lora is not None),
        )
        if on
    ]
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
    flag_only = {"--weight": weight, "--density": density, "--t": t, "--param": param}
    mode = modes[0]
    if mode in ("--lora", "--extract-lora", "a recipe file"):
        used = [k for k, v in flag_only.items() if v]
        if used:
            where = "put them in the recipe's parameters" if mode == "a recipe file" else f"{mode} takes no merge parameters"
            raise UsageError(f"{', '.join(used)} belong{'s' if len(used) == 1 else ''} to the --method form", where)
    if mode == "a recipe file" and base is not None:
        raise UsageError("--base belongs to the --method form", "set base_model in the recipe")
    if mode != "--extract-lora" and (rank is not None or include or exclude or exact_svd):
        raise UsageError("--rank, --include, --exclude and --exact-svd go with --extract-lora")
    if mode in ("--lora", "--extract-lora"):
        if inputs:
            raise UsageError(
                f"{mode} takes no model arguments", f"give the base with --base, e.g. surgeon merge {mode} X --base B -o OUT"
            )
        if base is None:
            raise UsageError(f"{mode} needs --base")
    if mode == "--extract-lora" and rank is None:
        raise UsageError("--extract-lora needs --rank", "e.g. --rank 16")
    dtype_n = _dtype_flag("--dtype", dtype)
    out_dtype_n = _dtype_flag("--out-dtype", out_dtype)

    from modelsurgeon.ops.core.device import resolve_device
    from modelsurgeon.ops.io.writer import parse_size

    dev = resolve_device(device)
    shard = parse_size(max_shard_size)
    if mode == "--extract-lora":
        return _extract(
            extract_lora, base, rank, include, exclude, exact_svd, output, force, dev, out_dtype_n, seed, dry_run, as_json, quiet
        )

    from dataclasses import replace

    from modelsurgeon.recipes.merge import MergeRecipe, ModelInput, ModelRef, load_recipe

    if mode == "a recipe file":
        recipe = load_recipe(recipe_file)
    elif mode == "--lora":
        recipe = MergeRecipe("passthrough", models=(ModelInput(ModelRef(base, lora)),), source="--lora")
    else:
        recipe = _recipe_from_flags(method, base, inputs, weight, density, t, param)
    overrides = {
        k: v for k, v in (("dtype", dtype_n), ("out_dtype", out_dtype_n), ("tokenizer_source", tokenizer_source)) if v is not None
    }
    if overrides:
        recipe = replace(recipe, **overrides)
    from modelsurgeon.ops.merge.plan import plan_merge, run_merge

    plan = plan_merge(recipe, output=output, force=force, seed=seed, device=dev, max_shard_size=shard)
    for w in plan.warnings:
        warn(w)
    summary = plan.summary()
    if dry_run:
        plan.close()
        summary.update({"dry_run": True, "output": output})
        if as_json:
            emit_json(summary)
        else:
            _print_plan(summary)
        return 0
    total = sum(plan.input_bytes(j) for j in plan.jobs)
    with progress(total, f"merge ({plan.method.name})", quiet) as advance:
        result = run_merge(plan, advance, command=command_line())
    summary.update(
        {
            "dry_run": False,
            "output": result.output,
            "files": result.files,
            "bytes_written": result.bytes_written,
            "seconds": round(result.seconds, 3),
        }
    )
    summary.pop("peak_memory_estimate", None)
    if as_json:
        emit_json(summary)
    else:
        _print_plan(summary)
    return 0


def _dtype_flag(flag: str, value: str | None) -> str | None:
    from modelsurgeon.ops.core.errors import UsageError
    from modelsurgeon.recipes.merge import DTYPES

    if value is None:
        return None
    if value.lower() not in DTYPES:
        raise UsageError(f"{flag} {value!r} is not a dtype", "use float32, bfloat16, float16 or float64")
    return DTYPES[value.lower()]


def _recipe_from_flags(method, base, models, weight, density, t, param):
    import yaml

    from modelsurgeon.ops.core.errors import SurgeonError, UsageError
    from modelsurgeon.ops.merge.methods import get_method
    from modelsurgeon.recipes.merge import MergeRecipe, ModelInput, ModelRef

    try:
        meth = get_method(method)
    except SurgeonError as e:
        raise UsageError(e.message, e.hint) from None
    if not models:
        raise UsageError(
            f"--method {method} needs the models to merge", f"e.g. surgeon merge --method {method} --base B A C -o OUT"
        )
    # the models merged besides the base; the base may also be listed among them
    base_ref = ModelRef.parse(base) if base else None
    others = (
        [m for m in models if base_ref is None or not ModelRef.parse(m).same_as(base_ref)]
        if meth.base != "unused"
        else list(models)
    )
    global_params: dict = {}
    per_model: list[dict] = [{} for _ in models]
    for flag, values, name in (("--weight", weight, "weight"), ("--density", density, "density")):
        if not values:
            continue
        if len(values) == 1:
            global_params[name] = values[0]
        elif len(values) == len(others):
            k = 0
            for i, m in enumerate(models):
                if meth.base == "unused" or base_ref is None or not ModelRef.parse(m).same_as(base_ref):
                    per_model[i][name] = values[k]
                    k += 1
        else:
            raise UsageError(
                f"{flag} was given {len(values)} times for {len(others)} model(s)",
                f"give it once for all, or once per model ({len(others)})",
            )
    if not weight and meth.param("weight") is not None and meth.param("weight").required:
        global_params["weight"] = 1.0  # flag form: equal weights unless told otherwise
    if t is not None:
        global_params["t"] = t
    for item in param or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param {item!r} is not KEY=VALUE", "e.g. --param lambda=0.8")
        try:
            global_params[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise UsageError(f"--param {item!r}: cannot read the value") from None
    from types import MappingProxyType

    return MergeRecipe(
        merge_method=method,
        base_model=base_ref,
        models=tuple(ModelInput(ModelRef.parse(m), MappingProxyType(p)) for m, p in zip(models, per_model)),
        parameters=MappingProxyType(global_params),
        source="flags",
    )


def _extract(finetune, base, rank, include, exclude, exact, output, force, dev, out_dtype, seed, dry_run, as_json, quiet) -> int:
    import torch

    from modelsurgeon.ops.io.output import OutputDir
    from modelsurgeon.ops.merge.lora import plan_extract, run_extract

    out = OutputDir(output, force)
    plan = plan_extract(finetune, base, rank, include, exclude)
    summary = {
        "finetune": finetune,
        "base": base,
        "rank": rank,
        "modules": len(plan.ranks),
        "candidates_for_full_save": len(plan.candidates),
    }
    if dry_run:
        plan.ft.close()
        plan.base.close()
        summary.update({"dry_run": True, "output": output})
        emit_json(summary) if as_json else _print_plan(summary)
        return 0
    with progress(len(plan.ranks), "extract LoRA", quiet, unit="modules") as advance:
        res = run_extract(
            plan,
            out,
            base_spec=base,
            out_dtype=getattr(torch, out_dtype) if out_dtype else None,
            device=dev,
            exact=exact,
            seed=seed,
            command=command_line(),
            advance=advance,
        )
    summary.update(
        {
            "dry_run": False,
            "output": res.output,
            "full_tensors": res.full_tensors,
            "mean_rel_error": res.mean_rel_error,
            "max_rel_error": res.max_rel_error,
            "bytes_written": res.bytes_written,
            "seconds": round(res.seconds, 3),
        }
    )
    summary.pop("candidates_for_full_save")
    emit_json(summary) if as_json else _print_plan(summary)
    return 0


def _list_methods(as_json: bool) -> int:
    from modelsurgeon.ops.merge.methods import REGISTRY

    rows = []
    for m in REGISTRY.values():
        rows.append(
            {
                "name": m.name,
                "summary": m.summary,
                "paper": m.paper,
                "base": m.base,
                "models": f"{m.min_models}+"
                if m.max_models is None
                else (str(m.min_models) if m.min_models == m.max_models else f"{m.min_models}-{m.max_models}"),
                "parameters": {p.name: (None if p.required else p.default) for p in m.params},
                "model_parameters": {p.name: (None if p.required else p.default) for p in m.model_params},
                "randomized": m.randomized,
            }
        )
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


def _print_plan(s: dict) -> None:
    from ._output import out_console

    console = out_console()
    lines = []
    for key, value in s.items():
        if key in ("warnings", "dry_run") or value is None:
            continue
        if key in ("output_bytes", "bytes_written", "peak_memory_estimate"):
            value = fmt_bytes(value)
        elif key == "dtypes":
            value = ", ".join(f"{k} {fmt_count(v)}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value)) if value else "-"
        elif isinstance(value, float):
            value = f"{value:.4g}"
        lines.append(f"{key.replace('_', ' '):<22} {value}")
    if s.get("dry_run"):
        lines.append("dry run: nothing was written")
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)
