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

Lock = asyncio.Lock
Event = asyncio.Event


async def to_thread(fn: Callable[..., T], /, *args: Any) -> T:
    """Run blocking ``fn`` in the default executor's thread, so the event loop goes on."""
    return await asyncio.to_thread(fn, *args)
