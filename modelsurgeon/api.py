"""The Python API: the same functions the CLI calls, for notebooks, training scripts and pipelines.

    import modelsurgeon as ms

    r = ms.report("minilm", filter=r"dense\\.weight$", require=["sparsity>=0.5"])
    r.ok, r.to_dict()["sparsity"]

    ms.merge("ties.yml", "merged/", seed=3)                     # a mergekit recipe file

Each function takes the command's settings as keyword arguments (or a ready config object), runs
config -> plan -> run, closes what it opened, and returns the command's result object: ``to_dict()``
is exactly the JSON that ``surgeon COMMAND --json`` prints. Errors are ``modelsurgeon.SurgeonError``
(one line that says what to do); ``progress`` takes any object with ``start``, ``advance`` and
``note`` (``modelsurgeon.ops.core.progress.Progress``; an ``update`` method, if it has one, gets a
phase's new label or total); without one the functions are silent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from modelsurgeon.ops.calibrate.evaluate import EvalResult
    from modelsurgeon.ops.core.progress import Progress
    from modelsurgeon.ops.dequantize.run import DequantizeResult
    from modelsurgeon.ops.intrinsic.expand import ExpandResult
    from modelsurgeon.ops.intrinsic.run import IntrinsicDimResult
    from modelsurgeon.ops.merge.extract import ExtractResult
    from modelsurgeon.ops.merge.plan import MergeResult
    from modelsurgeon.ops.prune.result import PruneResult
    from modelsurgeon.ops.quantize.run import QuantizeResult
    from modelsurgeon.ops.report.run import ReportResult
    from modelsurgeon.recipes.dequantize import DequantizeConfig
    from modelsurgeon.recipes.eval import EvalConfig
    from modelsurgeon.recipes.intrinsic_dim import IntrinsicDimConfig
    from modelsurgeon.recipes.merge import ExtractConfig, MergeConfig, MergeRecipe
    from modelsurgeon.recipes.prune import PruneConfig
    from modelsurgeon.recipes.quantize import QuantizeConfig
    from modelsurgeon.recipes.report import ReportConfig


__all__ = [
    "dequantize",
    "evaluate",
    "expand_subspace",
    "extract_lora",
    "intrinsic_dim",
    "merge",
    "merge_adapters",
    "prune",
    "quantize",
    "report",
]


def _config(cls, config, settings: dict):
    if config is not None and settings:
        return config.replace(**settings)
    return config if config is not None else cls(**settings)


def report(
    model: str,
    config: ReportConfig | None = None,
    *,
    revision: str | None = None,
    progress: Progress | None = None,
    **settings,
) -> ReportResult:
    """Statistics of every tensor of MODEL, totals, an optional comparison (``compare=OTHER``) and gates
    (``require=[...]``; ``result.ok`` is False when one fails). Settings: ``ReportConfig``'s fields."""
    from modelsurgeon.ops.core.progress import SILENT
    from modelsurgeon.ops.report.run import plan_report, run_report
    from modelsurgeon.recipes.report import ReportConfig

    cfg = _config(ReportConfig, config, settings)
    with plan_report(cfg, str(model), revision) as plan:
        return run_report(plan, progress or SILENT)


