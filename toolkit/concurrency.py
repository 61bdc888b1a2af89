"""The sync forms of the few primitives whose two forms differ.

The generated sync modules import these where their async sources import
:mod:`toolkit.aio.concurrency` (see ``tools/async_to_sync.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

ASYNC = False
"""False here, True in :mod:`toolkit.aio.concurrency`."""

sleep = time.sleep
"""Block the thread for a number of seconds."""

Event = threading.Event

Lock = threading.Lock
"""A mutual-exclusion lock for threads."""


def run_blocking(fn: Callable[..., T], /, *args: Any) -> T:
    """``fn(*args)``, here in the calling thread (a worker thread in the async API)."""
    return fn(*args)


_log = logging.getLogger("toolkit.concurrency")


class Stopping:
    """The cue :func:`stop` gives a spawned function to end; it is passed as fn's first argument."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        """Ask the function to end (what :func:`stop` does first)."""
        self._event.set()

    def is_set(self) -> bool:
        """True once stopping was asked for."""
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds: True as soon as stopping is asked for, else False."""
        return self._event.wait(timeout)


class Worker:
    """A function running in the background: a daemon thread here, an asyncio task in async."""

    def __init__(self, name: str, stopping: Stopping, thread: threading.Thread) -> None:
        self.name = name
        self.stopping = stopping
        self._thread = thread
        self._raised: BaseException | None = None

    def done(self) -> bool:
        """True once the function has returned or raised."""
        return not self._thread.is_alive()

    def _error(self) -> BaseException | None:
        """What the ended function raised (None if it returned)."""
        return self._raised

    def __repr__(self) -> str:
        state = "done" if self.done() else "running"
        return f"{type(self).__name__}(name={self.name!r}, {state})"


def spawn(fn: Callable[..., object], /, *args: Any, name: str) -> Worker:
    """Run ``fn(stopping, *args)`` on a daemon thread (a task on the running loop in async).

    ``stopping`` is the worker's :class:`Stopping`: fn waits on it between
    steps and ends once it is set. :func:`stop` sets it; :func:`wait` waits
    for the end and re-raises what fn raised.
    """
    stopping = Stopping()

    def run() -> None:
        try:
            fn(stopping, *args)
        except BaseException as exc:  # kept for wait()/stop(), as a task keeps its exception
            worker._raised = exc

    worker = Worker(name, stopping, threading.Thread(target=run, name=name, daemon=True))
    worker._thread.start()
    return worker


def wait(worker: Worker, timeout: float | None = None) -> bool:
    """Wait up to ``timeout`` seconds (None: no limit) for ``worker`` to end.

    True once it has ended, False if it still runs. An exception fn ended
    with is raised here (each time).
    """
    worker._thread.join(timeout)
    if not worker.done():
        return False
    error = worker._error()
    if error is not None:
        raise error
    return True


def stop(worker: Worker, timeout: float) -> bool:
    """Ask ``worker`` to end and wait up to ``timeout`` seconds for it; True once it has ended.

    Past the timeout the async API cancels the task (and waits as long
    again); the sync API cannot end a thread, which stays, a daemon, until
    fn notices. Called in clean-up code, it never raises fn's exception
    (that would hide the caller's own): it logs it. :func:`wait` raises it.
    """
    worker.stopping.set()
    worker._thread.join(timeout)
    if not worker.done():
        return False
    error = worker._error()
    if error is not None:
        _log.error("background worker %s failed", worker.name, exc_info=error)
    return True
