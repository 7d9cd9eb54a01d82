"""The Python API: the same functions the CLI calls, for notebooks, training scripts and pipelines.

    import modelsurgeon as ms

    r = ms.report("minilm", filter=r"dense\\.weight$", require=["sparsity>=0.5"])
    r.ok, r.to_dict()["sparsity"]

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
    from modelsurgeon.ops.prune.result import PruneResult
    from modelsurgeon.ops.report.run import ReportResult
    from modelsurgeon.recipes.prune import PruneConfig
    from modelsurgeon.recipes.report import ReportConfig

__all__ = ["report", "prune"]


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
    with plan_prune(cfg, str(model), out, revision, device=device) as plan:
        return plan.result() if dry_run else run_prune(plan, progress or silent(), command)