def quantize(
    model: str,
    output: str,
    config: QuantizeConfig | None = None,
    *,
    force: bool = False,
    max_shard_size: str | int = "5GB",
    revision: str | None = None,
    progress: Progress | None = None,
    command: str | None = None,
    dry_run: bool = False,
    **settings,
) -> QuantizeResult:
    """Quantize MODEL's linear weights with a scheme (``scheme="w4a16"``) and write OUTPUT atomically: a
    compressed-tensors folder, a GGUF file, or dense weights (``format=``). Returns per-tensor and total bits
    per weight, sizes and SQNR. Settings: ``QuantizeConfig``'s fields (``method="gptq"`` or ``"awq"`` calibrates
    on text, ``calib={"file": ..., "samples": ...}``); ``command`` is recorded in the output. ``dry_run=True``
    checks everything and returns the plan (``QuantizePlanResult``) without writing."""
    from modelsurgeon.ops.core.progress import silent
    from modelsurgeon.ops.quantize.plan import plan_quantize
    from modelsurgeon.ops.quantize.run import run_quantize
    from modelsurgeon.recipes.quantize import QuantizeConfig

    cfg = _config(QuantizeConfig, config, settings)
    progress = progress or silent()
    with plan_quantize(cfg, str(model), str(output), force=force, max_shard_size=max_shard_size, revision=revision) as plan:
        if cfg.calibrated:
            return _calibrated_quantize(plan, cfg, dry_run, progress, command)
        if dry_run:
            from modelsurgeon.ops.quantize.run import plan_result

            return plan_result(plan)
        return run_quantize(plan, progress, command)


def _calibrated_quantize(plan, cfg, dry_run: bool, progress, command):
    """GPTQ or AWQ: the quantize plan's scheme, format and targets, run by the calibration engine layer by layer.
    The quantize family lends the scheme's grid; the calibrate family runs the method (neither imports the other)."""
    from modelsurgeon.ops.calibrate.methods import AWQScale, GPTQQuantize
    from modelsurgeon.ops.calibrate.plan import plan_calibration
    from modelsurgeon.ops.quantize.grid import grid_for
    from modelsurgeon.ops.quantize.run import plan_result, run_quantize

    cplan = plan_calibration(plan.ck, cfg.calib, cfg.method, plan.targets, plan.device, strict=False)
    try:
        plan.notes.extend(cplan.notes)
        targets = dict.fromkeys(cplan.targets, True)
        spec = plan.spec
        if cfg.method == "gptq":
            method = GPTQQuantize(targets, lambda dt: grid_for(spec, dt), cfg.act_order, cfg.blocksize, cfg.dampening)
        else:
            roundtrip = lambda dt: grid_for(spec, dt).roundtrip  # noqa: E731
            group = spec.group_size if spec.scheme.family == "int" else 32
            method = AWQScale(targets, roundtrip, group, cplan.lm.config.model_type, plan.ck.label)
        info = cplan.describe()
        if dry_run:
            return plan_result(plan, info)
        r = run_quantize(plan, progress, command, source=cplan.stream(method, progress), calibration=info)
        if getattr(method, "skipped", None):
            info["awq_skipped"] = sorted(set(method.skipped))
        return r
    finally:
        cplan.close()


def dequantize(
    model: str,
    output: str,
    config: DequantizeConfig | None = None,
    *,
    force: bool = False,
    max_shard_size: str | int = "5GB",
    revision: str | None = None,
    progress: Progress | None = None,
    command: str | None = None,
    **settings,
) -> DequantizeResult:
    """Write a quantized MODEL (compressed-tensors, FP8 block scales, bitsandbytes, a GGUF file) as plain
    safetensors at OUTPUT, atomically: the transformers names, config.json without quantization_config, the
    tokenizer. Settings: ``DequantizeConfig``'s fields (``dtype="bf16"``; default: each tensor's own)."""
    from modelsurgeon.ops.core.progress import silent
    from modelsurgeon.ops.dequantize.plan import plan_dequantize
    from modelsurgeon.ops.dequantize.run import run_dequantize
    from modelsurgeon.recipes.dequantize import DequantizeConfig

    cfg = _config(DequantizeConfig, config, settings)
    with plan_dequantize(cfg, str(model), str(output), force=force, max_shard_size=max_shard_size, revision=revision) as plan:
        return run_dequantize(plan, progress or silent(), command)


