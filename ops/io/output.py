"""Where a command's result goes: the atomic output folder or file, and the write flow that fills it.

    out = Output(path, force, max_shard_size)          # plan: out.check(inputs=[...]) refuses a bad OUT first
    ...validate everything...
    specs = [TensorSpec(name, shape, dtype), ...]      # plan: every output tensor, in order
    write_folder(out, specs, produce(), source=ck, command=cmd, ...)   # run: stream, finalize, rename

The rules, which every command that writes gets from here (the README's Outputs section states them):

- OUT may not be an input (a folder, or any file read: weights, index, config, tokenizer) nor contain one
  (``check_target``), so no file inside an input can be replaced; ``-o .`` is the folder it names, and
  ``/`` is refused.
- An existing OUT is refused unless ``--force``, and ``--force`` replaces only what is recognisably an
  earlier output of modelsurgeon (``foreign``): an empty folder, or weight files carrying our provenance
  (``modelsurgeon_version`` in safetensors ``__metadata__``, ``modelsurgeon.version`` in a GGUF, our
  ``Software`` text in a PNG) with only the files our commands write beside them. Anything else is refused,
  naming what would be deleted.
- Everything is written into a hidden temporary folder beside OUT (``.NAME.tmp-PID-XXXXXX``, with a marker
  file holding the owner's pid), which becomes OUT by one rename when everything succeeded; an error,
  Ctrl-C or SIGTERM removes it. A temporary folder left by a killed run is removed by the next run to the
  same OUT, with a note.
- An exclusive lock (``flock`` on ``.NAME.lock`` beside OUT) is held from the start of the writing to the
  end, so a second run to the same OUT fails at once instead of racing. At the rename, under the lock, the
  existence check is repeated: an OUT that appeared meanwhile is refused (or, with --force, checked
  again); an old OUT is moved aside and removed only once the new one is in place.
- Free space is checked against the size about to be written before the first byte, and a full disk, a
  read-only file system or a permission error while writing is one line (``core.errors.write_error``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modelsurgeon.ops.core.errors import SurgeonError, SurgeonNote, write_error
from modelsurgeon.ops.core.units import fmt_bytes

from .checkpoint import AUX_FILES, Checkpoint, read_safetensors_header
from .writer import ShardedWriter, TensorSpec, copy_aux_files, parse_size, provenance

DEFAULT_MAX_SHARD = "5GB"
MARKER = ".modelsurgeon-tmp"  # inside every temporary folder: {"pid": ..., "target": ...}
PNG_SOFTWARE = "modelsurgeon"  # the PNG text chunk ``Software`` of our plots starts with this
GGUF_KEY = "modelsurgeon.version"  # the GGUF metadata key our GGUF files carry
# Files our commands write beside the weights (besides AUX_FILES copied from the source).
COMPANION_FILES = frozenset(
    {*AUX_FILES, "model.safetensors.index.json", "adapter_config.json", "mergekit_config.yml", "README.md", MARKER}
)
_SCAN_LIMIT = 10_000  # entries looked at before a folder is called not ours
COMMITTED: list[Path] = []  # outputs put in place by this process (the CLI names them if interrupted after)


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


@dataclass(frozen=True)
class Output:
    """Where to write and how: the path, whether an earlier output may be replaced, the shard size, and the
    inputs it may not touch (given to ``check``)."""

    path: Path
    force: bool = False
    max_shard_size: int = 5 * 10**9
    inputs: list[Path] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def of(cls, path: str | Path, force: bool = False, max_shard_size: str | int = DEFAULT_MAX_SHARD) -> Output:
        return cls(Path(path), force, parse_size(max_shard_size))

    def check(self, kind: str = "dir", inputs: Iterable[str | Path] = (), expected_bytes: int | None = None) -> None:
        """Refuse now, before any work, what the final rename would refuse. ``inputs`` are the files and
        folders the command reads (kept for the checks at write time); ``expected_bytes`` is checked
        against the free space."""
        self.inputs.extend(Path(p) for p in inputs)
        check_target(self.path, kind, self.force, self.inputs)
        check_writable(self.path, expected_bytes)

    def folder(self, expected_bytes: int | None = None) -> OutputDir:
        return OutputDir(self.path, self.force, self.inputs, expected_bytes)

    def file(self, expected_bytes: int | None = None) -> OutputFile:
        return OutputFile(self.path, self.force, self.inputs, expected_bytes)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold OUT's lock around work that comes before the writing (a statistics pass, a search)."""
        with output_lock(self.path):
            yield


# --------------------------------------------------------------------------------------------
# the checks


