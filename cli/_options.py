"""The options every command shares (one definition, so help texts and defaults cannot drift), and the
command line as typed, for provenance. Imports no torch."""

from __future__ import annotations

import shlex
import sys
from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of a table.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or notes on stderr.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace the output if it exists.")]
RevisionOpt = Annotated[str | None, typer.Option("--revision", help="Hub revision (branch, tag or commit) of MODEL.")]
MaxShardOpt = Annotated[str, typer.Option("--max-shard-size", help="Largest output shard, e.g. 5GB, 500MB, 2GiB.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="Where the math runs: auto (CUDA when present), cpu, cuda, cuda:N.")]
OutputOpt = Annotated[str, typer.Option("--output", "-o", help="Output folder (written atomically).")]
DEFAULT_MAX_SHARD = "5GB"
# calibrated methods (prune --method wanda|sparsegpt, quantize --method gptq|awq)
CalibOpt = Annotated[
    str | None,
    typer.Option("--calib", help="Calibration text: plain text or JSONL with a 'text' field. Default: the built-in text."),
]
CalibSamplesOpt = Annotated[
    int | None, typer.Option("--calib-samples", help="Calibration sequences (default 128, as the papers).")
]
CalibSeqlenOpt = Annotated[
    int | None,
    typer.Option(
        "--calib-seqlen", help="Tokens per calibration sequence (default 2048, AWQ 512; capped at the model's context)."
    ),
]
DampeningOpt = Annotated[
    float | None, typer.Option("--dampening", help="SparseGPT/GPTQ: fraction of mean(diag H) added to H's diagonal (0.01).")
]
BlocksizeOpt = Annotated[int | None, typer.Option("--blocksize", help="SparseGPT/GPTQ: columns per lazy update block (128).")]


def calib_flags(calib: str | None, samples: int | None, seqlen: int | None) -> dict | None:
    """The calibration flags that were given, as the ``calib`` setting (None when none was)."""
    given = {k: v for k, v in {"file": calib, "samples": samples, "seqlen": seqlen}.items() if v is not None}
    return given or None


def command_line() -> str:
    """The command as the user typed it, for provenance."""
    return " ".join(["surgeon", *map(shlex.quote, sys.argv[1:])])


WideOpt = Annotated[bool, typer.Option("--wide", help="Show every column and whole tensor names, however wide the table gets.")]
