"""The transactional outbox and its relay.

:func:`enqueue` writes a message into the ``outbox`` table inside the
caller's transaction, so the change and its message commit or roll back
together. A :class:`Relay` publishes committed messages:

1. in one transaction it claims up to ``batch_size`` unsent, due rows with
   ``FOR UPDATE SKIP LOCKED`` (several relays share the work; a row is
   never skipped for good, as an ``id > last_seen`` cursor would when
   sequences commit out of order);
2. publishes them with pipelined confirms;
3. marks the confirmed ones sent, holds back the refused ones (unroutable,
   rejected) with a growing delay and the error, and commits. A relay that
   dies before the commit leaves its rows unsent: they go out again (the
   consumers' inbox absorbs the duplicates). No row is ever dropped.

It wakes on ``LISTEN toolkit_outbox`` (the insert trigger sends at most one
NOTIFY per transaction, at commit) and polls as a fallback; while the broker
is down it backs off, with the rows waiting in the table. Sent rows are
pruned after ``retention``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from toolkit.db.bind import Copy, Exec, Many, One
from toolkit.db.database import Connection, Database
from toolkit.db.patterns import (
    MAX_PRUNE_BATCH,
    check_count,
    check_retention,
    parse_id,
)
from toolkit.errors import InvalidInput, ToolkitError, Unavailable, bounded_repr
from toolkit.messaging.models import Message
from toolkit.messaging.publisher import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Outgoing,
    PipelinedPublisher,
    check_size,
)
from toolkit.messaging.records import OutboxMessage, OutboxRow, OutboxStats
from toolkit.messaging.topology import Topology

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "toolkit_outbox"

_enqueue = Exec("outbox.enqueue", ("id", "queue", "message_type", "body", "headers"))
_enqueue_many = Copy("outbox.enqueue_many")
_claim = Many("outbox.claim", OutboxRow, ("limit",))
_mark_sent = Exec("outbox.mark_sent", ("ids",))
_mark_failed = Exec("outbox.mark_failed", ("ids", "error", "delay_seconds"))
_prune = Exec("outbox.prune", ("retention_seconds", "limit"))
_stats = One("outbox.stats", OutboxStats, (), entity="outbox stats")
_get = One("outbox.get", OutboxMessage, ("id",), entity="outbox message")


MAX_HEADERS = 64
MAX_HEADER_TEXT = 1024


def _header_text(text: str) -> bool:
    return len(text) <= MAX_HEADER_TEXT and "\x00" not in text and text.isprintable()


def _headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """AMQP headers as stored and sent: at most 64 names of text, values of text,
    whole numbers (64-bit), booleans or None; anything else is InvalidInput."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping) or len(headers) > MAX_HEADERS:
        raise InvalidInput(
            f"headers must be a mapping of at most {MAX_HEADERS} entries, "
            f"got {bounded_repr(headers)}",
            field="headers",
            value=headers,
        )
    for name, value in headers.items():
        fits = (
            value is None
            or isinstance(value, bool)
            or (isinstance(value, int) and -(2**63) <= value < 2**63)
            or (isinstance(value, str) and _header_text(value))
        )
        if not (isinstance(name, str) and 1 <= len(name) <= 128 and _header_text(name) and fits):
            raise InvalidInput(
                f"header {bounded_repr(name)}: names are 1-128 printable characters and values "
                f"text, 64-bit integers, booleans or None; got {bounded_repr(value)}",
                field="headers",
                value=headers,
            )
    return dict(headers)


MAX_MESSAGE_LIMIT = 128 << 20


def _check_message(message: Any) -> None:
    if not isinstance(message, Message):
        raise InvalidInput(
            f"message must be a toolkit.messaging Message, got {bounded_repr(message)}",
            field="message",
            value=message,
        )


def _max_bytes(limit: Any) -> int:
    return check_count(limit, "max_message_bytes", MAX_MESSAGE_LIMIT)


