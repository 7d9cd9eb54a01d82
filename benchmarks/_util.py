"""Shared benchmark plumbing: run a command in a child process and measure wall time and peak RSS."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

WORK = Path(__file__).resolve().parent / "work"


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(proc.pid, 0)
    dt = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{cmd} failed ({code}): {err[-2000:]}")
    return dt, usage.ru_maxrss / 1024


# a child that exits 1 unless every argument (a .safetensors file or a folder of them) holds the same tensors as the
# first: the check that a command gives one result on every device (metadata such as the command line may differ)
SAME_TENSORS = r"""
import sys
from pathlib import Path
from safetensors.torch import load_file
def tensors(p):
    p = Path(p)
    out = {}
    for f in sorted(p.glob("*.safetensors")) if p.is_dir() else [p]:
        out.update(load_file(str(f)))
    return out
first = tensors(sys.argv[1])
for p in sys.argv[2:]:
    other = tensors(p)
    if other.keys() != first.keys() or not all(first[k].equal(other[k]) for k in first):
        sys.exit(f"{p} holds other tensors than {sys.argv[1]}")
"""


def python_snippet(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def machine() -> str:
    """CPU, cores and versions. Asks a child for torch's version: this process must stay small,
    because a forked child inherits the parent's peak RSS in ru_maxrss."""
    tv = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True
    ).stdout.strip()
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB, torch {tv}, Python {platform.python_version()}"


def best_of(n: int, fn) -> tuple[float, float]:
    runs = [fn() for _ in range(n)]
    return min(r[0] for r in runs), max(r[1] for r in runs)
