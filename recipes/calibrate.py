"""Calibration settings shared by the calibrated methods of `surgeon prune` and `surgeon quantize`.

    calib: {file: held-out.txt, samples: 128, seqlen: 2048, seed: 0, batch_size: 4}

``file`` is plain text or JSONL with a ``text`` field; without one the built-in text is used (the Python
language reference that ships with CPython: nothing is downloaded). ``samples`` and ``seqlen`` default to the
papers' (128 sequences of 2048 tokens for Wanda, SparseGPT and GPTQ; 128 of 512 for AWQ), with ``seqlen`` capped
at the model's context. Imports no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from modelsurgeon.ops.core.errors import UsageError

from .base import check_int, did_you_mean

# method -> (samples, seqlen) of the official code (docs/notes/prune_quant_formats.md, "Calibration defaults")
PAPER_DEFAULTS = {"wanda": (128, 2048), "sparsegpt": (128, 2048), "gptq": (128, 2048), "awq": (128, 512)}


@dataclass(frozen=True)
class CalibrationConfig:
    file: str | None = None  # --calib: plain text or JSONL with a `text` field; None: the built-in text
    samples: int | None = None  # --calib-samples; None: the method's paper default
    seqlen: int | None = None  # --calib-seqlen; None: the paper default, capped at the model's context
    seed: int = 0  # where the sequences are cut from the text
    batch_size: int = 4  # sequences run through a layer at once (speed and activation memory, not the result)

    def __post_init__(self) -> None:
        if self.file is not None and (not isinstance(self.file, str) or not self.file):
            raise UsageError(f"--calib must be a file path, got {self.file!r}")
        if self.samples is not None:
            check_int(self.samples, "--calib-samples", minimum=1)
        if self.seqlen is not None:
            check_int(self.seqlen, "--calib-seqlen", minimum=2)
        check_int(self.seed, "calib.seed")
        check_int(self.batch_size, "calib.batch_size", minimum=1)

    @classmethod
    def from_mapping(cls, data: Mapping) -> CalibrationConfig:
        known = [f.name for f in fields(cls)]
        unknown = [k for k in data if k not in known]
        if unknown:
            raise UsageError(f"calib has unknown keys: {', '.join(map(str, unknown))}{did_you_mean(unknown[0], known)}")
        return cls(**data)

    @classmethod
    def coerce(cls, value) -> CalibrationConfig:
        if isinstance(value, CalibrationConfig):
            return value
        if value is None:
            return cls()
        if isinstance(value, Mapping):
            return cls.from_mapping(value)
        raise UsageError(f"calib must be a mapping of calibration settings, got {value!r}")

    def resolved(self, method: str, max_context: int) -> tuple[int, int]:
        """(samples, seqlen) for ``method`` on a model whose context holds ``max_context`` tokens."""
        samples, seqlen = PAPER_DEFAULTS[method]
        samples = self.samples or samples
        seqlen = self.seqlen or min(seqlen, max_context)
        if seqlen > max_context:
            raise UsageError(f"--calib-seqlen {seqlen} is longer than the model's context ({max_context} tokens)")
        return samples, seqlen


def check_positive(value, where: str) -> float:
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UsageError(f"{where} must be a positive number, got {value!r}")
    return float(value)
