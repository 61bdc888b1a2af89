"""The transactional outbox: a message written in the caller's transaction.

:func:`enqueue` writes a message into the ``outbox`` table inside the
caller's transaction, so the change and its message commit or roll back
together::

    async with db.transaction() as tx:
        ...  # the change
        await outbox.enqueue(tx, AuditLog(action="workflow.viewed", entity="workflow"))

Nothing is sent then: the relay (:class:`toolkit.messaging.relay.Relay`,
``toolkit relay``) publishes committed rows, woken by the insert trigger's
NOTIFY on :data:`NOTIFY_CHANNEL` (at most one per transaction, at commit).
:func:`get` and :func:`stats` show what waits, :func:`prune` deletes sent
rows after a retention.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from toolkit.aio.db.database import AsyncConnection
from toolkit.aio.db.drivers import run
from toolkit.aio.db.patterns import insert_rows
from toolkit.db.bind import Exec, One
from toolkit.db.inputs import MAX_PRUNE_BATCH, check_count, check_retention, parse_id
from toolkit.messaging.inputs import (
    MAX_HEADER_TEXT,
    MAX_HEADERS,
    MAX_MESSAGE_LIMIT,
    NOTIFY_CHANNEL,
    check_headers,
    check_max_bytes,
    check_messages,
    message_body,
)
from toolkit.messaging.models import Message
from toolkit.messaging.publisher import DEFAULT_MAX_MESSAGE_BYTES
from toolkit.messaging.records import OutboxMessage, OutboxStats
from toolkit.tenants import tenant_id

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MAX_HEADERS",
    "MAX_HEADER_TEXT",
    "MAX_MESSAGE_LIMIT",
    "NOTIFY_CHANNEL",
    "enqueue",
    "enqueue_many",
    "get",
    "prune",
    "stats",
]

_enqueue = Exec("outbox.enqueue", ("id", "tenant_id", "queue", "message_type", "body", "headers"))
_enqueue_many = Exec("outbox.enqueue_many", ("ids", "queues", "message_types", "bodies"))
_prune = Exec("outbox.prune", ("retention_seconds", "limit"))
_stats = One("outbox.stats", OutboxStats, (), entity="outbox stats")
_get = One("outbox.get", OutboxMessage, ("id",), entity="outbox message")


async def enqueue(
    tx: AsyncConnection,
    message: Message,
    *,
    message_id: UUID | str | None = None,
    headers: Mapping[str, Any] | None = None,
    tenant: UUID | str | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> UUID:
    """Write ``message`` into the outbox in ``tx``; returns its message_id.

    Nothing is sent now: the relay publishes the row once ``tx`` commits,
    and nothing is ever sent if it rolls back. Raises MessageTooLarge for
    a body over the limit (the same check the publisher makes).

    The message is the transaction's tenant's, or ``tenant``'s when given:
    for a sweep by a role the policies do not bind, which works on every
    tenant's rows. A role they bind may name only its transaction's tenant
    (another raises TenantMismatch).
    """
    key = parse_id(message_id, "message_id") if message_id is not None else uuid.uuid4()
    owner = None if tenant is None else tenant_id(tenant)
    message_body(message, check_max_bytes(max_message_bytes))
    await run(
        tx,
        _enqueue,
        id=key,
        tenant_id=owner,
        queue=message.queue,
        message_type=message.type_name(),
        body=Jsonb(message.model_dump(mode="json")),
        headers=Jsonb(check_headers(headers)),
    )
    return key


async def enqueue_many(
    tx: AsyncConnection,
    messages: Iterable[Message],
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> list[UUID]:
    """Write many messages in ``tx``, as its tenant; returns their message_ids in order.

    The relay publishes them in this order. Every message is checked before
    any is written (see :func:`~toolkit.aio.db.patterns.insert_rows`).
    """
    limit = check_max_bytes(max_message_bytes)
    ids: list[UUID] = []
    rows: list[tuple[Any, ...]] = []
    for message in check_messages(messages):
        body = message_body(message, limit)
        key = uuid.uuid4()
        ids.append(key)
        rows.append((key, message.queue, message.type_name(), body.decode()))
    await insert_rows(tx, _enqueue_many, rows)
    return ids


async def stats(conn: AsyncConnection) -> OutboxStats:
    """How many messages wait, were sent, or are failing."""
    return await run(conn, _stats)


async def get(conn: AsyncConnection, message_id: UUID | str) -> OutboxMessage:
    """One outbox message by its message_id; NotFound otherwise."""
    key = parse_id(message_id, "message_id")
    return await run(conn, _get, key, id=key)


async def prune(conn: AsyncConnection, retention: timedelta, *, limit: int = 10_000) -> int:
    """Delete up to ``limit`` rows sent longer than ``retention`` ago; returns how many."""
    return await run(
        conn,
        _prune,
        retention_seconds=check_retention(retention),
        limit=check_count(limit, "limit", MAX_PRUNE_BATCH),
    )
