"""The sync forms of the few primitives whose two forms differ.

The generated sync modules import these where their async sources import
:mod:`toolkit.aio.concurrency` (see ``tools/async_to_sync.py``).
"""

from __future__ import annotations

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