def intrinsic_dim(
    model: str | None = None,
    config: IntrinsicDimConfig | None = None,
    *,
    revision: str | None = None,
    device: str = "auto",
    progress: Progress | None = None,
    save_subspace: str | Path | None = None,
    plot: str | Path | None = None,
    force: bool = False,
    command: str | None = None,
    **settings,
) -> IntrinsicDimResult:
    """The intrinsic dimension of MODEL (a checkpoint, fine-tuned from it) or, without MODEL, of a built-in
    network from a seeded init, on ``task=...``: the smallest random subspace d whose training reaches
    ``threshold`` of the baseline. ``save_subspace`` writes theta_d at d_int (seed 0), ``plot`` a PNG of the
    metric against d. Settings: ``IntrinsicDimConfig``'s fields (``grid``, ``epochs``, ``projection``, ...).

    Training runs are many small ops: on a machine shared with other work, set ``OMP_WAIT_POLICY=PASSIVE``
    in the environment before torch is imported (the CLI does), or idle OpenMP threads spin and slow each
    run 3-5x."""
    from modelsurgeon.ops.core.progress import SILENT
    from modelsurgeon.ops.intrinsic.plan import PYTHON_COMMAND, plan_intrinsic_dim
    from modelsurgeon.ops.intrinsic.run import run_intrinsic_dim
    from modelsurgeon.recipes.intrinsic_dim import IntrinsicDimConfig

    cfg = _config(IntrinsicDimConfig, config, settings)
    with plan_intrinsic_dim(
        cfg,
        None if model is None else str(model),
        revision,
        device,
        save_subspace=save_subspace,
        plot=plot,
        force=force,
        command=command or PYTHON_COMMAND,
    ) as plan:
        return run_intrinsic_dim(plan, progress or SILENT)


def expand_subspace(
    path: str | Path,
    output: str | Path,
    *,
    base: str | None = None,
    device: str = "cpu",
    force: bool = False,
    max_shard_size: str | int = "5GB",
    progress: Progress | None = None,
    command: str | None = None,
    task: str | None = None,
) -> ExpandResult:
    """A subspace file written by ``intrinsic_dim(save_subspace=...)`` back into the full trained checkpoint
    at ``output``: theta_0 (rebuilt from its seeds, or the base checkpoint, at its recorded path or ``base``,
    checked by sha256) + P theta_d. ``result.bit_exact`` says whether it equals the trained weights bit for bit.
    A subspace of a ``module:function`` task's model needs ``task=`` (the file never chooses code to run)."""
    from modelsurgeon.ops.core.progress import SILENT
    from modelsurgeon.ops.intrinsic.expand import PYTHON_COMMAND, plan_expand, run_expand

    with plan_expand(
        path,
        output,
        base=base,
        device=device,
        force=force,
        max_shard_size=max_shard_size,
        command=command or PYTHON_COMMAND,
        task=task,
    ) as plan:
        return run_expand(plan, progress or SILENT)


