"""Parse a GGUF file's header (metadata and tensor directory) without reading tensor data.

The layout (ggml ``docs/gguf.md``, version 2 and 3, little-endian): magic ``GGUF``, u32 version, u64 tensor
count, u64 metadata count; each metadata entry a string key, a u32 value type and the value (arrays: u32 item
type, u64 count, items); each tensor a string name, u32 dimension count, u64 dimensions (fastest first), u32
ggml type and u64 offset from the data section, which starts at the next multiple of ``general.alignment``
(32 unless set). Strings are a u64 length and UTF-8 bytes. gguf-py's ``GGUFReader`` parses the same, but
builds numpy views of every field and every tensor over a memory map: seconds for a 49k-token vocabulary,
where this reads the file once from the front.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelsurgeon.ops.core.errors import CheckpointError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8", 12: "<f8"}
_MAX_STRING = 1 << 26


@dataclass(frozen=True)
class GGUFTensorEntry:
    name: str
    ggml_type: int
    shape: tuple[int, ...]  # numpy order: rows first (GGUF stores the fastest dimension first)
    offset: int  # absolute, in the file


class _Buf:
    def __init__(self, f, path: Path):
        self.f, self.path = f, path

    def take(self, n: int) -> bytes:
        b = self.f.read(n)
        if len(b) != n:
            raise CheckpointError(f"{self.path} is truncated in its GGUF header", "re-download or re-convert it")
        return b

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        if n > _MAX_STRING:
            raise CheckpointError(f"{self.path} has a {n}-byte string in its GGUF header; the file is corrupt")
        return self.take(n).decode("utf-8", errors="replace")

    def value(self, vtype: int):
        if vtype == 8:
            return self.string()
        if vtype == 9:
            itype, count = self.scalar("<I"), self.scalar("<Q")
            if itype == 8:
                return [self.string() for _ in range(count)]
            if itype not in _NUMPY:
                raise CheckpointError(f"{self.path}: GGUF array of unknown type {itype}")
            size = np.dtype(_NUMPY[itype]).itemsize
            return np.frombuffer(self.take(count * size), dtype=_NUMPY[itype]).tolist()
        if vtype not in _SCALARS:
            raise CheckpointError(
                f"{self.path}: GGUF value of unknown type {vtype}; the file is corrupt or newer than this reader"
            )
        v = self.scalar(_SCALARS[vtype])
        return bool(v) if vtype == 7 else v


def read_gguf_header(path: Path) -> tuple[dict, list[GGUFTensorEntry]]:
    """(metadata, tensors) of a GGUF file; a CheckpointError for anything malformed."""
    size = path.stat().st_size
    with open(path, "rb", buffering=1 << 20) as f:
        b = _Buf(f, path)
        if b.take(4) != b"GGUF":
            raise CheckpointError(f"{path} is not a GGUF file (no GGUF magic)")
        version = b.scalar("<I")
        if version not in (2, 3):
            raise CheckpointError(f"{path} is GGUF version {version}; this reader knows versions 2 and 3")
        n_tensors, n_kv = b.scalar("<Q"), b.scalar("<Q")
        if n_tensors > 1 << 24 or n_kv > 1 << 24:
            raise CheckpointError(f"{path} claims {n_tensors} tensors and {n_kv} metadata entries; the file is corrupt")
        meta = {}
        for _ in range(n_kv):
            key = b.string()
            meta[key] = b.value(b.scalar("<I"))
        raw = []
        for _ in range(n_tensors):
            name = b.string()
            n_dims = b.scalar("<I")
            if n_dims > 8:
                raise CheckpointError(f"{path}: tensor {name} has {n_dims} dimensions; the file is corrupt")
            dims = [b.scalar("<Q") for _ in range(n_dims)]
            raw.append((name, b.scalar("<I"), tuple(reversed(dims)), b.scalar("<Q")))
        align = int(meta.get("general.alignment", 32))
        start = f.tell()
        start += -start % align
    tensors = [GGUFTensorEntry(n, t, shape, start + off) for n, t, shape, off in raw]
    for t in tensors:
        if t.offset > size:
            raise CheckpointError(f"{path} is truncated: tensor {t.name} starts past the end", "re-download it")
    return meta, tensors
