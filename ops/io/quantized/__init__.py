"""Quantized checkpoints, read as the float checkpoints they stand for (see ``view.py``).

``open_checkpoint`` calls ``dequantizing_view`` on every checkpoint it opens: a plain one comes back as it is;
a quantized one (compressed-tensors, FP8 with block scales, bitsandbytes) comes back as a ``QuantizedView``
whose tensors are the dequantized weights; a GGUF file is opened by ``gguf.GGUFCheckpoint``. So every command
reads logical float tensors, and ``view.raw`` / ``view.describe(name)`` keep the stored form reachable. A checkpoint quantized by a method not
read here (GPTQ, AWQ ...) comes back as stored; ``unsupported_quantization`` names it for commands that need floats.
"""

from __future__ import annotations

from ..checkpoint import Checkpoint


def dequantizing_view(ck: Checkpoint) -> Checkpoint:
    """``ck`` itself when it is not quantized, else a view that dequantizes each tensor on read."""
    from modelsurgeon.ops.core.errors import CheckpointError

    from . import bitsandbytes, compressed_tensors, fp8_block

    qc = (ck.config or {}).get("quantization_config")
    if qc is not None and not isinstance(qc, dict):
        raise CheckpointError(f"{ck.label}'s config.json has quantization_config {qc!r}, not an object", "fix config.json")
    try:
        if compressed_tensors.is_compressed_tensors(ck):
            return compressed_tensors.open_view(ck)
        if fp8_block.is_fp8_block(ck):
            return fp8_block.open_view(ck)
        if bitsandbytes.is_bitsandbytes(ck):
            return bitsandbytes.open_view(ck)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as e:  # a field of the wrong type or shape
        raise CheckpointError(
            f"{ck.label}'s config.json quantization_config is malformed ({type(e).__name__}: {e})", "fix config.json"
        ) from None
    return ck  # not quantized, or a method not read yet (gptq, awq ...): commands see the stored tensors


def unsupported_quantization(ck: Checkpoint) -> str | None:
    """The quantization method of a checkpoint that was opened as stored because nothing here reads it."""
    qc = (ck.config or {}).get("quantization_config")
    if not qc or getattr(ck, "source_format", None):
        return None
    method = qc.get("quant_method") if isinstance(qc, dict) else None
    return str(method or "unnamed")