def merge(
    recipe: str | Path | MergeRecipe | MergeConfig,
    output: str | Path | None = None,
    *,
    dry_run: bool = False,
    force: bool = False,
    max_shard_size: str | int = "5GB",
    progress: Progress | None = None,
    command: str = "surgeon merge",
    intermediate_dir: str | Path | None = None,
    **settings,
) -> MergeResult:
    """Merge models as a mergekit recipe says, streaming one tensor at a time into ``output`` (a folder,
    written atomically; ``force`` replaces it). With ``dry_run`` everything is checked and the plan's
    result returned; nothing is written and ``output`` may be None.

    ``recipe`` is a recipe file (mergekit YAML), a ``MergeRecipe`` or a ``MergeConfig``; settings are
    ``MergeConfig``'s run options laid over it (``seed``, ``dtype``, ``out_dtype``, ``tokenizer_source``,
    ``device``). To fold a PEFT LoRA adapter: ``merge(MergeRecipe.fold_lora("org/base", "adapter/"), out)``;
    the CLI's flag form is ``ops.merge.flags.recipe_from_flags(method, models, base, ...)``. Warnings go
    to ``progress.note``. A recipe file of several YAML documents (mergekit-multi) runs its stages in
    order (``ops.merge.stages``); ``intermediate_dir`` keeps their outputs (default: removed)."""
    from pathlib import Path

    from modelsurgeon.ops.core.errors import UsageError
    from modelsurgeon.ops.core.progress import SILENT
    from modelsurgeon.ops.io.output import Output
    from modelsurgeon.ops.merge.plan import plan_merge
    from modelsurgeon.ops.merge.run import run_merge
    from modelsurgeon.recipes.merge import MergeConfig

    given = {k: v for k, v in settings.items() if v is not None}
    if output is None and not dry_run:
        raise UsageError("a merge needs an output folder", "pass output=..., or dry_run=True")
    if isinstance(recipe, (str, Path)):
        from modelsurgeon.ops.merge.stages import count_documents, merge_stages

        moe = _moe_recipe(recipe)
        if moe is not None:  # mergekit-moe: a mixture of experts
            from modelsurgeon.ops.merge.moe import plan_moe, run_moe
            from modelsurgeon.recipes.merge import MoEConfig

            run = {k: given[k] for k in ("seed", "device", "allow_same") if k in given}
            cfg = MoEConfig.from_recipe(moe, str(recipe), **run)
            out = Output.of(output, force, max_shard_size) if output is not None else None
            with plan_moe(cfg, out, layer_inputs=_layer_inputs) as plan:
                for w in plan.warnings:
                    (progress or SILENT).note(f"warning: {w}")
                if dry_run:
                    return plan.result(None if output is None else str(output))
                return run_moe(plan, progress or SILENT, command)
        if given.pop("allow_same", False):
            raise UsageError("--i-understand-this-is-not-useful-without-training goes with MoE recipes (experts:)")
        if count_documents(recipe) > 1:  # mergekit-multi: stages
            return merge_stages(
                recipe,
                output,
                settings=given,
                dry_run=dry_run,
                force=force,
                max_shard_size=max_shard_size,
                intermediate_dir=intermediate_dir,
                progress=progress or SILENT,
                command=command,
            )
    cfg = recipe.replace(**given) if isinstance(recipe, MergeConfig) else MergeConfig.build(recipe, **given)
    out = Output.of(output, force, max_shard_size) if output is not None else None
    progress = progress or SILENT
    with plan_merge(cfg, out) as plan:
        for w in plan.warnings:
            progress.note(f"warning: {w}")
        if dry_run:
            return plan.result(None if output is None else str(output))
        return run_merge(plan, progress, command)


def _layer_inputs(ck, batches, device):
    """(layer, its input for every batch) for each layer of ``ck``'s model, walked one layer at a time by the
    calibration engine (what MoE ``hidden`` routers need; memory: the embeddings, the head, one layer)."""
    from modelsurgeon.ops.calibrate.engine import LayerStream
    from modelsurgeon.ops.calibrate.model import LayerwiseModel

    lm = LayerwiseModel(ck, device)
    try:
        for ctx, _ in LayerStream(lm, batches, description="MoE routers").dense_layers():
            yield ctx.index, ctx.xs
    finally:
        lm.close()


def _moe_recipe(path) -> dict | None:
    """The mapping of a mergekit-moe recipe file (experts, no merge_method), else None."""
    from modelsurgeon.recipes.base import read_yaml
    from modelsurgeon.recipes.merge import is_moe_recipe

    try:
        data = read_yaml(path)
    except Exception:  # noqa: BLE001 - the merge reader reports a bad file with line and column
        return None
    return data if is_moe_recipe(data) else None


