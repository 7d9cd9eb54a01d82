"""Streaming helpers every command shares: read-ahead, an ordered worker pool, and the CPU thread policy.

Three tools, one policy:

- ``prefetched(it)`` runs an iterator on a background thread a few items ahead of the caller (reads and
  writes release the GIL, so I/O overlaps the math);
- ``ordered_map(fn, items)`` applies ``fn`` on the shared worker pool and yields the results in input
  order, with a bounded number in flight (so memory stays bounded by the window);
- ``cpu_threads()`` is the thread policy: while a command streams, torch's intra-op pool leaves one core
  for the reader and writer threads, unless ``OMP_NUM_THREADS`` says otherwise.

The worker pool is one process-wide set of threads with one intra-op torch thread each: torch's own
intra-op threads meet at a barrier in every operation, and on a busy machine one descheduled thread
stalls them all (small-chunk streaming was measured 8x slower that way than on single-threaded workers).
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()


def worker_pool() -> ThreadPoolExecutor:
    """The shared pool: as many workers as torch has intra-op threads now, each running one itself."""
    global _POOL, _POOL_SIZE
    want = max(1, torch.get_num_threads())
    with _POOL_LOCK:
        if _POOL is None or _POOL_SIZE < want:
            _POOL = ThreadPoolExecutor(
                want, thread_name_prefix="surgeon-worker", initializer=torch.set_num_threads, initargs=(1,)
            )
            _POOL_SIZE = want
        return _POOL


def default_workers() -> int:
    return max(1, torch.get_num_threads())


def ordered_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    workers: int | None = None,
    window: int | None = None,
) -> Iterator[R]:
    """``fn(item)`` for every item, computed on the worker pool, yielded in input order.

    At most ``window`` (default ``workers``) results are in flight, so ``items`` is consumed lazily and
    memory follows the window. With ``workers=1`` everything runs on the caller's thread, in order.
    An exception in ``fn`` is raised at its position; the remaining work is cancelled.
    """
    workers = default_workers() if workers is None else max(1, workers)
    if workers == 1:
        for item in items:
            yield fn(item)
        return
    window = max(workers, window or workers)
    pool = worker_pool()
    pending: deque[Future] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()
        for f in pending:
            if not f.cancelled():
                try:
                    f.result()
                except BaseException:
                    pass


def map_in_order(fn: Callable[[T], R], items: Iterable[T], device: torch.device | str = "cpu") -> list[R]:
    """``[fn(x) for x in items]``, on the worker pool for CPU work (a GPU runs one stream: in order here)."""
    items = list(items)
    if torch.device(device).type != "cpu" or len(items) <= 1:
        return [fn(x) for x in items]
    return list(ordered_map(fn, items, window=len(items)))


def prefetched(
    it: Iterable[T],
    depth: int = 2,
    costs: list[int] | None = None,
    budget: float | None = None,
    worker_threads: int | None = None,
) -> Iterator[T]:
    """Run ``it`` on a background thread, up to ``depth`` items ahead of the caller (file reads release
    the GIL). With ``costs`` (bytes per item) and a ``budget``, item k+1 is produced while the caller
    holds item k only if both fit in the budget together; otherwise only once the caller is done with k.
    ``worker_threads`` sets torch's intra-op threads in the worker (1 when the caller runs its own pool)."""
    it = iter(it)
    q: queue.Queue = queue.Queue()
    permits = threading.Semaphore(depth)
    stop = threading.Event()
    done = object()

    def work():
        if worker_threads is not None:
            torch.set_num_threads(worker_threads)
        try:
            while True:
                permits.acquire()
                if stop.is_set():
                    return
                try:
                    item = next(it)
                except StopIteration:
                    q.put(done)
                    return
                q.put(item)
        except BaseException as e:  # hand the error to the consumer
            q.put(e)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    k = 0
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            early = costs is None or budget is None or k + 1 >= len(costs) or costs[k] + costs[k + 1] <= budget
            if early:
                permits.release()
            yield item
            del item
            if not early:
                permits.release()
            k += 1
    finally:
        stop.set()
        permits.release()
        t.join(timeout=5)


@contextmanager
def cpu_threads(leave_for_io: int = 1) -> Iterator[int]:
    """The thread policy while a command streams: torch's intra-op pool takes the cores minus
    ``leave_for_io`` (reading and writing run on their own threads; on 2 cores a second pool thread
    would only wait for a descheduled partner). ``OMP_NUM_THREADS`` wins. The previous setting comes
    back afterwards, so a library caller's process is left as it was. Yields the thread count."""
    before = torch.get_num_threads()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, min(before, (os.cpu_count() or 2) - leave_for_io)))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
