# Generated from toolkit/aio/messaging/inbox.py by tools/async_to_sync.py: do not edit.
# Edit the async source and run `tox -e generate`.
"""The consumers' inbox: a message applied once, however often it is delivered.

A handler records the message_id in the ``inbox`` table in the same
transaction as its database writes (:func:`record`). A redelivered message
finds its id taken and changes nothing; if the handler's transaction rolls
back, so does the record, and the next delivery applies it.
:func:`transactional` wraps a handler in exactly that.

Both are per tenant: a handler's work runs in :func:`tenant_transaction`, as the
tenant its message came from, so row-level security keeps its writes in that
tenant, and the same message_id seen by two tenants is two entries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING
from uuid import UUID

from toolkit.db.bind import Exec, Returning, Scalar
from toolkit.db.database import Connection, Database
from toolkit.db.drivers import run
from toolkit.db.inputs import MAX_PRUNE_BATCH, check_count, check_retention, parse_id
from toolkit.errors import TenancyUnavailable
from toolkit.messaging.inputs import check_consumer, check_queue
from toolkit.messaging.records import InboxEntry
from toolkit.tenants import DEFAULT_TENANT

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
    entry = run(
        tx,
        _record,
        consumer=check_consumer(consumer),
        message_id=parse_id(message_id, "message_id"),
        queue=check_queue(queue),
    )
    return entry is not None


def seen(conn: Connection, consumer: str, message_id: UUID | str) -> bool:
    """Whether ``consumer`` already applied ``message_id``."""
    return bool(
        run(
            conn,
            _seen,
            consumer=check_consumer(consumer),
            message_id=parse_id(message_id, "message_id"),
        )
    )


def prune(conn: Connection, retention: timedelta, *, limit: int = 10_000) -> int:
    """Forget up to ``limit`` entries older than ``retention`` (keep it longer than any
    redelivery can take); returns how many."""
    return run(
        conn,
        _prune,
        retention_seconds=check_retention(retention),
        limit=check_count(limit, "limit", MAX_PRUNE_BATCH),
    )


@contextmanager
def tenant_transaction(db: Database, delivery: Delivery) -> Iterator[Connection]:
    """The transaction a handler does ``delivery``'s work in: as the message's tenant.

    ``db.transaction(tenant=delivery.tenant)``: row-level security shows and
    accepts only that tenant's rows. A role the policies do not bind (a
    superuser, BYPASSRLS, the tables' owner) cannot be given a tenant
    (:class:`~toolkit.errors.TenancyUnavailable`); such a single-workspace
    deployment runs the default tenant's messages as it runs all its work,
    without one (the toolkit's queries and column defaults then mean the
    default tenant), and refuses another tenant's message with that error,
    which the worker parks: its writes would land in the default tenant.
    """
    scoped = False
    try:
        with db.transaction(tenant=delivery.tenant) as tx:
            scoped = True
            yield tx
        return
    except TenancyUnavailable:
        # Raised before BEGIN (nothing ran) unless the block itself raised it.
        if scoped or delivery.tenant != DEFAULT_TENANT:
            raise
    with db.transaction() as tx:
        yield tx


def transactional(
    db: Database,
    consumer: str,
    apply: Callable[[Connection, Delivery], None],
) -> Handler:
    """A handler that runs ``apply(tx, delivery)`` once per message_id and tenant.

    The inbox record and everything ``apply`` writes commit together, in
    :func:`tenant_transaction` (as the message's tenant); a duplicate delivery
    commits nothing and is acknowledged.
    """
    name = check_consumer(consumer)

    def handle(delivery: Delivery) -> None:
        with tenant_transaction(db, delivery) as tx:
            if not record(tx, name, delivery.message_id, delivery.queue):
                delivery.duplicate = True
                return
            apply(tx, delivery)

    return handle
