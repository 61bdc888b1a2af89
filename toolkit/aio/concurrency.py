"""The async forms of the few primitives whose two forms differ.

Async sources import these; the generated sync modules import the same
names from :mod:`toolkit.concurrency` (see ``tools/async_to_sync.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
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
