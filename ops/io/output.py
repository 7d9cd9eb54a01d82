"""The write half of the flow every command shares: stream tensors into an atomic output folder.

    out = OutputDir(args.output, args.force)          # plan: fails now if OUT exists
    ...validate everything...
    specs = [TensorSpec(name, shape, dtype), ...]     # plan: every output tensor, in order
    write_folder(out, specs, produce(), source=ck, command=command_line(), ...)

``produce()`` yields (name, tensor) in the order of ``specs``; the writer appends each to its shard as
it arrives, so only the tensors in flight are in memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import torch

from .checkpoint import Checkpoint
from .writer import OutputDir, ShardedWriter, TensorSpec, copy_aux_files, provenance


def write_folder(
    out: OutputDir,
    specs: list[TensorSpec],
    tensors: Iterable[tuple[str, torch.Tensor]],
    *,
    source: Checkpoint | None,
    command: str,
    max_shard_size: int,
    metadata: dict[str, str] | None = None,
    update_config: Callable[[dict], dict] | None = None,
    extra_files: dict[str, str | bytes] | None = None,
) -> Path:
    """Write every tensor, copy config/tokenizer files from ``source``, add ``extra_files``, commit."""
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
