"""llama.cpp's importance matrix (``llama-imatrix``), read as ``llama-quantize --imatrix`` reads it.

Two file forms (``common/imatrix-loader.cpp``):

- GGUF (current llama-imatrix): per tensor ``NAME.in_sum2`` (sums of squared activations, one per input column
  and expert) and ``NAME.counts`` (tokens seen, one per expert); keys ``imatrix.datasets``,
  ``imatrix.chunk_count``, ``imatrix.chunk_size``. The weight is ``in_sum2 / count`` per expert (1 where the
  count is 0).
- legacy ``.dat``: ``int32 n``, then per entry ``int32 len, name, int32 ncall, int32 nval, float32[nval]``
  (the values times ncall), then optionally ``int32 chunks, int32 len, dataset``. The weight is ``value / ncall``.

Both are plain data (no pickles); names are the GGUF tensor names (``blk.0.attn_q.weight``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelsurgeon.ops.core.errors import SurgeonError


@dataclass
class ImportanceMatrix:
    """GGUF tensor name -> one float32 weight per input column (times the experts of a 3-D tensor)."""

    path: str
    weights: dict[str, np.ndarray]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0

    def metadata(self) -> list[tuple[str, object]]:
        """The keys llama-quantize adds to a file quantized with an importance matrix, in its order."""
        out: list[tuple[str, object]] = [("quantize.imatrix.file", self.path)]
        if self.datasets:
            out.append(("quantize.imatrix.dataset", self.datasets[0]))
        out.append(("quantize.imatrix.entries_count", len(self.weights)))
        if self.chunk_count > 0:
            out.append(("quantize.imatrix.chunks_count", self.chunk_count))
        return out


def _bad(path: str, why: str) -> SurgeonError:
    return SurgeonError(f"--imatrix {path}: {why}", "give the file llama-imatrix wrote (imatrix.gguf or imatrix.dat)")


def load_imatrix(path: str) -> ImportanceMatrix:
    p = Path(path)
    if not p.is_file():
        raise SurgeonError(f"--imatrix {path}: no such file", "give the file llama-imatrix wrote")
    with open(p, "rb") as f:
        magic = f.read(4)
    return _load_gguf(path) if magic == b"GGUF" else _load_legacy(path, p.read_bytes())


def _load_gguf(path: str) -> ImportanceMatrix:
    import gguf

    try:
        r = gguf.GGUFReader(path)
    except Exception as e:  # gguf-py raises ValueError/struct.error/... on a damaged file
        raise _bad(path, f"not a readable GGUF file ({e})") from None
    sums, counts = {}, {}
    for t in r.tensors:
        if t.name.endswith(".in_sum2"):
            sums[t.name[: -len(".in_sum2")]] = t
        elif t.name.endswith(".counts"):
            counts[t.name[: -len(".counts")]] = t
    if not sums:
        raise _bad(path, "it holds no .in_sum2 tensors")
    weights = {}
    for name in sorted(set(sums) | set(counts)):
        if name not in sums or name not in counts:
            raise _bad(path, f"{name} has sums without counts or counts without sums")
        s, c = sums[name], counts[name]
        if s.tensor_type.name != "F32" or c.tensor_type.name != "F32":
            raise _bad(path, f"the sums and counts of {name} must be F32")
        sv = np.asarray(s.data, dtype=np.float32).reshape(-1)
        cv = np.rint(np.asarray(c.data, dtype=np.float32).reshape(-1)).astype(np.float32)  # std::lround
        if cv.size == 0 or sv.size % cv.size:
            raise _bad(path, f"{name} has {sv.size} sums for {cv.size} counts")
        per = sv.reshape(cv.size, -1)
        safe = np.where(cv > 0, cv, np.float32(1))[:, None]
        weights[name] = np.where(cv[:, None] > 0, per / safe, np.float32(1)).astype(np.float32).reshape(-1)
    f = r.fields
    datasets = [str(x) for x in f["imatrix.datasets"].contents()] if "imatrix.datasets" in f else []
    chunks = int(f["imatrix.chunk_count"].contents()) if "imatrix.chunk_count" in f else 0
    return ImportanceMatrix(path, weights, datasets, chunks)


def _load_legacy(path: str, data: bytes) -> ImportanceMatrix:
    pos = 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise _bad(path, "the file ends early (neither a GGUF nor a legacy imatrix file)")
        out = struct.unpack_from(fmt, data, pos)
        pos += size
        return out

    (n,) = take("<i")
    if n < 1 or n > 1 << 20:
        raise _bad(path, "not an imatrix file (neither GGUF nor the legacy .dat form)")
    weights = {}
    for _ in range(n):
        (length,) = take("<i")
        if length < 1 or length > 4096:
            raise _bad(path, "a tensor name of impossible length: not an imatrix file")
        name = data[pos : pos + length].decode("utf-8", "replace")
        pos += length
        ncall, nval = take("<ii")
        if nval < 1:
            raise _bad(path, f"{name} has no values")
        values = np.frombuffer(data, dtype="<f4", count=nval, offset=pos) if pos + 4 * nval <= len(data) else None
        if values is None:
            raise _bad(path, "the file ends early")
        pos += 4 * nval
        v = values.astype(np.float32)
        weights[name] = v / np.float32(ncall) if ncall > 0 else v
    datasets, chunks = [], 0
    if pos + 4 <= len(data):
        (chunks,) = take("<i")
        if pos + 4 <= len(data):
            (length,) = take("<i")
            if 0 < length <= len(data) - pos:
                datasets.append(data[pos : pos + length].decode("utf-8", "replace"))
    return ImportanceMatrix(path, weights, datasets, chunks)


def check_against(im: ImportanceMatrix, tensors, label: str) -> list[str]:
    """Problems of using ``im`` for the file's ``tensors`` (GGUFTensor list): an entry for a tensor the file does
    not have (an importance matrix of another model), or of another size (llama-quantize refuses it too)."""
    by_name = {t.name: t for t in tensors}
    problems = []
    unknown = [n for n in im.weights if n not in by_name]
    if unknown:
        problems.append(
            f"--imatrix {im.path} does not match {label}: it has {unknown[0]}"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + ", which this model's GGUF does not have; use the importance matrix computed for this model"
        )
    for name, w in im.weights.items():
        t = by_name.get(name)
        if t is None or name == "token_embd.weight" or len(t.shape) < 2:
            continue
        want = t.shape[-1] * (t.shape[0] if len(t.shape) == 3 else 1)
        if w.size != want:
            problems.append(
                f"--imatrix {im.path} does not match {label}: {name} has {w.size} weights, the tensor "
                f"{list(t.shape)} needs {want}; use the importance matrix computed for this model"
            )
            break
    return problems
