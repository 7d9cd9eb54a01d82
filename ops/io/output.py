"""Where a command's result goes: the atomic output folder or file, and the write flow that fills it.

    out = Output(path, force, max_shard_size)         # plan: out.check() refuses a bad OUT before any work
    ...validate everything...
    specs = [TensorSpec(name, shape, dtype), ...]     # plan: every output tensor, in order
    write_folder(out, specs, produce(), source=ck, command=cmd, ...)   # run: stream, finalize, rename

Everything is written into a hidden temporary folder beside the target and renamed into place only when
it all succeeded, so an error or Ctrl-C leaves nothing behind. ``produce()`` yields (name, tensor) in the
order of ``specs``; the writer appends each to its shard as it arrives, so only the tensors in flight
are in memory.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from modelsurgeon.ops.core.errors import SurgeonError

from .checkpoint import Checkpoint
from .writer import ShardedWriter, TensorSpec, copy_aux_files, parse_size, provenance

DEFAULT_MAX_SHARD = "5GB"


@dataclass(frozen=True)
class Output:
    """Where to write and how: the path, whether an existing output may be replaced, the shard size."""

    path: Path
    force: bool = False
    max_shard_size: int = 5 * 10**9

    @classmethod
    def of(cls, path: str | Path, force: bool = False, max_shard_size: str | int = DEFAULT_MAX_SHARD) -> Output:
        return cls(Path(path), force, parse_size(max_shard_size))

    def check(self, kind: str = "dir") -> None:
        """Refuse now, before any work, what the final rename would refuse."""
        (OutputDir if kind == "dir" else OutputFile)(self.path, self.force)

    def folder(self) -> OutputDir:
        return OutputDir(self.path, self.force)

    def file(self) -> OutputFile:
        return OutputFile(self.path, self.force)


class OutputDir:
    """A temporary folder beside ``target`` that becomes ``target`` on commit, or vanishes."""

    def __init__(self, target: str | Path, force: bool = False):
        self.target = Path(target)
        if self.target.exists() and not force:
            raise SurgeonError(f"output {self.target} already exists", "pass --force to replace it, or pick another -o")
        if self.target.exists() and not self.target.is_dir():
            raise SurgeonError(f"output {self.target} exists and is not a folder", "remove it or pick another -o")
        self.path = self.target.parent / f".{self.target.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}"
        self._done = False

    def __enter__(self) -> OutputDir:
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.path.mkdir()
        except OSError as e:
            raise SurgeonError(f"cannot create the output folder {self.target}: {e.strerror}") from None
        return self

    def commit(self) -> Path:
        """Move the finished folder into place (replacing an old one only now, at the end)."""
        old = None
        if self.target.exists():
            old = self.target.parent / f".{self.target.name}.old-{secrets.token_hex(3)}"
            os.replace(self.target, old)
        os.replace(self.path, self.target)
        self._done = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.target

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            shutil.rmtree(self.path, ignore_errors=True)


class OutputFile:
    """The same promise for a single output file (a GGUF, a subspace file)."""

    def __init__(self, target: str | Path, force: bool = False):
        self.target = Path(target)
        if self.target.exists() and not force:
            raise SurgeonError(f"output {self.target} already exists", "pass --force to replace it, or pick another -o")
        if self.target.is_dir():
            raise SurgeonError(f"output {self.target} is a folder", "give a file name")
        self.path = self.target.parent / f".{self.target.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}"
        self._done = False

    def __enter__(self) -> OutputFile:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        return self

    def commit(self) -> Path:
        os.replace(self.path, self.target)
        self._done = True
        return self.target

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.path.unlink(missing_ok=True)


def write_folder(
    out: OutputDir | Output,
    specs: list[TensorSpec],
    tensors: Iterable[tuple[str, torch.Tensor]],
    *,
    source: Checkpoint | None,
    command: str,
    max_shard_size: int | None = None,
    metadata: dict[str, str] | None = None,
    update_config: Callable[[dict], dict] | None = None,
    extra_files: dict[str, str | bytes] | None = None,
) -> Path:
    """Write every tensor, copy config/tokenizer files from ``source``, add ``extra_files``, commit."""
    if isinstance(out, Output):
        max_shard_size = out.max_shard_size if max_shard_size is None else max_shard_size
        out = out.folder()
    if max_shard_size is None:
        max_shard_size = parse_size(DEFAULT_MAX_SHARD)
    with out:
        writer = ShardedWriter(out.path, specs, max_shard_size, provenance(command, metadata))
        try:
            for name, tensor in tensors:
                writer.write(name, tensor)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        if source is not None:
            copy_aux_files(source, out.path, update_config)
        for rel, content in (extra_files or {}).items():
            dst = out.path / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                dst.write_bytes(content)
            elif isinstance(content, (dict, list)):
                dst.write_text(json.dumps(content, indent=2) + "\n")
            else:
                dst.write_text(content)
        return out.commit()
