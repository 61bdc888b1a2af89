"""The async forms of the few primitives whose two forms differ.

Async sources import these; the generated sync modules import the same
names from :mod:`toolkit.concurrency` (see ``tools/async_to_sync.py``).
"""

from __future__ import annotations

import asyncio

ASYNC = True
"""True here: ``if ASYNC:`` blocks hold the few lines only the async form runs."""

sleep = asyncio.sleep
"""Suspend the task for a number of seconds."""

Event = asyncio.Event
