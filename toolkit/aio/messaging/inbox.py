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

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING
from uuid import UUID

from toolkit.aio.db.database import AsyncConnection, AsyncDatabase
from toolkit.aio.db.drivers import run
from toolkit.db.bind import Exec, Returning, Scalar
from toolkit.db.inputs import MAX_PRUNE_BATCH, check_count, check_retention, parse_id
from toolkit.errors import TenancyUnavailable
from toolkit.messaging.inputs import check_consumer, check_queue
from toolkit.messaging.records import InboxEntry
from toolkit.tenants import DEFAULT_TENANT

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
    entry = await run(
        tx,
        _record,
        consumer=check_consumer(consumer),
        message_id=parse_id(message_id, "message_id"),
        queue=check_queue(queue),
    )
    return entry is not None


async def seen(conn: AsyncConnection, consumer: str, message_id: UUID | str) -> bool:
    """Whether ``consumer`` already applied ``message_id``."""
    return bool(
        await run(
            conn,
            _seen,
            consumer=check_consumer(consumer),
            message_id=parse_id(message_id, "message_id"),
        )
    )


async def prune(conn: AsyncConnection, retention: timedelta, *, limit: int = 10_000) -> int:
    """Forget up to ``limit`` entries older than ``retention`` (keep it longer than any
    redelivery can take); returns how many."""
    return await run(
        conn,
        _prune,
        retention_seconds=check_retention(retention),
        limit=check_count(limit, "limit", MAX_PRUNE_BATCH),
    )


@asynccontextmanager
async def tenant_transaction(
    db: AsyncDatabase, delivery: Delivery
) -> AsyncIterator[AsyncConnection]:
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
        async with db.transaction(tenant=delivery.tenant) as tx:
            scoped = True
            yield tx
        return
    except TenancyUnavailable:
        # Raised before BEGIN (nothing ran) unless the block itself raised it.
        if scoped or delivery.tenant != DEFAULT_TENANT:
            raise
    async with db.transaction() as tx:
        yield tx


def transactional(
    db: AsyncDatabase,
    consumer: str,
    apply: Callable[[AsyncConnection, Delivery], Awaitable[None]],
) -> AsyncHandler:
    """A handler that runs ``apply(tx, delivery)`` once per message_id and tenant.

    The inbox record and everything ``apply`` writes commit together, in
    :func:`tenant_transaction` (as the message's tenant); a duplicate delivery
    commits nothing and is acknowledged.
    """
    name = check_consumer(consumer)

    async def handle(delivery: Delivery) -> None:
        async with tenant_transaction(db, delivery) as tx:
            if not await record(tx, name, delivery.message_id, delivery.queue):
                delivery.duplicate = True
                return
            await apply(tx, delivery)

    return handle
