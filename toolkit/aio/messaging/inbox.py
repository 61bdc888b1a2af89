"""The consumers' inbox: a message applied once, however often it is delivered.

A handler records the message_id in the ``inbox`` table in the same
transaction as its database writes (:func:`record`). A redelivered message
finds its id taken and changes nothing; if the handler's transaction rolls
back, so does the record, and the next delivery applies it.
:func:`transactional` wraps a handler in exactly that.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING
from uuid import UUID

from toolkit.aio.db.database import AsyncConnection, AsyncDatabase
from toolkit.db.bind import Exec, Returning, Scalar
from toolkit.db.inputs import MAX_PRUNE_BATCH, check_count, check_retention, parse_id
from toolkit.messaging.inputs import check_consumer, check_queue
from toolkit.messaging.records import InboxEntry

if TYPE_CHECKING:
    from toolkit.messaging.consumer import AsyncHandler, Delivery

_record = Returning("inbox.record", InboxEntry, ("consumer", "message_id", "queue"))
_seen = Scalar("inbox.seen", bool, ("consumer", "message_id"))
_prune = Exec("inbox.prune", ("retention_seconds", "limit"))


async def record(tx: AsyncConnection, consumer: str, message_id: UUID | str, queue: str) -> bool:
    """Record that ``consumer`` applies ``message_id``; False if it already had.

    Call it first inside the handler's transaction and skip the effect when
    it returns False.
    """
    entry = await _record.acall(
        tx,
        consumer=check_consumer(consumer),
        message_id=parse_id(message_id, "message_id"),
        queue=check_queue(queue),
    )
    return entry is not None


async def seen(conn: AsyncConnection, consumer: str, message_id: UUID | str) -> bool:
    """Whether ``consumer`` already applied ``message_id``."""
    return bool(
        await _seen.acall(
            conn, consumer=check_consumer(consumer), message_id=parse_id(message_id, "message_id")
        )
    )


async def prune(conn: AsyncConnection, retention: timedelta, *, limit: int = 10_000) -> int:
    """Forget up to ``limit`` entries older than ``retention`` (keep it longer than any
    redelivery can take); returns how many."""
    return await _prune.acall(
        conn,
        retention_seconds=check_retention(retention),
        limit=check_count(limit, "limit", MAX_PRUNE_BATCH),
    )


def transactional(
    db: AsyncDatabase,
    consumer: str,
    apply: Callable[[AsyncConnection, Delivery], Awaitable[None]],
) -> AsyncHandler:
    """A handler that runs ``apply(tx, delivery)`` once per message_id.

    The inbox record and everything ``apply`` writes commit together; a
    duplicate delivery commits nothing and is acknowledged.
    """
    name = check_consumer(consumer)

    async def handle(delivery: Delivery) -> None:
        async with db.transaction() as tx:
            if not await record(tx, name, delivery.message_id, delivery.queue):
                delivery.duplicate = True
                return
            await apply(tx, delivery)

    return handle
