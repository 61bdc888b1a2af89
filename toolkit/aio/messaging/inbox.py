"""The consumers' inbox: a message applied once, however often it is delivered.

A handler records the message_id in the ``inbox`` table in the same
transaction as its database writes (:func:`record`). A redelivered message
finds its id taken and changes nothing; if the handler's transaction rolls
back, so does the record, and the next delivery applies it.
:func:`transactional` wraps a handler in exactly that.

Both are per tenant: a handler's work runs in :func:`tenant_transaction`, as the
tenant its message came from, so row-level security keeps its writes in that
tenant, and the same message_id seen by two tenants is two entries.

The inbox is partitioned by the message's creation time (migration 0012):
the AMQP ``timestamp`` its publisher set (the relay: its outbox row's
``created_at``), which every delivery of the message carries unchanged, so a
record is keyed by (tenant, consumer, message_id, creation time) and a
redelivery still finds it. ``toolkit maintain`` drops a partition once its
range is older than the inbox's retention (14 days), and with it the records
of the messages created then. So a message is refused
(:class:`~toolkit.errors.MessageRefused`, which the worker parks at once,
never applying it) when

* its creation time falls before every partition the inbox keeps (reason
  ``inbox-expired``): a record of it may have been dropped. Keep the inbox's
  retention longer than any message can wait: in the outbox (a broker
  outage), in its queue, down the retry ladder, parked before a replay;
* it has no AMQP timestamp (reason ``missing-timestamp``, a foreign
  producer): its redeliveries could not be told apart. A producer outside
  the toolkit must set ``timestamp`` to the message's creation time, the
  same on every publish of it.

A record is found whatever creation time it was made with: one message
published twice under its message_id with different timestamps (a caller
publishing it again itself) is still applied once, as long as the handler's
transaction is READ COMMITTED (the toolkit's default): the record takes a
transaction-scoped lock on (tenant, consumer, message_id), then looks in
every partition kept.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from uuid import UUID

from toolkit.aio.db.database import AsyncConnection, AsyncDatabase
from toolkit.aio.db.drivers import run
from toolkit.db.bind import Scalar
from toolkit.db.inputs import parse_id
from toolkit.errors import InvalidInput, MessageRefused, TenancyUnavailable
from toolkit.messaging.inputs import check_consumer, check_created_at, check_queue
from toolkit.tenants import DEFAULT_TENANT

if TYPE_CHECKING:
    from toolkit.messaging.consumer import AsyncHandler, Delivery

_record = Scalar("inbox.record", bool, ("consumer", "message_id", "queue", "created_at"))
_seen = Scalar("inbox.seen", bool, ("consumer", "message_id"))


def _no_partition(error: InvalidInput) -> bool:
    """Whether ``error`` is the inbox's insert finding no partition for its row.

    SQLSTATE 23514 names the table but no constraint then (a CHECK constraint's
    failure names its constraint), whatever language the server speaks.
    """
    diag = getattr(error.driver_error, "diag", None)
    return (
        getattr(error.driver_error, "sqlstate", None) == "23514"
        and diag is not None
        and diag.constraint_name is None
        and diag.table_name == "inbox"
    )


async def record(
    tx: AsyncConnection,
    consumer: str,
    message_id: UUID | str,
    queue: str,
    created_at: datetime,
) -> bool:
    """Record that ``consumer`` applies ``message_id`` created at ``created_at``
    (:attr:`~toolkit.messaging.consumer.Delivery.created_at`); False if it already had.

    Call it first inside the handler's transaction and skip the effect when
    it returns False. Raises :class:`~toolkit.errors.MessageRefused` (reason
    ``inbox-expired``) when ``created_at`` is older than every partition the
    inbox keeps: the transaction is then aborted, and nothing may be applied.
    A ``created_at`` past the partitions made ahead (``toolkit maintain``
    keeps three days ready) is InvalidInput, which the worker retries.
    """
    created = check_created_at(created_at)
    try:
        recorded = await run(
            tx,
            _record,
            consumer=check_consumer(consumer),
            message_id=parse_id(message_id, "message_id"),
            queue=check_queue(queue),
            created_at=created,
        )
    except InvalidInput as exc:
        if not _no_partition(exc):
            raise
        if created > datetime.now(UTC):
            raise InvalidInput(
                f"the inbox has no partition yet for a message created at {created.isoformat()} "
                "(in the future): is `toolkit maintain` running, is the producer's clock right?",
                field="created_at",
                value=created,
            ) from None
        raise MessageRefused(
            f"refused message {message_id} for {consumer!r}: created at {created.isoformat()}, "
            "before the oldest partition the inbox keeps, so a record of it may have been "
            "dropped; never applied (keep the inbox retention longer than a message can wait)",
            reason="inbox-expired",
        ) from None
    return bool(recorded)


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
    commits nothing and is acknowledged. A message without a creation time,
    or created before every partition the inbox keeps, is refused
    (:class:`~toolkit.errors.MessageRefused`): ``apply`` never runs.
    """
    name = check_consumer(consumer)

    async def handle(delivery: Delivery) -> None:
        if delivery.created_at is None:
            raise MessageRefused(
                f"refused message {delivery.message_id} for {name!r}: it has no AMQP timestamp, "
                "so the inbox could not tell a redelivery of it; never applied (its producer "
                "must set timestamp to the message's creation time)",
                reason="missing-timestamp",
            )
        async with tenant_transaction(db, delivery) as tx:
            if not await record(tx, name, delivery.message_id, delivery.queue, delivery.created_at):
                delivery.duplicate = True
                return
            await apply(tx, delivery)

    return handle
