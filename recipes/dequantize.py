"""`surgeon dequantize` settings: the one place that holds their defaults (imports no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from modelsurgeon.ops.core.errors import UsageError

from .base import Config

# --dtype spellings -> safetensors dtype names; auto keeps each tensor's own (the source's original dtype)
DTYPES = {"auto": None, "bf16": "BF16", "fp16": "F16", "fp32": "F32"}
_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}


@dataclass(frozen=True)
class DequantizeConfig(Config):
    """What `surgeon dequantize` writes: every tensor as plain floats, in ``dtype`` (or each tensor's own)."""

    KIND = "dequantize"
    VERSION = 1

    dtype: str = "auto"

    def validate(self) -> None:
        d = str(self.dtype).strip().lower()
        d = _ALIASES.get(d, d)
        if d not in DTYPES:
            raise UsageError(f"--dtype {self.dtype!r} is unknown", f"use one of: {', '.join(DTYPES)}")
        self._set("dtype", d)

    @property
    def st_dtype(self) -> str | None:
        """The safetensors dtype every float tensor is written in; None keeps each tensor's own."""
        return DTYPES[self.dtype]
