"""The async forms of the few primitives whose two forms differ.

Async sources import these; the generated sync modules import the same
names from :mod:`toolkit.concurrency` (see ``tools/async_to_sync.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

ASYNC = True
"""True here: ``if ASYNC:`` blocks hold the few lines only the async form runs."""

sleep = asyncio.sleep
"""Suspend the task for a number of seconds."""

Event = asyncio.Event

Lock = asyncio.Lock
"""A mutual-exclusion lock for tasks (bound to a loop only when first waited on)."""


async def run_blocking(fn: Callable[..., T], /, *args: Any) -> T:
    """``fn(*args)`` in a worker thread, so the event loop goes on meanwhile.

    For CPU work that releases the GIL (zlib, hashing) or gives it up often
    (a scan in small steps); a single long stretch under the GIL would still
    hold up the loop.
    """
    return await asyncio.to_thread(fn, *args)


_log = logging.getLogger("toolkit.concurrency")


class Stopping:
    """The cue :func:`stop` gives a spawned function to end; it is passed as fn's first argument."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        """Ask the function to end (what :func:`stop` does first)."""
        self._event.set()

    def is_set(self) -> bool:
        """True once stopping was asked for."""
        return self._event.is_set()

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds: True as soon as stopping is asked for, else False."""
        if self._event.is_set():
            return True
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        return True


class Worker:
    """A function running in the background: an asyncio task here, a thread in the sync API."""

    def __init__(self, name: str, stopping: Stopping, task: asyncio.Task[object]) -> None:
        self.name = name
        self.stopping = stopping
        self._task = task

    def done(self) -> bool:
        """True once the function has returned, raised or been cancelled."""
        return self._task.done()

    def _error(self) -> BaseException | None:
        """What the ended function raised (None if it returned or was cancelled)."""
        return None if self._task.cancelled() else self._task.exception()

    def __repr__(self) -> str:
        state = "done" if self.done() else "running"
        return f"{type(self).__name__}(name={self.name!r}, {state})"


def spawn(fn: Callable[..., Awaitable[object]], /, *args: Any, name: str) -> Worker:
    """Run ``fn(stopping, *args)`` as a task on the running loop (a daemon thread in sync).

    ``stopping`` is the worker's :class:`Stopping`: fn waits on it between
    steps and ends once it is set. :func:`stop` sets it; :func:`wait` waits
    for the end and re-raises what fn raised.
    """
    stopping = Stopping()

    async def run() -> object:
        return await fn(stopping, *args)

    return Worker(name, stopping, asyncio.get_running_loop().create_task(run(), name=name))


async def wait(worker: Worker, timeout: float | None = None) -> bool:
    """Wait up to ``timeout`` seconds (None: no limit) for ``worker`` to end.

    True once it has ended, False if it still runs. An exception fn ended
    with is raised here (each time); a cancelled worker has simply ended.
    Cancelling the caller does not cancel the worker.
    """
    if not worker.done():
        await asyncio.wait({worker._task}, timeout=timeout)
    if not worker.done():
        return False
    error = worker._error()
    if error is not None:
        raise error
    return True


async def stop(worker: Worker, timeout: float) -> bool:
    """Ask ``worker`` to end and wait up to ``timeout`` seconds for it; True once it has ended.

    Past the timeout the async API cancels the task (and waits as long
    again); the sync API cannot end a thread, which stays, a daemon, until
    fn notices. Called in clean-up code, it never raises fn's exception
    (that would hide the caller's own): it logs it. :func:`wait` raises it.
    """
    worker.stopping.set()
    if not worker.done():
        await asyncio.wait({worker._task}, timeout=timeout)
    if not worker.done():
        worker._task.cancel()
        await asyncio.wait({worker._task}, timeout=timeout)
    if not worker.done():
        return False
    error = worker._error()
    if error is not None:
        _log.error("background worker %s failed", worker.name, exc_info=error)
    return True