def merge_adapters(
    adapters,
    output: str | Path | None = None,
    *,
    dry_run: bool = False,
    force: bool = False,
    progress: Progress | None = None,
    command: str = "surgeon merge --adapters",
    **settings,
):
    """Merge several PEFT LoRA adapters of one base into one adapter folder at ``output`` (atomic):
    ``method`` ("ties", "dare_linear", ... on the adapters' deltas), ``weight``/``density`` (once or per
    adapter), ``params`` (global parameters), ``rank`` / ``sv_threshold`` for the re-factoring. The
    result reports each module's re-factoring error. Settings: ``AdapterMergeConfig``'s fields."""
    from modelsurgeon.ops.core.errors import UsageError
    from modelsurgeon.ops.core.progress import SILENT
    from modelsurgeon.ops.io.output import Output
    from modelsurgeon.ops.merge.adapters import plan_adapter_merge, run_adapter_merge
    from modelsurgeon.recipes.merge import AdapterMergeConfig

    cfg = AdapterMergeConfig(adapters=tuple(str(a) for a in adapters), **settings)
    if output is None and not dry_run:
        raise UsageError("an adapter merge needs an output folder", "pass output=..., or dry_run=True")
    out = Output.of(output, force) if output is not None else None
    with plan_adapter_merge(cfg, out) as plan:
        if dry_run:
            return plan.result(None if output is None else str(output))
        return run_adapter_merge(plan, progress or SILENT, command)


def extract_lora(
    finetune: str | None = None,
    base: str | None = None,
    output: str | Path | None = None,
    config: ExtractConfig | None = None,
    *,
    dry_run: bool = False,
    force: bool = False,
    progress: Progress | None = None,
    command: str = "surgeon merge --extract-lora",
    **settings,
) -> ExtractResult:
    """A PEFT LoRA adapter that turns ``base`` into ``finetune``: a rank-``rank`` truncated SVD of every
    linear weight's change, changed tensors that are no LoRA target saved whole; written to ``output``
    (a folder, atomically), or only checked with ``dry_run``. Settings: ``ExtractConfig``'s fields
    (``rank`` is required; ``include``, ``exclude``, ``exact_svd``, ``seed``, ``out_dtype``, ``device``)::

        ms.extract_lora("finetuned/", "org/base", "adapter/", rank=16).to_dict()["max_rel_error"]
    """
    from modelsurgeon.ops.core.errors import UsageError
    from modelsurgeon.ops.core.progress import SILENT
    from modelsurgeon.ops.io.output import Output
    from modelsurgeon.ops.merge.extract import plan_extract, run_extract
    from modelsurgeon.recipes.merge import ExtractConfig

    given = {k: v for k, v in {"finetune": finetune, "base": base, **settings}.items() if v is not None}
    cfg = _config(ExtractConfig, config, given)
    if output is None and not dry_run:
        raise UsageError("a LoRA extraction needs an output folder", "pass output=..., or dry_run=True")
    out = Output.of(output, force) if output is not None else None
    with plan_extract(cfg, out) as plan:
        if dry_run:
            return plan.result(None if output is None else str(output))
        return run_extract(plan, progress or SILENT, command)


