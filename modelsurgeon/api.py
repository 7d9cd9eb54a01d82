"""The Python API: the same functions the CLI calls, for notebooks, training scripts and pipelines.

    import modelsurgeon as ms

    r = ms.report("minilm", filter=r"dense\\.weight$", require=["sparsity>=0.5"])
    r.ok, r.to_dict()["sparsity"]

    ms.merge("ties.yml", "merged/", seed=3)                     # a mergekit recipe file

Each function takes the command's settings as keyword arguments (or a ready config object), runs
config -> plan -> run, closes what it opened, and returns the command's result object: ``to_dict()``
is exactly the JSON that ``surgeon COMMAND --json`` prints. Errors are ``modelsurgeon.SurgeonError``
(one line that says what to do); ``progress`` takes any object with ``start``, ``advance`` and
``note`` (``modelsurgeon.ops.core.progress.Progress``); without one the functions are silent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from modelsurgeon.ops.core.progress import Progress
    from modelsurgeon.ops.merge.extract import ExtractResult
    from modelsurgeon.ops.merge.plan import MergeResult
    from modelsurgeon.ops.report.run import ReportResult
    from modelsurgeon.recipes.merge import ExtractConfig, MergeConfig, MergeRecipe
    from modelsurgeon.recipes.report import ReportConfig

__all__ = ["report", "merge", "extract_lora"]


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


def merge(
    recipe: str | Path | MergeRecipe | MergeConfig,
    output: str | Path | None = None,
    *,
    dry_run: bool = False,
    force: bool = False,
    max_shard_size: str | int = "5GB",
    progress: Progress | None = None,
    command: str = "surgeon merge",
    **settings,
) -> MergeResult:
    """Merge models as a mergekit recipe says, streaming one tensor at a time into ``output`` (a folder,
    written atomically; ``force`` replaces it). With ``dry_run`` everything is checked and the plan's
    result returned; nothing is written and ``output`` may be None.

    ``recipe`` is a recipe file (mergekit YAML), a ``MergeRecipe`` or a ``MergeConfig``; settings are
    ``MergeConfig``'s run options laid over it (``seed``, ``dtype``, ``out_dtype``, ``tokenizer_source``,
    ``device``). To fold a PEFT LoRA adapter: ``merge(MergeRecipe.fold_lora("org/base", "adapter/"), out)``;
    the CLI's flag form is ``ops.merge.flags.recipe_from_flags(method, models, base, ...)``. Warnings go
    to ``progress.note``."""
    from modelsurgeon.ops.core.errors import UsageError
    from modelsurgeon.ops.core.progress import SILENT
    from modelsurgeon.ops.io.output import Output
    from modelsurgeon.ops.merge.plan import plan_merge
    from modelsurgeon.ops.merge.run import run_merge
    from modelsurgeon.recipes.merge import MergeConfig

    given = {k: v for k, v in settings.items() if v is not None}
    cfg = recipe.replace(**given) if isinstance(recipe, MergeConfig) else MergeConfig.build(recipe, **given)
    if output is None and not dry_run:
        raise UsageError("a merge needs an output folder", "pass output=..., or dry_run=True")
    out = Output.of(output, force, max_shard_size) if output is not None else None
    progress = progress or SILENT
    with plan_merge(cfg, out) as plan:
        for w in plan.warnings:
            progress.note(f"warning: {w}")
        if dry_run:
            return plan.result(None if output is None else str(output))
        return run_merge(plan, progress, command)


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
