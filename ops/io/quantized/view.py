"""The dequantizing view: a quantized checkpoint seen as the float checkpoint it stands for.

    view = QuantizedView(raw, stored, hidden, "compressed-tensors")
    view.names()            # logical names: model.layers.0.mlp.up_proj.weight, never weight_packed
    view.get(name)          # that weight's float values, decoded from its stored parts on this read
    view.describe(name)     # how it is stored: format, scheme, and each stored part's dtype and shape
    view.raw                # the checkpoint as stored, for whoever needs the codes themselves

Every command opens checkpoints through ``open_checkpoint``, which returns this view for a quantized input,
so prune, merge, quantize, eval and report read logical float tensors and need no format code of their own.
One tensor is decoded per ``get``; nothing else is kept. ``config`` is config.json without its
``quantization_config`` (``source_quantization`` keeps it), and ``rewrite_config`` tells the writer to write
that config rather than copy the file, so a dense output does not claim to be quantized.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ..checkpoint import Checkpoint, TensorInfo, st_dtype_to_torch


@dataclass(frozen=True)
class StoredTensor:
    """One logical tensor of a quantized checkpoint: where its parts are stored and how they decode."""

    name: str  # the logical (transformers) name
    format: str  # "compressed-tensors pack-quantized", "fp8 block", "gguf Q4_1", "bitsandbytes nf4" ...
    scheme: str  # a short description: "int4 group 128 symmetric"
    parts: dict[str, str]  # role -> stored tensor name ("codes": "...weight_packed", "scale": ...)
    shape: tuple[int, ...]
    dtype: str  # the logical dtype, safetensors spelling
    decode: Callable[[dict[str, torch.Tensor], torch.dtype, int, int], torch.Tensor]  # (parts, dtype, r0, r1) -> rows r0:r1
    main: str = ""  # the part whose position the logical tensor takes in the listing (default: the first)
    details: dict = field(default_factory=dict)  # settings shown by report (group size, block, ...)
    row_align: int = 1  # decode row ranges starting at multiples of this (a block's height)
    prepare: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None  # once per read

    @property
    def main_part(self) -> str:
        return self.main or next(iter(self.parts.values()))


CHUNK_ELEMS = 1 << 22  # values decoded per step: the float32 temporaries stay at a few tens of MB


def decode_rows(st: StoredTensor, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The logical tensor, decoded a few rows at a time into one output of its dtype: memory is the output plus
    the stored parts plus one step's temporaries, whatever the tensor's size."""
    dtype = st_dtype_to_torch(st.dtype)
    if st.prepare is not None:
        parts = st.prepare(parts)
    rows = st.shape[0] if st.shape else 1
    cols = max(1, math.prod(st.shape[1:]))
    step = max(st.row_align, (CHUNK_ELEMS // cols) // st.row_align * st.row_align)
    if step >= rows:
        out = st.decode(parts, dtype, 0, rows)
    else:
        out = torch.empty(st.shape, dtype=dtype)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            out[r0:r1] = st.decode(parts, dtype, r0, r1)
    if tuple(out.shape) != st.shape:  # a decoder bug, never the user's input
        raise RuntimeError(f"{st.name}: decoded {list(out.shape)}, expected {list(st.shape)}")
    return out


class QuantizedView(Checkpoint):
    """A read-only, dequantizing view over a quantized checkpoint ``raw`` (see the module docstring)."""

    def __init__(
        self,
        raw: Checkpoint,
        stored: dict[str, StoredTensor],
        hidden: set[str],
        source_format: str,
        config: dict | None = None,
        source_quantization: dict | None = None,
    ):
        self.raw = raw
        self.resolved = raw.resolved
        self.label = raw.label
        self.folder = raw.folder
        self.weight_files = raw.weight_files
        self.kind = raw.kind
        self.metadata = raw.metadata
        self.config = config if config is not None else raw.config
        self.source_format = source_format
        self.source_quantization = source_quantization
        self.rewrite_config = True
        self._stored = stored
        self._handles = {}
        self._torch_sd = raw._torch_sd
        self._lock = raw._lock
        by_part = {st.main_part: st for st in stored.values()}
        consumed = {p for st in stored.values() for p in st.parts.values()} | set(hidden)
        infos: dict[str, TensorInfo] = {}
        for info in raw.infos():
            st = by_part.get(info.name)
            if st is not None:
                infos[st.name] = TensorInfo(st.name, st.dtype, st.shape, info.file)
            elif info.name not in consumed:
                infos[info.name] = info
        self._infos = infos

    # --- what is stored
    def is_quantized(self, name: str) -> bool:
        return name in self._stored

    def stored(self, name: str) -> StoredTensor | None:
        return self._stored.get(name)

    def describe(self, name: str) -> dict | None:
        """How ``name`` is stored: format, scheme, settings, and each stored part; None for a plain tensor."""
        st = self._stored.get(name)
        if st is None:
            return None
        parts = {}
        for role, n in st.parts.items():
            i = self.raw.info(n)
            parts[role] = {"name": n, "dtype": i.dtype, "shape": list(i.shape)}
        return {"format": st.format, "scheme": st.scheme, **st.details, "parts": parts}

    @property
    def stored_bytes(self) -> int:
        return sum(i.nbytes for i in self.raw.infos())

    # --- reading
    def get(self, name: str) -> torch.Tensor:
        st = self._stored.get(name)
        if st is None:
            self.info(name)  # a clear error for an unknown name
            return self.raw.get(name)
        parts = {role: self.raw.get(n) for role, n in st.parts.items()}
        return decode_rows(st, parts)

    def iter_chunks(self, name: str, max_elems: int = 1 << 24, align: int = 1) -> Iterator[torch.Tensor]:
        if name not in self._stored:
            yield from self.raw.iter_chunks(name, max_elems, align)
            return
        flat = self.get(name).reshape(-1)
        step = max(align, (max_elems // align) * align)
        for first in range(0, flat.numel(), step):
            yield flat[first : first + step]

    def close(self) -> None:
        self.raw.close()
