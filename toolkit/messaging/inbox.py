# Generated from toolkit/aio/messaging/inbox.py by tools/async_to_sync.py: do not edit.
# Edit the async source and run `tox -e generate`.
"""The consumers' inbox: a message applied once, however often it is delivered.

A handler records the message_id in the ``inbox`` table in the same
transaction as its database writes (:func:`record`). A redelivered message
finds its id taken and changes nothing; if the handler's transaction rolls
back, so does the record, and the next delivery applies it.
:func:`transactional` wraps a handler in exactly that.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING
from uuid import UUID

from toolkit.db.bind import Exec, Returning, Scalar
from toolkit.db.database import Connection, Database
from toolkit.db.inputs import MAX_PRUNE_BATCH, check_count, check_retention, parse_id
from toolkit.messaging.inputs import check_consumer, check_queue
from toolkit.messaging.records import InboxEntry

if TYPE_CHECKING:
    from toolkit.messaging.consumer import Delivery, Handler

_record = Returning("inbox.record", InboxEntry, ("consumer", "message_id", "queue"))
_seen = Scalar("inbox.seen", bool, ("consumer", "message_id"))
_prune = Exec("inbox.prune", ("retention_seconds", "limit"))


def record(tx: Connection, consumer: str, message_id: UUID | str, queue: str) -> bool:
    """Record that ``consumer`` applies ``message_id``; False if it already had.

    Call it first inside the handler's transaction and skip the effect when
    it returns False.
    """
    entry = _record(
        tx,
        consumer=check_consumer(consumer),
        message_id=parse_id(message_id, "message_id"),
        queue=check_queue(queue),
    )
    return entry is not None


def seen(conn: Connection, consumer: str, message_id: UUID | str) -> bool:
    """Whether ``consumer`` already applied ``message_id``."""
    return bool(
        _seen(
            conn, consumer=check_consumer(consumer), message_id=parse_id(message_id, "message_id")
        )
    )


def prune(conn: Connection, retention: timedelta, *, limit: int = 10_000) -> int:
    """Forget up to ``limit`` entries older than ``retention`` (keep it longer than any
    redelivery can take); returns how many."""
    return _prune(
        conn,
        retention_seconds=check_retention(retention),
        limit=check_count(limit, "limit", MAX_PRUNE_BATCH),
    )


def transactional(
    db: Database,
    consumer: str,
    apply: Callable[[Connection, Delivery], None],
) -> Handler:
    """A handler that runs ``apply(tx, delivery)`` once per message_id.

    The inbox record and everything ``apply`` writes commit together; a
    duplicate delivery commits nothing and is acknowledged.
    """
    name = check_consumer(consumer)

    def handle(delivery: Delivery) -> None:
        with db.transaction() as tx:
            if not record(tx, name, delivery.message_id, delivery.queue):
                delivery.duplicate = True
                return
            apply(tx, delivery)

    return handle
