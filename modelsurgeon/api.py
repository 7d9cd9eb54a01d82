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
    from modelsurgeon.ops.dequantize.run import DequantizeResult
    from modelsurgeon.ops.intrinsic.expand import ExpandResult
    from modelsurgeon.ops.intrinsic.run import IntrinsicDimResult
    from modelsurgeon.ops.quantize.run import QuantizeResult
    from modelsurgeon.ops.report.run import ReportResult
    from modelsurgeon.recipes.dequantize import DequantizeConfig
    from modelsurgeon.recipes.intrinsic_dim import IntrinsicDimConfig
    from modelsurgeon.recipes.quantize import QuantizeConfig
    from modelsurgeon.recipes.report import ReportConfig

__all__ = ["dequantize", "expand_subspace", "intrinsic_dim", "quantize", "report"]


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
) -> ExpandResult:
    """A subspace file written by ``intrinsic_dim(save_subspace=...)`` back into the full trained checkpoint
    at ``output``: theta_0 (rebuilt from its seeds, or the base checkpoint, at its recorded path or ``base``,
    checked by sha256) + P theta_d. ``result.bit_exact`` says whether it equals the trained weights bit for bit."""
    from modelsurgeon.ops.core.progress import SILENT
    from modelsurgeon.ops.intrinsic.expand import PYTHON_COMMAND, plan_expand, run_expand

    with plan_expand(
        path, output, base=base, device=device, force=force, max_shard_size=max_shard_size, command=command or PYTHON_COMMAND
    ) as plan:
        return run_expand(plan, progress or SILENT)
