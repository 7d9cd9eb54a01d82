"""Long computations that stop within a second of Ctrl-C (or SIGTERM), whatever torch op is running.

Python runs a signal handler only between bytecodes of the main thread, so a single long torch op (a
projection of a few GB being built, a big matmul) delays Ctrl-C until it returns, which can take many
seconds. ``interruptible(fn, ...)`` runs ``fn`` on a daemon worker thread and waits for it in short steps:
the main thread stays responsive, so the interrupt is raised within ``POLL`` seconds. The worker is told
to stop (``cancelled()`` turns true; loops that call ``check_cancelled()`` raise at their next step) and,
being a daemon, never keeps the process alive. Only for work that writes nothing: a command's output is
written on the main thread, where unwinding removes its temporary files.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
POLL = 0.1  # seconds between looks at the worker: the bound on how late an interrupt is seen

_cancel = threading.local()


class Cancelled(BaseException):
    """Raised in a worker whose caller was interrupted (never seen by the user)."""


def cancelled() -> bool:
    """Whether the caller of the running ``interruptible`` call has been interrupted."""
    ev = getattr(_cancel, "event", None)
    return ev is not None and ev.is_set()


def check_cancelled() -> None:
    if cancelled():
        raise Cancelled


def interruptible(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` on a worker thread; its result or its exception, or the interrupt that
    arrived meanwhile (the worker is then told to stop and left to finish as a daemon)."""
    if threading.current_thread() is not threading.main_thread():
        return fn(*args, **kwargs)  # signals only reach the main thread: nothing to gain elsewhere
    event = threading.Event()
    box: dict = {}

    def work() -> None:
        _cancel.event = event
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the caller
            box["error"] = e

    t = threading.Thread(target=work, name="modelsurgeon-work", daemon=True)
    t.start()
    try:
        while t.is_alive():
            t.join(POLL)
    except BaseException:
        event.set()
        raise
    if "error" in box:
        raise box["error"]
    return box["value"]