def prune(
    model: str,
    output: str | Path | None = None,
    config: PruneConfig | None = None,
    *,
    recipe: str | Path | None = None,
    dry_run: bool = False,
    force: bool = False,
    max_shard_size: str | int = "5GB",
    device: str = "auto",
    revision: str | None = None,
    progress: Progress | None = None,
    command: str | None = None,
    **settings,
) -> PruneResult:
    """Zero the least important weights of MODEL's linear layers (``sparsity=0.5``, ``pattern="2:4"``,
    ``scope="global"``, ``method="random"``, ...) and write a dense safetensors folder OUTPUT atomically.
    Settings: ``PruneConfig``'s fields, laid over ``recipe`` (a YAML file) or ``config`` the way flags are.
    ``dry_run=True`` only plans (no OUTPUT needed): the result lists every target and its exact count.
    ``command`` is recorded in the output's metadata."""
    from pathlib import Path

    from modelsurgeon.ops.core.errors import UsageError
    from modelsurgeon.ops.core.progress import silent
    from modelsurgeon.ops.io.output import Output
    from modelsurgeon.ops.io.writer import parse_size
    from modelsurgeon.ops.prune.plan import plan_prune
    from modelsurgeon.ops.prune.run import run_prune
    from modelsurgeon.recipes.prune import PruneConfig

    if config is not None and recipe is not None:
        raise TypeError("give a config or a recipe, not both")
    given = {k: v for k, v in settings.items() if v is not None}
    if config is None:
        cfg = PruneConfig.build(recipe, **given)
    elif given:
        cfg = PruneConfig(**PruneConfig.flags_over({f: getattr(config, f) for f in config.field_names()}, given))
    else:
        cfg = config
    if output is None and not dry_run:
        raise UsageError("missing -o OUT", "give the output folder, or --dry-run to print the plan only")
    shard = parse_size(max_shard_size)
    out = None if dry_run else Output(Path(output), force, shard)
    progress = progress or silent()
    with plan_prune(cfg, str(model), out, revision, device=device) as plan:
        if cfg.calibrated:
            return _calibrated_prune(plan, cfg, dry_run, progress, command)
        return plan.result() if dry_run else run_prune(plan, progress, command)


def _calibrated_prune(plan, cfg, dry_run: bool, progress, command):
    """Wanda or SparseGPT: the prune plan's targets and counts, run by the calibration engine layer by layer."""
    from modelsurgeon.ops.calibrate.methods import PruneTarget, SparseGPTPrune, WandaPrune
    from modelsurgeon.ops.calibrate.plan import plan_calibration
    from modelsurgeon.ops.prune.run import run_prune

    cplan = plan_calibration(
        plan.ck, cfg.calib, cfg.method, [t.name for t in plan.targets], plan.device, strict=cfg.include is not None
    )
    try:
        plan.restrict(cplan.targets)
        for n in cplan.notes:
            progress.note(n)
        targets = {t.name: PruneTarget(t.mode, t.sparsity, cfg.nm) for t in plan.targets}
        owl = (cfg.owl_lambda, cfg.owl_m) if cfg.owl else None
        if cfg.method == "wanda":
            method = WandaPrune(targets, owl)
        else:
            method = SparseGPTPrune(targets, owl, cfg.blocksize, cfg.dampening)
        info = cplan.describe()
        if dry_run:
            r = plan.result()
            r.calibration = info
            return r
        r = run_prune(plan, progress, command, source=cplan.stream(method, progress), calibration=info)
        if cfg.owl:
            info["owl"] = {
                "outlier_ratios": method.outlier_ratios,
                "layer_sparsity": [method.layer_sparsity[i] for i in sorted(method.layer_sparsity)],
            }
        return r
    finally:
        cplan.close()


def evaluate(
    model: str | list[str],
    config: EvalConfig | None = None,
    *,
    revision: str | None = None,
    progress: Progress | None = None,
    **settings,
) -> EvalResult:
    """Perplexity of MODEL (or of each model of a list) on ``text=FILE``, streamed one layer at a time; with
    ``reference=REF`` also the per-token KL divergence and top-1 agreement with REF (encoders: the cosine
    similarity of sentence embeddings). ``require=["kld<=0.05"]`` gates every model (``result.ok``).
    Settings: ``EvalConfig``'s fields (``context``, ``stride``, ``max_tokens``, ``batch_size``, ``device``)."""
    from modelsurgeon.ops.calibrate.evaluate import plan_eval, run_eval
    from modelsurgeon.ops.core.progress import silent
    from modelsurgeon.recipes.eval import EvalConfig

    cfg = _config(EvalConfig, config, {k: v for k, v in settings.items() if v is not None})
    models = [model] if isinstance(model, str) else [str(m) for m in model]
    with plan_eval(cfg, models, revision) as plan:
        return run_eval(plan, progress or silent())
