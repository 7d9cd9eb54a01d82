"""Read a GGUF file as the transformers checkpoint it came from: names, config.json, tokenizer, float values.

    ck = open_gguf(resolved)        # header only: metadata, tensor names, types, shapes and offsets
    ck.names()                      # model.embed_tokens.weight, model.layers.0.self_attn.q_proj.weight, ...
    ck.get(name)                    # float32 values: gguf-py's dequantization of that tensor's bytes
    ck.config                       # config.json for transformers, from the GGUF metadata
    ck.aux_files()                  # config.json and the tokenizer files, written on first use

What transformers' GGUF loader does (``from_pretrained(..., gguf_file=...)``): every type gguf-py dequantizes
(``gguf.quants.dequantize``; float32 out, F16 included), names and config through the table in
``gguf_names.py``, q/k rows of Llama/Mistral put back in rotate-half order. A tensor's bytes are read with one
positional read into its own buffer (never through the reader's memory map, whose touched pages would stay
in the process's resident set), so memory follows the largest tensor.

The tokenizer files are transformers' conversion of the GGUF vocabulary (``AutoTokenizer.from_pretrained(...,
gguf_file=...)``), made when an output needs them; without transformers only config.json is written.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from modelsurgeon.ops.core.errors import CheckpointError

from ..checkpoint import Checkpoint, Resolved, TensorInfo
from . import gguf_names
from . import view as _view
from .gguf_header import read_gguf_header

GGUF_MAGIC = b"GGUF"


def is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    if path.suffix.lower() == ".gguf":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


class GGUFCheckpoint(Checkpoint):
    """A GGUF file as a read-only, dequantizing checkpoint view (see the module docstring)."""

    kind = "gguf"
    source_format = "gguf"
    rewrite_config = True

    def __init__(self, resolved: Resolved):
        import threading

        import gguf

        path = resolved.path
        self.resolved = resolved
        self.label = resolved.label
        self.weight_files = [path]
        self.metadata = {}
        self._handles = {}
        self._torch_sd = {}
        self._lock = threading.Lock()
        self._aux: Path | None = None
        self._meta, entries = read_gguf_header(path)
        # our provenance (modelsurgeon.version, .command, .run), under the safetensors metadata names
        self.metadata = {
            "modelsurgeon_" + k.removeprefix("modelsurgeon."): str(v)
            for k, v in self._meta.items()
            if k.startswith("modelsurgeon.")
        }
        self.arch = gguf_names.architecture(self._meta, self.label)
        self.config = gguf_names.hf_config(self._meta, self.arch, [t.name for t in entries])
        self.source_quantization = {"quant_method": "gguf", "file_type": self._meta.get("general.file_type")}
        self._tensors: dict[str, tuple] = {}
        infos: dict[str, TensorInfo] = {}
        size = path.stat().st_size
        for t in entries:
            try:
                hf = gguf_names.hf_name(t.name)
            except KeyError:
                raise CheckpointError(
                    f"{self.label}: GGUF tensor {t.name} has no transformers name in the {self.arch} mapping",
                    f"supported architectures: {gguf_names.supported()} (their standard tensors only)",
                ) from None
            if hf is None:
                continue
            try:
                qtype = gguf.GGMLQuantizationType(t.ggml_type)
            except ValueError:
                raise CheckpointError(
                    f"{self.label}: {t.name} has ggml type {t.ggml_type}, unknown to gguf-py {gguf.__version__}"
                ) from None
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            if not t.shape or t.shape[-1] % block:
                raise CheckpointError(f"{self.label}: {t.name} {list(t.shape)} is not whole {qtype.name} blocks")
            n_bytes = math.prod(t.shape) // block * type_size
            if t.offset + n_bytes > size:
                raise CheckpointError(f"{path} is truncated: tensor {t.name} runs past the end", "re-download it")
            self._tensors[hf] = (t.name, qtype, t.shape, t.offset, n_bytes)
            infos[hf] = TensorInfo(hf, "F32", t.shape, path, t.offset, t.offset + n_bytes)
        self._infos = infos

    # --- what is stored
    @property
    def folder(self) -> Path:
        """A folder holding config.json and the tokenizer files (made on first use, removed on close)."""
        if self._aux is None:
            self._aux = Path(tempfile.mkdtemp(prefix="surgeon-gguf-"))
            (self._aux / "config.json").write_text(json.dumps(self.config, indent=2) + "\n")
            _write_tokenizer(self.resolved.path, self._aux)
        return self._aux

    def aux_files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def is_quantized(self, name: str) -> bool:
        t = self._tensors.get(name)
        return t is not None and t[1].name not in ("F32", "F16", "F64", "BF16")

    def describe(self, name: str) -> dict | None:
        t = self._tensors.get(name)
        if t is None:
            return None
        gname, qtype, shape, _, n_bytes = t
        return {
            "format": "gguf",
            "scheme": qtype.name,
            "parts": {"data": {"name": gname, "dtype": qtype.name, "shape": list(shape), "bytes": n_bytes}},
        }

    @property
    def stored_bytes(self) -> int:
        return sum(t[4] for t in self._tensors.values())

    # --- reading
    def get(self, name: str) -> torch.Tensor:
        import gguf

        self.info(name)
        gname, qtype, shape, offset, n_bytes = self._tensors[name]
        raw = np.frombuffer(self._read(self.resolved.path, offset, n_bytes), dtype=np.uint8)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        T = gguf.GGMLQuantizationType
        plain = {T.F32: np.float32, T.F16: np.float16, T.F64: np.float64}
        if qtype in plain:
            arr = raw.view(plain[qtype]).reshape(shape)
        else:
            arr = raw.reshape(*shape[:-1], shape[-1] // block * type_size)
        values = np.empty(shape, dtype=np.float32)
        rows = shape[0] if len(shape) > 1 else 1
        step = max(1, _view.CHUNK_ELEMS // max(1, math.prod(shape[1:]))) if len(shape) > 1 else 1
        try:
            if len(shape) == 1:
                values[:] = gguf.quants.dequantize(arr, qtype).reshape(shape)
            for r0 in range(0, rows if len(shape) > 1 else 0, step):  # a few rows at a time: bounded temporaries
                values[r0 : r0 + step] = gguf.quants.dequantize(arr[r0 : r0 + step], qtype)
        except NotImplementedError:
            raise CheckpointError(
                f"{self.label}: {gname} is stored as {qtype.name}, which gguf-py {gguf.__version__} cannot dequantize",
                "upgrade gguf, or convert the file with llama.cpp",
            ) from None
        heads = gguf_names.heads_for(self.arch, gname, self.config)
        if heads:
            values = gguf_names.unpermute_rows(values, heads)
        return torch.from_numpy(np.ascontiguousarray(values))

    def iter_chunks(self, name: str, max_elems: int = 1 << 24, align: int = 1) -> Iterator[torch.Tensor]:
        flat = self.get(name).reshape(-1)
        step = max(align, (max_elems // align) * align)
        for first in range(0, flat.numel(), step):
            yield flat[first : first + step]

    def close(self) -> None:
        super().close()
        if self._aux is not None:
            shutil.rmtree(self._aux, ignore_errors=True)
            self._aux = None


def _write_tokenizer(gguf_path: Path, folder: Path) -> None:
    """transformers' conversion of the GGUF vocabulary into tokenizer files, when transformers is installed."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return
    import contextlib
    import io
    import logging

    quiet = logging.getLogger("transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            tok.save_pretrained(str(folder))
    except Exception:  # transformers has no converter for this vocabulary: config.json alone is still written
        return
    finally:
        quiet.setLevel(level)
