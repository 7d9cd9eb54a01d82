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
    from modelsurgeon.ops.core.progress import Progress
    from modelsurgeon.ops.quantize.run import QuantizeResult
    from modelsurgeon.ops.report.run import ReportResult
    from modelsurgeon.recipes.quantize import QuantizeConfig
    from modelsurgeon.recipes.report import ReportConfig

__all__ = ["report", "quantize"]


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
    **settings,
) -> QuantizeResult:
    """Quantize MODEL's linear weights with a scheme (``scheme="w4a16"``) and write OUTPUT atomically: a
    compressed-tensors folder, a GGUF file, or dense weights (``format=``). Returns per-tensor and total bits
    per weight, sizes and SQNR. Settings: ``QuantizeConfig``'s fields; ``command`` is recorded in the output."""
    from modelsurgeon.ops.core.progress import silent
    from modelsurgeon.ops.quantize.plan import plan_quantize
    from modelsurgeon.ops.quantize.run import run_quantize
    from modelsurgeon.recipes.quantize import QuantizeConfig

    cfg = _config(QuantizeConfig, config, settings)
    with plan_quantize(cfg, str(model), str(output), force=force, max_shard_size=max_shard_size, revision=revision) as plan:
        return run_quantize(plan, progress or silent(), command)
