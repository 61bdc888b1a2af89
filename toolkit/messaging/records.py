"""Records of the messaging tables (queries in ``sql/outbox.sql`` and ``sql/inbox.sql``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from toolkit.records import Record


class OutboxRow(Record):
    """A claimed outbox message, as the relay publishes it."""

    id: UUID
    tenant_id: UUID
    """The tenant the row belongs to: its messages carry it in their tenant header."""
    queue: str
    message_type: str
    body: str
    attempts: int
    created_at: datetime
    headers: dict[str, Any] | None
    """The row's own headers; None when it has none."""


class OutboxMessage(Record):
    """One outbox message with its delivery state."""

    id: UUID
    queue: str
    message_type: str
    body: str
    headers: dict[str, Any]
    attempts: int
    last_error: str | None
    available_at: datetime
    sent_at: datetime | None
    created_at: datetime


class OutboxStats(Record):
    """Counts over the outbox."""

    pending: int
    sent: int
    failing: int
    oldest_pending_at: datetime | None


class InboxEntry(Record):
    """A message a consumer applied."""

    consumer: str
    message_id: UUID
    queue: str
    received_at: datetime
