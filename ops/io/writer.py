"""Write checkpoints: a streaming, sharded safetensors writer, provenance, and the files copied beside it.

The writer is given the full list of output tensors (name, shape, dtype) before any data
arrives, which the plan step knows anyway. With it every shard's header, and so every byte
offset, is fixed in advance: each shard file is written front to back exactly once, tensors
are appended as they are produced, and no shard is ever buffered in memory.

The atomic output folder the writer fills lives in ``output.py``.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from modelsurgeon.ops.core.errors import UsageError

from .checkpoint import Checkpoint, torch_dtype_to_st

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """'5GB' -> 5_000_000_000, '500MiB' -> 524_288_000, '1000' -> 1000 (bytes)."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(text)
    if not m:
        raise UsageError(f"cannot read size {text!r}", "write it like 5GB, 500MB, 2GiB or a byte count")
    num, unit, binary = float(m.group(1)), m.group(2).upper(), bool(m.group(3))
    power = "KMGT".index(unit) + 1 if unit else 0
    value = int(num * (1024 if binary else 1000) ** power)
    if value <= 0:
        raise UsageError(f"size {text!r} must be positive")
    return value


# --------------------------------------------------------------------------------------------
# the sharded writer


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()

    @classmethod
    def like(cls, name: str, t: torch.Tensor) -> TensorSpec:
        return cls(name, tuple(t.shape), t.dtype)


def shard_names(n: int) -> list[str]:
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


class ShardedWriter:
    """Write tensors, in the order of ``specs``, into HF-style shards of at most ``max_shard_size``.

    A tensor larger than the limit gets a shard of its own, as in transformers.
    """

    def __init__(self, folder: Path, specs: Iterable[TensorSpec], max_shard_size: int, metadata: dict[str, str] | None = None):
        self.folder = Path(folder)
        self.specs = list(specs)
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"duplicate output tensor names: {dup[:5]}")
        groups: list[list[TensorSpec]] = [[]]
        size = 0
        for spec in self.specs:
            if groups[-1] and size + spec.nbytes > max_shard_size:
                groups.append([])
                size = 0
            groups[-1].append(spec)
            size += spec.nbytes
        if not groups[-1]:
            groups.pop()
        self.files = shard_names(max(len(groups), 1))
        self.metadata = {"format": "pt", **(metadata or {})}
        self._shard_of: dict[str, int] = {}
        self._headers: list[bytes] = []
        for i, group in enumerate(groups):
            header: dict = {"__metadata__": self.metadata}
            offset = 0
            for spec in group:
                header[spec.name] = {
                    "dtype": torch_dtype_to_st(spec.dtype),
                    "shape": list(spec.shape),
                    "data_offsets": [offset, offset + spec.nbytes],
                }
                offset += spec.nbytes
                self._shard_of[spec.name] = i
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors writes it
            self._headers.append(raw)
        self._groups = groups
        self._next = 0
        self._fh = None
        self._open_shard = -1
        self.total_size = sum(s.nbytes for s in self.specs)

    @property
    def pending(self) -> list[str]:
        return [s.name for s in self.specs[self._next :]]

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self.specs):
            raise RuntimeError(f"writer got {name!r} after the last planned tensor")
        spec = self.specs[self._next]
        if name != spec.name:
            raise RuntimeError(f"writer expected {spec.name!r} next, got {name!r}")
        if tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
            raise RuntimeError(f"{name}: planned {spec.dtype}{list(spec.shape)}, got {tensor.dtype}{list(tensor.shape)}")
        shard = self._shard_of[name]
        if shard != self._open_shard:
            self._close_shard()
            self._fh = open(self.folder / self.files[shard], "wb")
            raw = self._headers[shard]
            self._fh.write(len(raw).to_bytes(8, "little"))
            self._fh.write(raw)
            self._open_shard = shard
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        if data.numel():
            self._fh.write(memoryview(data.view(torch.uint8).numpy()))
        self._next += 1
        if self._next == len(self.specs) or self._shard_of[self.specs[self._next].name] != shard:
            self._close_shard()

    def _close_shard(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def close(self) -> list[str]:
        """Finish; write the index when there are several shards. Returns the file names."""
        self._close_shard()
        if self._next != len(self.specs):
            raise RuntimeError(f"writer closed with {len(self.specs) - self._next} tensors unwritten: {self.pending[:3]}")
        if not self.specs:  # an empty checkpoint is still a valid file
            with open(self.folder / self.files[0], "wb") as f:
                raw = json.dumps({"__metadata__": self.metadata}).encode()
                raw += b" " * (-len(raw) % 8)
                f.write(len(raw).to_bytes(8, "little") + raw)
        if len(self.files) > 1:
            index = {
                "metadata": {"total_size": self.total_size},
                "weight_map": {s.name: self.files[self._shard_of[s.name]] for s in self.specs},
            }
            (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return list(self.files)

    def abort(self) -> None:
        self._close_shard()


# --------------------------------------------------------------------------------------------
# finalize: what every output folder gets beside its weights


_RUN_PROVENANCE: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("run_provenance", default=None)


@contextlib.contextmanager
def run_provenance(meta: dict[str, str]):
    """Within this block every output's provenance also carries ``meta`` (``surgeon run`` records its recipe)."""
    token = _RUN_PROVENANCE.set(dict(meta))
    try:
        yield
    finally:
        _RUN_PROVENANCE.reset(token)


def provenance(command: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    from modelsurgeon import __version__

    meta = {"modelsurgeon_version": __version__, "modelsurgeon_command": command}
    meta.update(extra or {})
    meta.update(_RUN_PROVENANCE.get() or {})
    return meta


def copy_aux_files(source: Checkpoint, folder: Path, update_config: Callable[[dict], dict] | None = None) -> list[str]:
    """Copy config, tokenizer and generation files from ``source``; optionally rewrite config.json."""
    copied = []
    for f in source.aux_files():
        rel = f.relative_to(source.folder)
        dst = folder / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        rewrite = update_config is not None or source.rewrite_config  # a dequantized source: its config, not the file
        if rel.as_posix() == "config.json" and rewrite and source.config is not None:
            update = update_config or dict
            dst.write_text(json.dumps(update(dict(source.config)), indent=2) + "\n")
        else:
            shutil.copyfile(f, dst)
        copied.append(rel.as_posix())
    return copied