def enqueue(
    tx: Connection,
    message: Message,
    *,
    message_id: UUID | str | None = None,
    headers: Mapping[str, Any] | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> UUID:
    """Write ``message`` into the outbox in ``tx``; returns its message_id.

    Nothing is sent now: the relay publishes the row once ``tx`` commits,
    and nothing is ever sent if it rolls back. Raises MessageTooLarge for
    a body over the limit (the same check the publisher makes).
    """
    key = parse_id(message_id, "message_id") if message_id is not None else uuid.uuid4()
    _check_message(message)
    body = message.body()
    check_size(body, _max_bytes(max_message_bytes), message.queue)
    _enqueue(
        tx,
        id=key,
        queue=message.queue,
        message_type=message.type_name(),
        body=Jsonb(message.model_dump(mode="json")),
        headers=Jsonb(_headers(headers)),
    )
    return key


def enqueue_many(
    tx: Connection,
    messages: Iterable[Message],
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> list[UUID]:
    """Write many messages in one COPY, in ``tx``; returns their message_ids in order."""
    limit = _max_bytes(max_message_bytes)
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Iterable):
        raise InvalidInput(
            f"messages must be an iterable of Message, got {bounded_repr(messages)}",
            field="messages",
            value=messages,
        )
    ids: list[UUID] = []
    rows: list[tuple[Any, ...]] = []
    for message in messages:
        _check_message(message)
        body = message.body()
        check_size(body, limit, message.queue)
        key = uuid.uuid4()
        ids.append(key)
        rows.append((key, message.queue, message.type_name(), body.decode(), "{}"))
    _enqueue_many(tx, rows)
    return ids


def stats(conn: Connection) -> OutboxStats:
    """How many messages wait, were sent, or are failing."""
    return _stats(conn)


def get(conn: Connection, message_id: UUID | str) -> OutboxMessage:
    """One outbox message by its message_id; NotFound otherwise."""
    key = parse_id(message_id, "message_id")
    return _get(conn, key, id=key)


def prune(conn: Connection, retention: timedelta, *, limit: int = 10_000) -> int:
    """Delete up to ``limit`` rows sent longer than ``retention`` ago; returns how many."""
    return _prune(
        conn,
        retention_seconds=check_retention(retention),
        limit=check_count(limit, "limit", MAX_PRUNE_BATCH),
    )


def _outgoing(topology: Topology, row: OutboxRow) -> Outgoing:
    return Outgoing(
        exchange=topology.exchange,
        routing_key=row.queue,
        body=row.body.encode(),
        message_id=str(row.id),
        message_type=row.message_type,
        timestamp=int(row.created_at.timestamp()),
        headers=row.headers,
    )


@dataclass
class RelayStats:
    """Counters of one relay since it started."""

    published: int = 0
    failed: int = 0
    batches: int = 0
    broker_outages: int = 0
    pruned: int = 0


class Relay:
    """Publishes committed outbox rows; see the module docstring.

    ``after_publish(rows)`` (optional) is called after the broker confirmed a
    batch and before the rows are marked sent: tests use it to kill a relay
    at the worst moment.
    """

    def __init__(
        self,
        db: Database,
        url: str,
        topology: Topology,
        *,
        publisher: Any = None,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        confirm_timeout: float = 30.0,
        max_backoff: float = 30.0,
        retention: timedelta = timedelta(days=7),
        prune_interval: float = 300.0,
        listen: bool = True,
        after_publish: Callable[[Sequence[OutboxRow]], None] | None = None,
    ) -> None:
        self.db = db
        self.url = url
        self.topology = topology
        self.publisher = publisher or PipelinedPublisher(url, topology)
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.confirm_timeout = confirm_timeout
        self.max_backoff = max_backoff
        self.retention = retention
        self.prune_interval = prune_interval
        self.listen = listen
        self.after_publish = after_publish
        self.stats = RelayStats()
        self._listener: psycopg.Connection[Any] | None = None

    def close(self) -> None:
        """Close the publisher's connection and the LISTEN connection."""
        self.publisher.close()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run_once(self) -> int:
        """Claim, publish and mark one batch; returns how many rows were claimed.

        Raises Unavailable when the broker cannot be reached (the rows stay
        unsent) or a batch was cut short by a lost connection (the confirmed
        part is marked sent first).
        """
        with self.db.transaction() as tx:
            rows = _claim(tx, limit=self.batch_size)
            if not rows:
                return 0
            by_id = {str(row.id): row for row in rows}
            result = self.publisher.publish_batch(
                [_outgoing(self.topology, row) for row in rows], timeout=self.confirm_timeout
            )
            if self.after_publish is not None:
                self.after_publish(rows)
            if result.acked:
                _mark_sent(tx, ids=[by_id[i].id for i in result.acked])
            for message_id, reason in result.failed.items():
                row = by_id[message_id]
                delay = min(self.max_backoff * 10, 2.0 ** min(row.attempts, 10))
                log.error("outbox message %s refused by the broker: %s", message_id, reason)
                _mark_failed(tx, ids=[row.id], error=reason, delay_seconds=delay)
        self.stats.batches += 1
        self.stats.published += len(result.acked)
        self.stats.failed += len(result.failed)
        if result.unconfirmed:
            raise Unavailable(
                f"outbox relay: {len(result.unconfirmed)} message(s) unconfirmed "
                f"({result.error}); they stay in the outbox"
            )
        return len(rows)

    def drain(self, timeout: float = 30.0) -> int:
        """Publish until no due row is left; returns how many were published.

        Raises Unavailable when the broker stays unreachable past ``timeout``.
        """
        deadline = time.monotonic() + timeout
        before = self.stats.published
        delay = 0.05
        while True:
            try:
                if self.run_once() == 0:
                    return self.stats.published - before
                delay = 0.05
            except Unavailable:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def run(self, stop: threading.Event) -> None:
        """Relay until ``stop`` is set: batches back to back while rows wait, then
        sleep until a NOTIFY or ``poll_interval``; back off while the broker is down.
        """
        backoff = 0.0
        next_prune = time.monotonic() + min(self.prune_interval, 5.0)
        while not stop.is_set():
            try:
                claimed = self.run_once()
                backoff = 0.0
            except Unavailable as exc:
                self.stats.broker_outages += 1
                backoff = min(self.max_backoff, max(0.1, backoff * 2))
                log.warning("outbox relay: %s; retrying in %.1fs", exc, backoff)
                stop.wait(backoff)
                continue
            except Exception as exc:  # a relay must outlive any one failure; rows stay unsent
                backoff = min(self.max_backoff, max(0.5, backoff * 2))
                log.error("outbox relay: %s; retrying in %.1fs", exc, backoff, exc_info=True)
                stop.wait(backoff)
                continue
            if time.monotonic() >= next_prune:
                self._prune()
                next_prune = time.monotonic() + self.prune_interval
            if claimed < self.batch_size:
                self._wait(stop)

    def _prune(self) -> None:
        try:
            with self.db.connection() as conn:
                self.stats.pruned += prune(conn, self.retention)
        except ToolkitError as exc:
            log.warning("outbox relay: pruning failed: %s", exc)

    def _wait(self, stop: threading.Event) -> None:
        """Sleep until a NOTIFY arrives, ``stop`` is set, or ``poll_interval`` passes."""
        if not self.listen:
            stop.wait(self.poll_interval)
            return
        listener = self._listener
        if listener is None or listener.closed:
            try:
                listener = psycopg.connect(self.db.url, autocommit=True, connect_timeout=5)
                listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
                self._listener = listener
            except psycopg.Error as exc:
                log.warning("outbox relay: LISTEN failed (%s); polling", exc)
                self._listener = None
                stop.wait(self.poll_interval)
                return
        # Wake at least every 0.25 s to notice ``stop``.
        deadline = time.monotonic() + self.poll_interval
        try:
            while not stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                for _ in listener.notifies(timeout=min(0.25, remaining), stop_after=1):
                    return
        except psycopg.Error as exc:
            log.warning("outbox relay: LISTEN connection lost (%s); polling", exc)
            listener.close()
            self._listener = None
