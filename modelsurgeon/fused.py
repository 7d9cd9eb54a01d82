"""Fused steps of `surgeon run`: a step's output handed to the next step as a stream, never written.

    ck = StreamedCheckpoint.after_merge(merge_plan, label)   # the headers the merge would write
    with plan_prune(cfg, ck) as p:                           # planned against them, as against a folder
        ck.attach(merged_tensors(merge_plan))                # the tensors, when the pass runs
        PruneStream(p).tensors()                             # reads ck once, in order

A ``StreamedCheckpoint`` is the checkpoint a step would have written: its tensors' names, shapes and dtypes
come from the producing step's plan (the specs its writer would get), its config and tokenizer files are
the ones it would copy (a few small files in the run's work folder, written when the pass runs), and its
tensors are the very tensors the producing step would hand its writer, in the same dtype, so the next step
computes on the same bits as after a round trip through a file. It can be read once, in order: ``get`` of
any tensor but the last one read, or a second ``iter_tensors``, is an error, and ``fusable_*`` below say
from the plans whether a step reads its input that way.

This module sits with ``pipeline.py`` above the api layer: it composes the families, which never import each other.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from modelsurgeon.ops.io.checkpoint import Checkpoint, Resolved, TensorInfo, torch_dtype_to_st
from modelsurgeon.ops.io.writer import TensorSpec, copy_aux_files


class StreamedCheckpoint(Checkpoint):
    """The output of a step that is not written: headers up front, tensors from a stream, read once in order."""

    def __init__(self, label: str, specs: Iterable[TensorSpec], config: dict | None):
        path = Path(label)
        infos = {s.name: TensorInfo(s.name, torch_dtype_to_st(s.dtype), tuple(s.shape), path) for s in specs}
        # not Checkpoint.__init__: nothing of this checkpoint is on disk yet
        self.resolved = Resolved(label, path)
        self.label = label
        self.folder = path
        self.weight_files = []
        self.kind = "stream"
        self._infos = infos
        self._handles, self._torch_sd = {}, {}
        self.metadata = {}
        self.config = config
        self._stream: Iterator[tuple[str, torch.Tensor]] | None = None
        self._read_once = False
        self._last: tuple[str, torch.Tensor] | None = None
        self._materialized = False

    # --- what the producing step would have written beside the weights
    @classmethod
    def after_merge(cls, plan, folder: Path) -> StreamedCheckpoint:
        """What ``run_merge(plan)`` would write into ``folder``: its specs, and its config and tokenizer files
        (written now)."""
        from modelsurgeon.ops.merge.run import aux_files

        files = aux_files(plan)
        config = json.loads(files["config.json"]) if "config.json" in files else None
        out = cls(str(folder), plan.specs(), config)
        out._write({k: (v.encode() if isinstance(v, str) else v) for k, v in files.items()})
        return out

    @classmethod
    def after(cls, ck: Checkpoint, folder: Path) -> StreamedCheckpoint:
        """What a step that keeps every tensor's name, shape and dtype (prune) would write from ``ck`` into
        ``folder``: the same headers, and ck's config and tokenizer files as ``write_folder`` copies them."""
        specs = [TensorSpec(i.name, tuple(i.shape), i.torch_dtype) for i in ck.infos()]
        out = cls(str(folder), specs, dict(ck.config) if ck.config is not None else None)
        folder.mkdir(parents=True, exist_ok=True)
        copy_aux_files(ck, folder)
        out._write({})
        return out

    def _write(self, files: dict[str, bytes]) -> None:
        """Config, tokenizer and card files into the folder the label names; never tensors."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for rel, content in files.items():
            (self.folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.folder / rel).write_bytes(content)
        self._materialized = True

    def aux_files(self) -> list[Path]:
        if not self._materialized:
            return []
        return super().aux_files()

    def input_paths(self) -> list[Path]:
        return []

    # --- the stream
    def attach(self, stream: Iterable[tuple[str, torch.Tensor]]) -> None:
        self._stream = iter(stream)

    def iter_tensors(self, names: Iterable[str] | None = None, prefetch: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        """The stream's tensors in order (``names``: those of them, which must come in the stream's order)."""
        if self._stream is None:
            raise RuntimeError(f"{self.label}: no stream attached (a fused step was run before its pass)")
        if self._read_once:
            raise RuntimeError(f"{self.label} is a stream and was read a second time")
        self._read_once = True
        wanted = None if names is None else list(names)
        return self._iterate(wanted)

    def _iterate(self, wanted: list[str] | None) -> Iterator[tuple[str, torch.Tensor]]:
        order = self.names()
        k = 0
        for name, t in self._stream:
            if name != order[k]:
                raise RuntimeError(f"{self.label}: the stream gave {name} where {order[k]} was planned")
            k += 1
            if wanted is not None:
                if not wanted:
                    continue  # drain: the producer finishes (and checks) its work
                if name != wanted[0]:
                    if name in wanted:
                        raise RuntimeError(f"{self.label}: {wanted[0]} was asked for before {name}, out of the stream's order")
                    continue
                wanted.pop(0)
            self._last = (name, t)
            yield name, t
        if k != len(order) or wanted:
            raise RuntimeError(f"{self.label}: the stream ended after {k} of {len(order)} tensors")
        self._last = None

    def get(self, name: str) -> torch.Tensor:
        if self._last is not None and self._last[0] == name:
            return self._last[1]
        raise RuntimeError(f"{self.label} is a stream: {name} can be read only when it comes")

    def iter_chunks(self, name: str, max_elems: int = 1 << 24, align: int = 1) -> Iterator[torch.Tensor]:
        yield self.get(name).reshape(-1)

    def close(self) -> None:
        self._last = None


# --------------------------------------------------------------------------------------------
# which steps read their input once, tensor by tensor, in order


def in_stream_order(names: list[str], order: list[str]) -> bool:
    """Whether ``names`` (no repeats) come in ``order``'s order, so one pass over ``order`` serves them."""
    pos = {n: i for i, n in enumerate(order)}
    at = [pos.get(n) for n in names]
    return None not in at and all(a < b for a, b in zip(at, at[1:], strict=False))


def prune_reads_once(plan) -> str | None:
    """None when ``plan`` (a prune plan) reads each input tensor once, in order; else why not."""
    if plan.config.calibrated:
        return f"{plan.config.method} runs the model on calibration text, layer by layer"
    if plan.pool and plan.pool_k:
        return "--scope global ranks all targets together before it prunes one (a statistics pass)"
    order = {n: i for i, n in enumerate(plan.ck.names())}
    for t in plan.targets:  # a tied group is pruned when its canonical member comes: it must come first
        if t.aliases and any(order[a] < order[t.name] for a in t.aliases):
            return f"{t.name} is tied to a tensor stored before it"
    return None


def quantize_reads_once(plan) -> str | None:
    """None when ``plan`` (a quantize plan) reads each input tensor once, in order; else why not."""
    cfg = plan.config
    if cfg.calibrated:
        return f"{cfg.method} runs the model on calibration text, layer by layer"
    if cfg.target_bpw is not None:
        return "--target-bpw measures every target before it chooses one scheme"
    if plan.gguf_tensors is not None:
        wanted = list(dict.fromkeys(n for t in plan.gguf_tensors for n in t.sources))
        if not in_stream_order(wanted, plan.ck.names()):
            return "the GGUF file lists the tensors in another order than they come"
    return None
