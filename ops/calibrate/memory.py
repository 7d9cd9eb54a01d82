"""The C allocator's side of "memory follows one layer" (glibc only; elsewhere these do nothing).

A layer's weights and activations are blocks of megabytes, allocated and freed once per layer. glibc's default
mmap threshold is dynamic: after a first large block is freed it rises (up to 32 MiB), and later blocks are carved
from the heap, which keeps their pages resident once freed and fragments as layers come and go. Measured on a
synthetic 1024-wide Llama (benchmarks/RESULTS.md, "calibrated methods: peak memory"): without these, RSS crept up
by about one weight matrix per layer (32 layers peaked 263 MiB above 8). So the engine fixes the threshold at
1 MiB (every large block its own mapping, unmapped when freed; the cost, a page fault per large block, is small
beside a layer's compute) and trims the heap after each layer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc():
    """glibc (``malloc_trim``, ``mallopt``), or None (another C library, another OS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20


@functools.cache
def layer_sized_blocks_unmapped() -> None:
    """Every block of ``MMAP_THRESHOLD`` or more gets its own mapping, unmapped when freed (set once per process)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def release_freed_memory() -> None:
    """Return the heap's free pages to the OS (after each layer: what small blocks leave behind)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
