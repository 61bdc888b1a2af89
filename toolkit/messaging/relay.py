"""The outbox relay: publishes committed outbox rows (``toolkit relay``).

A :class:`Relay` publishes what :func:`toolkit.messaging.outbox.enqueue`
wrote, once its transaction committed:

1. in one transaction it claims up to ``batch_size`` unsent, due rows with
   ``FOR UPDATE SKIP LOCKED`` (several relays share the work; a row is
   never skipped for good, as an ``id > last_seen`` cursor would when
   sequences commit out of order);
2. publishes them with pipelined confirms, each with its row's tenant in
   the ``x-tenant-id`` header (the consumer runs it as that tenant);
3. marks the confirmed ones sent, holds back the refused ones (unroutable,
   rejected) with a growing delay and the error, and commits. A relay that
   dies before the commit leaves its rows unsent: they go out again (the
   consumers' inbox absorbs the duplicates). No row is ever dropped.

It wakes on ``LISTEN toolkit_outbox`` (the insert trigger sends at most one
NOTIFY per transaction, at commit) and polls as a fallback; while the broker
is down it backs off, with the rows waiting in the table. Given several
broker URLs (a cluster's nodes), it reconnects to another node first when
its node goes away. Sent rows are
pruned after ``retention``.

It publishes every tenant's rows, so its database role must not be bound by
row-level security: a login role with ``BYPASSRLS`` in ``toolkit_relay``
(migration 0009 grants that role only what the relay does), or the
superuser of a single-workspace deployment. A role in ``toolkit_app`` claims
nothing: the policies refuse it without a tenant (TenantRequired).

The relay is a process of its own (a thread loop over a blocking pika
connection), so it exists in the sync API only; async applications enqueue
with :mod:`toolkit.aio.messaging.outbox` and run ``toolkit relay`` beside them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any
from uuid import UUID

import psycopg

from toolkit.db.bind import Exec, Many
from toolkit.db.database import Connection, Database
from toolkit.db.drivers import run
from toolkit.errors import ToolkitError, Unavailable
from toolkit.messaging.connection import BrokerUrls
from toolkit.messaging.inputs import NOTIFY_CHANNEL
from toolkit.messaging.models import stamped
from toolkit.messaging.outbox import prune
from toolkit.messaging.publisher import BatchResult, Outgoing, PendingBatch, PipelinedPublisher
from toolkit.messaging.records import OutboxRow
from toolkit.messaging.topology import Topology

__all__ = ["NOTIFY_CHANNEL", "Relay", "RelayStats"]

log = logging.getLogger(__name__)

_claim = Many("outbox.claim", OutboxRow, ("limit",))
_mark_sent = Exec("outbox.mark_sent", ("ids",))
_mark_failed = Exec("outbox.mark_failed", ("ids", "error", "delay_seconds"))


def _messages(topology: Topology, rows: Sequence[OutboxRow]) -> list[Outgoing]:
    """The messages of ``rows``, in order, each with its tenant header set from its
    row's tenant_id (a header of that name in the row's own headers, written by raw
    SQL, is overwritten).

    Rows without headers of their own (most rows) share one read-only header
    mapping per tenant. One loop for the batch: this runs for every message.
    """
    exchange = topology.exchange
    shared: dict[UUID, Mapping[str, Any]] = {}
    messages: list[Outgoing] = []
    append = messages.append
    for row in rows:
        if row.headers is None:
            headers = shared.get(row.tenant_id)
            if headers is None:
                headers = shared[row.tenant_id] = stamped({}, row.tenant_id)
        else:
            headers = stamped(row.headers, row.tenant_id)
        append(
            Outgoing(
                exchange=exchange,
                routing_key=row.queue,
                body=row.body.encode(),
                message_id=str(row.id),
                message_type=row.message_type,
                timestamp=int(row.created_at.timestamp()),
                headers=headers,
            )
        )
    return messages


def _keep_going(stop: threading.Event, until: float) -> bool:
    return not stop.is_set() and time.monotonic() < until


class _Claimed:
    """A claimed batch: its open transaction, its rows and their messages, and their
    publishing once submitted."""

    def __init__(
        self, scope: ExitStack, tx: Connection, rows: list[OutboxRow], messages: list[Outgoing]
    ) -> None:
        self.scope = scope
        """Holds the batch's ``db.transaction()``: closing it commits, an exception rolls back."""
        self.tx = tx
        self.rows = rows
        self.messages = messages
        self.pending: PendingBatch | None = None
        self.by_id = {out.message_id: row for out, row in zip(messages, rows, strict=True)}
        """The rows by the message_id they are published under."""
        self._open = True

    def result(self) -> BatchResult:
        assert self.pending is not None
        return self.pending.result()

    def close(self) -> None:
        """Leave the batch's transaction through the door: its commit."""
        self._open = False
        self.scope.close()

    def abort(self) -> None:
        """Roll back (the rows stay unsent), after waiting for the publisher to be free."""
        if self.pending is not None:
            self.pending.result()
        if self._open:
            self._open = False
            error = RuntimeError("outbox relay batch abandoned")
            self.scope.__exit__(RuntimeError, error, None)