def check_target(target: str | Path, kind: str, force: bool, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse an OUT that is or holds an input, that exists without --force, or that --force would delete
    although modelsurgeon did not write it."""
    shown = str(target)
    real = _real(target)
    if real == real.parent or real.name in ("", ".", ".."):
        raise SurgeonError(f"output {shown} is the root of the file system", "give a folder or file to create")
    for given in inputs:
        inp = _real(given)
        if real == inp or _same(real, inp):
            raise SurgeonError(f"output {shown} is the input {given}", "write the result elsewhere with -o")
        if real in inp.parents:
            raise SurgeonError(f"output {shown} contains the input {given}", "write the result elsewhere with -o")
    if not os.path.lexists(real):
        return
    if kind == "dir" and not real.is_dir():
        raise SurgeonError(f"output {shown} exists and is not a folder", "remove it or pick another -o")
    if kind == "file" and real.is_dir():
        raise SurgeonError(f"output {shown} is a folder", "give a file name")
    if not force:
        raise SurgeonError(f"output {shown} already exists", "pass --force to replace it, or pick another -o")
    strangers = foreign(real)
    if strangers:
        more = f" and {len(strangers) - 3} more" if len(strangers) > 3 else ""
        names = ", ".join(strangers[:3]) + more
        raise SurgeonError(
            f"--force would delete {shown}, which is not an output of modelsurgeon ({names})",
            "move it away or pick another -o; --force only replaces an earlier output of modelsurgeon or an empty folder",
        )


def local_inputs(*specs) -> list[Path]:
    """The inputs among what the user typed that are local paths (a Hub id is not): for the first check of
    OUT, before the inputs are opened."""
    return [Path(s).expanduser() for s in specs if s is not None and os.path.exists(os.path.expanduser(str(s)))]


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_writable(target: str | Path, expected_bytes: int | None = None) -> None:
    """The folder OUT goes in (or its nearest existing ancestor) is a writable folder with room for
    ``expected_bytes``."""
    real = _real(target)
    anc = real.parent
    while not os.path.lexists(anc) and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise SurgeonError(f"cannot write {target}: {anc} is not a folder", "pick another -o")
    try:
        st = os.statvfs(anc)
    except OSError:
        return
    if st.f_flag & os.ST_RDONLY:
        raise SurgeonError(f"cannot write {target}: {anc} is on a read-only file system", "write elsewhere with -o")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise SurgeonError(f"cannot write {target}: no permission to write in {anc}", "write elsewhere with -o")
    if expected_bytes is not None:
        check_space(anc, expected_bytes, target)


def check_space(folder: Path, need: int, target) -> None:
    try:
        st = os.statvfs(folder)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if need + (16 << 20) > free:
        raise SurgeonError(
            f"not enough free space for {target}: it needs about {fmt_bytes(need)} and {folder} has {fmt_bytes(free)} free",
            "free some space, or write elsewhere with -o",
        )


# --------------------------------------------------------------------------------------------
# what --force may replace


def foreign(path: Path) -> list[str]:
    """What in ``path`` modelsurgeon did not write (relative names); empty when it is an earlier output
    of ours or an empty folder."""
    if path.is_symlink():
        return [path.name]
    if not path.is_dir():
        return [] if _ours_file(path) else [path.name]
    strangers: list[str] = []
    weights = 0
    seen = 0
    for root, dirs, files in os.walk(path):
        rel = Path(root).relative_to(path)
        depth = len(rel.parts)
        for d in list(dirs):
            sub = Path(root) / d
            # sentence-transformers module folders (1_Pooling/config.json) are copied from the source
            if depth > 0 or sub.is_symlink() or not (d[:1].isdigit() and "_" in d):
                strangers.append((rel / d).as_posix() + "/")
                dirs.remove(d)
        for f in files:
            seen += 1
            if seen > _SCAN_LIMIT:
                return strangers + [f"more than {_SCAN_LIMIT} files"]
            p = Path(root) / f
            name = (rel / f).as_posix()
            if p.is_symlink():
                strangers.append(name)
            elif f.endswith((".safetensors", ".gguf")):
                if _ours_file(p):
                    weights += 1
                else:
                    strangers.append(name)
            elif not (f in COMPANION_FILES or f.endswith("_recipe.yaml")):
                strangers.append(name)
    if strangers:
        return strangers
    if weights == 0 and any(path.iterdir()):
        return ["no weight file written by modelsurgeon"]
    return []


def _ours_file(path: Path) -> bool:
    """A weight file, GGUF or plot that modelsurgeon wrote (its provenance says so)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    if head[:4] == b"GGUF":
        return _ours_gguf(path)
    if head == b"\x89PNG\r\n\x1a\n":
        return _ours_png(path)
    try:
        _, meta = read_safetensors_header(path)
    except SurgeonError:
        return False
    return "modelsurgeon_version" in meta


def _ours_gguf(path: Path) -> bool:
    try:  # the header only: gguf-py's GGUFReader takes seconds over a 49k-token vocabulary
        from .quantized.gguf_header import read_gguf_header

        return GGUF_KEY in read_gguf_header(path)[0]
    except Exception:  # a malformed file is not ours
        return False


def _ours_png(path: Path) -> bool:
    """A ``tEXt`` chunk ``Software`` starting with "modelsurgeon" among the chunks before the image data."""
    try:
        with open(path, "rb") as f:
            f.read(8)
            for _ in range(64):
                head = f.read(8)
                if len(head) < 8:
                    return False
                n, kind = int.from_bytes(head[:4], "big"), head[4:]
                if kind == b"IDAT" or n > 1 << 20:
                    return False
                data = f.read(n)
                f.read(4)
                if kind == b"tEXt" and data.startswith(b"Software\0" + PNG_SOFTWARE.encode()):
                    return True
    except OSError:
        return False
    return False


# --------------------------------------------------------------------------------------------
# the lock


_LOCKS: dict[Path, list] = {}  # real OUT -> [fd, lock file, depth]: re-entrant within this process
_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def output_lock(target: str | Path) -> Iterator[None]:
    """Hold the exclusive lock on OUT (``.NAME.lock`` beside it); another process holding it fails at once."""
    real = _real(target)
    with _LOCKS_GUARD:
        held = _LOCKS.get(real)
        if held is not None:
            held[2] += 1
        else:
            _LOCKS[real] = [*_acquire(real, target), 1]
    try:
        yield
    finally:
        with _LOCKS_GUARD:
            held = _LOCKS[real]
            held[2] -= 1
            if held[2] == 0:
                del _LOCKS[real]
                _release(held[0], held[1])


def _acquire(real: Path, shown) -> tuple[int, Path]:
    import fcntl

    try:
        real.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(e, shown) or SurgeonError(f"cannot create the folder of {shown}: {e.strerror}") from None
    lock = real.parent / f".{real.name}.lock"
    for _ in range(100):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise write_error(e, shown) or SurgeonError(f"cannot lock {shown}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            owner = _read_pid(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                who = f" (pid {owner})" if owner else ""
                raise SurgeonError(
                    f"another surgeon run{who} is writing {shown} right now", "wait for it to finish, or pick another -o"
                ) from None
            raise SurgeonError(f"cannot lock {shown}: {e.strerror}") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder before us removed the file between our open and our lock: try again
            os.close(fd)
            continue
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        return fd, lock
    raise SurgeonError(f"cannot lock {shown}: its lock file keeps changing", "is another program removing it?")


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _release(fd: int, lock: Path) -> None:
    with contextlib.suppress(OSError):
        lock.unlink()  # while still holding it, so nobody locks a file that is about to vanish
    os.close(fd)


# --------------------------------------------------------------------------------------------
# temporary folders


def _make_temp(real: Path, shown) -> Path:
    """A fresh hidden folder beside OUT with the marker that names its owner."""
    tmp = real.parent / f".{real.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        tmp.mkdir()
        (tmp / MARKER).write_text(json.dumps({"pid": os.getpid(), "target": real.name}) + "\n")
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(e, shown) or SurgeonError(f"cannot create the output folder {shown}: {e.strerror}") from None
    return tmp


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def clean_stale(real: Path) -> list[Path]:
    """Remove temporary folders of OUT left by killed runs (marker present, owner pid gone); call it under
    OUT's lock. Each one removed is reported as a note."""
    removed = []
    prefixes = (f".{real.name}.tmp-", f".{real.name}.old-")
    try:
        entries = list(real.parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        if not p.name.startswith(prefixes) or p.is_symlink() or not p.is_dir():
            continue
        try:
            owner = json.loads((p / MARKER).read_text())
            pid = int(owner["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not ours (no marker): left alone
        if pid == os.getpid() or _alive(pid):
            continue
        if p.name.startswith(prefixes[1]) and not os.path.lexists(real):
            continue  # an old output moved aside whose replacement never arrived: keep it for the user
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
        warnings.warn(f"removed {p}, left behind by an earlier run (pid {pid}) that was killed", SurgeonNote, stacklevel=2)
    return removed


class _Atomic:
    """What the atomic folder and file share: the checks, the lock, the temporary folder, the errors."""

    kind = "dir"

    def __init__(self, target: str | Path, force: bool = False, inputs: Iterable = (), expected_bytes: int | None = None):
        self.target = Path(target)
        self.real = _real(target)
        self.force = force
        self.inputs = list(inputs)
        self.expected_bytes = expected_bytes
        check_target(self.target, self.kind, force, self.inputs)
        self.tmp = self.real.parent / f".{self.real.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}"
        self._done = False
        self._lock: contextlib.ExitStack | None = None

    def _enter(self) -> None:
        stack = contextlib.ExitStack()
        stack.enter_context(output_lock(self.target))
        try:
            clean_stale(self.real)
            check_target(self.target, self.kind, self.force, self.inputs)  # again, now under the lock
            check_writable(self.target, self.expected_bytes)
            self.tmp = _make_temp(self.real, self.target)
        except BaseException:
            stack.close()
            raise
        self._lock = stack

    def _exit(self, exc) -> None:
        try:
            if not self._done:
                shutil.rmtree(self.tmp, ignore_errors=True)
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None
        if isinstance(exc, OSError) and self._ours(exc.filename):
            err = write_error(exc, self.target)
            if err is not None:
                raise err from None

    def _ours(self, filename) -> bool:
        """Whether an OSError is about the output (a write has no file name; an open names it)."""
        if filename is None:
            return True
        real = _real(os.fsdecode(filename))
        mine = (self.real, _real(self.tmp), self.real.parent)
        return real in mine or any(p in real.parents for p in mine[:2])

    def _check_at_rename(self) -> bool:
        """Under the lock, just before the rename: whether OUT exists now (and may be replaced)."""
        if not os.path.lexists(self.real):
            return False
        if not self.force:
            raise SurgeonError(
                f"output {self.target} appeared while this run was writing it; nothing was replaced",
                "pick another -o, or pass --force to replace an earlier output of modelsurgeon",
            )
        check_target(self.target, self.kind, self.force, self.inputs)
        return True


class OutputDir(_Atomic):
    """A temporary folder beside ``target`` that becomes ``target`` on commit, or vanishes."""

    kind = "dir"

    @property
    def path(self) -> Path:
        return self.tmp

    def __enter__(self) -> OutputDir:
        self._enter()
        return self

    def commit(self) -> Path:
        """Move the finished folder into place; an old output is moved aside first and removed only after."""
        old = None
        if self._check_at_rename():
            old = self.real.parent / f".{self.real.name}.old-{os.getpid()}-{secrets.token_hex(3)}"
            os.rename(self.real, old)
            with contextlib.suppress(OSError):  # so a run killed right now leaves it recognisable
                (old / MARKER).write_text(json.dumps({"pid": os.getpid(), "target": self.real.name}) + "\n")
        try:
            os.rename(self.tmp, self.real)  # onto a path that does not exist (or an empty folder) only
        except OSError as e:
            if old is not None:
                with contextlib.suppress(OSError):
                    (old / MARKER).unlink()
                    os.rename(old, self.real)
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise SurgeonError(
                    f"output {self.target} appeared while this run was writing it; nothing was replaced", "pick another -o"
                ) from None
            raise
        self._done = True
        COMMITTED.append(self.target)
        with contextlib.suppress(OSError):
            (self.real / MARKER).unlink()
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.target

    def __exit__(self, exc_type, exc, tb) -> None:
        self._exit(exc)


class OutputFile(_Atomic):
    """The same promise for a single output file (a GGUF, a subspace file, a plot): ``path`` is the
    temporary file to write (inside the temporary folder), ``commit`` puts it in place."""

    kind = "file"

    @property
    def path(self) -> Path:
        return self.tmp / self.real.name

    def __enter__(self) -> OutputFile:
        self._enter()
        return self

    def commit(self) -> Path:
        if self._check_at_rename():
            os.replace(self.path, self.real)  # atomic: the old file is gone only as the new one arrives
        else:
            try:
                os.link(self.path, self.real)  # fails if a file appeared meanwhile: never replaced silently
            except FileExistsError:
                raise SurgeonError(
                    f"output {self.target} appeared while this run was writing it; nothing was replaced", "pick another -o"
                ) from None
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
                os.rename(self.path, self.real)  # a file system without hard links
        self._done = True
        COMMITTED.append(self.target)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return self.target

    def __exit__(self, exc_type, exc, tb) -> None:
        self._exit(exc)


# --------------------------------------------------------------------------------------------
# the write flow


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
    expected = sum(s.nbytes for s in specs) + 1024 * (len(specs) + 1)
    if source is not None:
        expected += sum(_file_size(f) for f in source.aux_files())
    expected += sum(len(c) if isinstance(c, (str, bytes)) else 4096 for c in (extra_files or {}).values())
    if isinstance(out, Output):
        max_shard_size = out.max_shard_size if max_shard_size is None else max_shard_size
        out = out.folder(expected)
    elif out.expected_bytes is None:
        out.expected_bytes = expected
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


def _file_size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0
