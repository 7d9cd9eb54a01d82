"""How much memory this process may still allocate, so sizes that come from files or searches are checked
before anything is allocated (``intrinsic-dim``'s search stops doubling d when the next run would not fit).

``available_bytes()`` is the smallest of: the system's MemAvailable (``/proc/meminfo``), the room left under
the cgroup's ``memory.max`` (containers, CI runners) and under ``RLIMIT_AS`` (``ulimit -v``). Where none
can be read (not Linux), it is None and callers skip the check. Imports no torch.
"""

from __future__ import annotations

import os
import resource


def _meminfo(key: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    try:
        with open("/proc/self/cgroup") as f:
            rel = next((line.strip().split(":", 2)[2] for line in f if line.startswith("0::")), None)
        if rel is None:
            return None
        base = "/sys/fs/cgroup" + rel.rstrip("/")
        with open(base + "/memory.max") as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open(base + "/memory.current") as f:
            used = int(f.read().strip())
        return max(int(limit) - used, 0)
    except (OSError, ValueError, StopIteration, IndexError):
        return None


def _address_space_room() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
    return max(soft - size, 0)


def available_bytes() -> int | None:
    """Bytes this process can still allocate, as far as can be told; None when nothing is known."""
    known = [v for v in (_meminfo("MemAvailable"), _cgroup_room(), _address_space_room()) if v is not None]
    return min(known) if known else None