class _Finishing:
    """A confirmed batch being marked sent and committed on a thread of its own,
    while the relay claims the next batch and the broker takes the one after."""

    def __init__(self, batch: _Claimed, finish: Callable[[], None]) -> None:
        self._batch = batch
        self._finish = finish
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="toolkit-relay-finish", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._finish()
        except BaseException as exc:  # handed to the relay's thread by join()
            self._error = exc
            try:
                self._batch.abort()  # rolled back: its rows go out again
            except Exception:  # the first failure is the one to report
                log.warning("outbox relay: abandoning a batch failed", exc_info=True)

    def join(self) -> None:
        """Wait until the batch is committed; raise what marking or committing it raised."""
        self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error


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
    batch and before the rows are marked sent (on the thread that marks them,
    when the next batch is already out): tests use it to kill a relay at the
    worst moment.
    """

    def __init__(
        self,
        db: Database,
        url: BrokerUrls,
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
        return self._relay_batches(lambda: False)

    def drain(self, timeout: float = 30.0) -> int:
        """Publish until no due row is left; returns how many were published.

        Raises Unavailable when the broker stays unreachable past ``timeout``.
        """
        deadline = time.monotonic() + timeout
        before = self.stats.published
        delay = 0.05
        while True:
            try:
                if self._relay_batches(lambda: True) == 0:
                    return self.stats.published - before
                delay = 0.05
            except Unavailable:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _relay_batches(self, more: Callable[[], bool]) -> int:
        """Relay batches back to back while they come full and ``more()`` says so;
        returns how many rows were claimed.

        Batches overlap, each in its own transaction: while the broker
        confirms one, the next is claimed (SKIP LOCKED passes over the rows
        the first holds) and, once the first is confirmed, the next is
        published while the first is marked sent and committed on a thread of
        its own, so that marking (the database's heaviest part) runs beside the
        next claim and publish. A row is still marked sent only after its own
        confirm, in the transaction that claimed it; batches are published one
        after another, in claim order; at most three transactions are open.
        """
        claimed = 0
        current = self._claim()
        if current is None:
            return 0
        upcoming: _Claimed | None = None
        finishing: _Finishing | None = None
        try:
            self._submit(current)
            while True:
                claimed += len(current.rows)
                upcoming = None
                if len(current.rows) >= self.batch_size and more():
                    upcoming = self._claim()
                result = current.result()
                previous, finishing = finishing, None
                if previous is not None:
                    previous.join()  # raises what marking the previous batch raised
                if upcoming is None or result.unconfirmed:
                    self._finish(current, result)  # raises Unavailable when confirms were lost
                    return claimed
                try:
                    self._submit(upcoming)
                except Unavailable:  # the broker went away: keep what it confirmed
                    upcoming.abort()
                    upcoming = None
                    self._finish(current, result)
                    raise
                finishing = _Finishing(current, partial(self._finish, current, result))
                current, upcoming = upcoming, None
        except BaseException:
            if finishing is not None:
                try:
                    finishing.join()  # a confirmed batch: let it commit
                except Exception:  # the first failure is the one to report
                    log.warning("outbox relay: marking a batch sent failed", exc_info=True)
            for batch in (current, upcoming):
                if batch is not None:
                    try:
                        batch.abort()
                    except Exception:  # the first failure is the one to report
                        log.warning("outbox relay: abandoning a batch failed", exc_info=True)
            raise

    def _claim(self) -> _Claimed | None:
        """Open a transaction and claim a batch in it; None (and nothing open) if no row is due."""
        with ExitStack() as scope:
            tx = scope.enter_context(self.db.transaction())
            rows = run(tx, _claim, limit=self.batch_size)
            if not rows:
                return None  # leaving the scope commits the empty claim
            # Built now, while the broker still confirms the batch before: submitting
            # then only hands them over. The batch takes its transaction along.
            return _Claimed(scope.pop_all(), tx, rows, _messages(self.topology, rows))

    def _submit(self, batch: _Claimed) -> None:
        batch.pending = self.publisher.submit(batch.messages, timeout=self.confirm_timeout)

    def _finish(self, batch: _Claimed, result: BatchResult) -> None:
        """Mark ``batch``'s confirmed rows sent and its refused ones failed, and commit."""
        rows, tx, by_id = batch.rows, batch.tx, batch.by_id
        if self.after_publish is not None:
            self.after_publish(rows)
        if result.acked:
            run(tx, _mark_sent, ids=[by_id[i].id for i in result.acked])
        for message_id, reason in result.failed.items():
            row = by_id[message_id]
            delay = min(self.max_backoff * 10, 2.0 ** min(row.attempts, 10))
            log.error("outbox message %s refused by the broker: %s", message_id, reason)
            run(tx, _mark_failed, ids=[row.id], error=reason, delay_seconds=delay)
        batch.close()
        self.stats.batches += 1
        self.stats.published += len(result.acked)
        self.stats.failed += len(result.failed)
        if result.unconfirmed:
            raise Unavailable(
                f"outbox relay: {len(result.unconfirmed)} message(s) unconfirmed "
                f"({result.error}); they stay in the outbox"
            )

    def run(self, stop: threading.Event) -> None:
        """Relay until ``stop`` is set: batches back to back while rows wait, then
        sleep until a NOTIFY or ``poll_interval``; back off while the broker is down.
        """
        backoff = 0.0
        next_prune = time.monotonic() + min(self.prune_interval, 5.0)
        while not stop.is_set():
            try:
                # Back to back while batches come full, until it is time to prune.
                claimed = self._relay_batches(partial(_keep_going, stop, next_prune))
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
                listener = self.db.session("listening for new outbox rows")
                listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
                self._listener = listener
            except (psycopg.Error, ToolkitError) as exc:
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
