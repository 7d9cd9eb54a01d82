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


def command_line() -> str:
    """The command as the user typed it, for provenance."""
    return " ".join(["surgeon", *map(shlex.quote, sys.argv[1:])])


WideOpt = Annotated[bool, typer.Option("--wide", help="Show every column and whole tensor names, however wide the table gets.")]
