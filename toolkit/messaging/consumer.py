"""The consumer (``toolkit worker``): manual acks, bounded prefetch, a broker-held retry ladder.

One :class:`Worker` holds one connection and one channel with a consumer per
queue it handles. Deliveries are handed to a thread pool, so a long handler
never stops the connection's thread from answering heartbeats; acks travel
back through ``add_callback_threadsafe``.

A handler may be a coroutine function (:data:`AsyncHandler`, e.g.
:func:`toolkit.aio.messaging.inbox.transactional`): the worker runs it on an
event loop of its own, on a thread of its own, created once and closed when
the worker stops. The pool thread that took the delivery waits for the
coroutine (``asyncio.run_coroutine_threadsafe``), so ``concurrency`` bounds
async handlers as it bounds sync ones, the connection's thread is never
blocked, and what the coroutine returns or raises takes the same path as a
sync handler's. A blocking call inside an async handler stalls the other
async handlers (never the heartbeats): await, or use ``asyncio.to_thread``.
Async resources a handler uses (an ``AsyncDatabase``'s pool) open on that
loop on first use; pass ``async_cleanup`` (``db.close``) to close them there
when the worker stops. For each delivery:

* a body that is not JSON, fails its model or lacks a UUID ``message_id`` is
  parked at once, with the reason in its headers; so is a message without
  its tenant (``x-tenant-id``, reason ``missing-tenant``) or with one that is
  not a UUID (``invalid-tenant``): no handler runs for it;
* the handler gets the tenant as :attr:`Delivery.tenant` and runs its work in
  :func:`toolkit.messaging.inbox.tenant_transaction` (``db.transaction(tenant=...)``;
  :func:`~toolkit.messaging.inbox.transactional` does), so row-level security
  keeps it, and its inbox record, in that tenant. A handler whose role the
  policies do not bind (a superuser: single-workspace use) runs the default
  tenant's messages without a tenant and refuses any other tenant's with
  :class:`~toolkit.errors.TenancyUnavailable`, which parks the message at
  once (reason ``tenancy-unavailable``): no retry gives the role a tenant;
* a handler that raises :class:`~toolkit.errors.MessageRefused` (the inbox
  does, for a message without an AMQP timestamp or created in a range it no
  longer keeps) has its message parked at once with the error's reason
  (``missing-timestamp``, ``inbox-expired``) and one log line: it is never
  applied, and no retry would change that;
* a handler that returns is acked (after its transaction committed, so the
  effect is never lost; a crash before the ack redelivers the message and
  the inbox absorbs it);
* a handler that raises sends the message down the retry ladder: it is
  republished (confirmed) to the next delay queue with ``x-retry-count``
  and ``x-last-error`` headers, then acked; the delay queue's TTL
  dead-letters it back to the work queue. After the last step it is parked
  with the error. No message is ever requeued straight back, so a poison
  message cannot spin in a hot loop; the quorum queue's delivery limit
  parks a message that crashes workers outright.

``x-retry-count`` arrives with the message, so anyone who can publish can
forge it. Only a non-negative integer is trusted (one above the ladder's
length counts as the ladder done: it may come from a longer ladder).
Anything else (negative, bool, string, decimal, null, a table or array) is
treated as the ladder done too: the handler still gets its one try, and if it
raises, the message is parked at once with reason ``invalid-retry-count`` and
the forged value in ``x-invalid-retry-count``. Parking is the choice that
cannot loop; starting such a message over at 0 would let a sender buy
retries. (pika hands a float header over as its integer part, so 1.5 counts
as 1 and -1.5 as the invalid -1; RabbitMQ refuses NaN and infinity.)

:meth:`Worker.run` reconnects after a lost connection; given several broker
URLs (a cluster's nodes), it tries the others before the node it lost, so
consuming goes on from a live node. On SIGTERM (or
:meth:`Worker.stop`) it cancels its consumers, lets the handlers in progress
finish (up to ``grace_period``), acks them, and closes: prefetched messages
not yet started go back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from types import FrameType
from typing import Any, TypeVar
from uuid import UUID

import pika
import pika.exceptions as pex

from toolkit.config import mask_password
from toolkit.errors import (
    MessageRefused,
    TenancyUnavailable,
    ToolkitError,
    Unavailable,
    bounded_repr,
)
from toolkit.leases import LeaseKeeper
from toolkit.messaging.connection import (
    Brokers,
    BrokerUrls,
    ConnectionOptions,
    close_quietly,
    translate,
)
from toolkit.messaging.models import MODELS, InvalidMessage, Message, decode, tenant_of
from toolkit.messaging.publisher import Outgoing, Publisher
from toolkit.messaging.topology import Topology, declare

log = logging.getLogger(__name__)

RETRY_HEADER = "x-retry-count"
INVALID_RETRY_HEADER = "x-invalid-retry-count"
_BROKER_HEADERS = ("x-death", "x-delivery-count", "x-first-death-exchange")
_MAX_ERROR = 1000
T = TypeVar("T")


@dataclass
class Delivery:
    """One message as a handler sees it."""

    queue: str
    """The logical queue, e.g. ``workflow.execute``."""
    message: Message
    message_id: UUID
    tenant: UUID
    """The tenant the message belongs to, from its ``x-tenant-id`` header; run the
    work as it (:func:`toolkit.messaging.inbox.tenant_transaction`)."""
    retry_count: int
    """How many times it went down the retry ladder before this delivery, from
    0 to the ladder's length; a forged ``x-retry-count`` reads as the length."""
    redelivered: bool
    headers: dict[str, Any]
    created_at: datetime | None = None
    """When the message was created, from its AMQP ``timestamp`` (whole seconds; the relay
    sends its outbox row's ``created_at``): the same on every delivery of it, so the inbox
    keys it by this. None when the publisher set none (or one no datetime can hold)."""
    duplicate: bool = False
    """Set by :func:`~toolkit.messaging.inbox.transactional` when the inbox had it."""
    _ack: Callable[[], None] = field(default=lambda: None, repr=False)

    def ack_now(self) -> None:
        """Acknowledge before the handler returns (long work that holds a lease instead).

        After this, a failure of the handler no longer goes down the ladder.
        """
        self._ack()


Handler = Callable[[Delivery], None]
"""Handles one delivery; returning acks it, raising sends it down the retry ladder."""

AsyncHandler = Callable[[Delivery], Awaitable[None]]
"""The same as a coroutine function, run on the worker's event loop."""


@dataclass
class WorkerStats:
    """Counters of one worker since it started."""

    handled: int = 0
    duplicates: int = 0
    retried: int = 0
    parked: int = 0
    errors: int = 0
    reconnects: int = 0


class _Acker:
    """Acks or nacks one delivery exactly once, from any thread."""

    def __init__(self, connection: pika.BlockingConnection, channel: Any, tag: int) -> None:
        self._connection = connection
        self._channel = channel
        self._tag = tag
        self._lock = threading.Lock()
        self.done = False

    def ack(self) -> None:
        self._send(partial(self._channel.basic_ack, self._tag))

    def nack(self, requeue: bool) -> None:
        self._send(partial(self._channel.basic_nack, self._tag, requeue=requeue))

    def _send(self, action: Callable[[], None]) -> None:
        with self._lock:
            if self.done:
                return
            self.done = True
        channel = self._channel

        def on_loop() -> None:
            if channel.is_open:
                action()
            else:
                log.info("channel closed before ack of tag %s: it will be redelivered", self._tag)

        try:
            self._connection.add_callback_threadsafe(on_loop)
        except (pex.ConnectionWrongStateError, pex.StreamLostError, AttributeError) as exc:
            log.info("connection gone before ack (%s): the message will be redelivered", exc)


@dataclass
class _Incoming:
    """A delivery as it arrived, with the means to ack it."""

    acker: _Acker
    queue: str
    redelivered: bool
    properties: pika.BasicProperties
    body: bytes


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


class _HandlerLoop:
    """An event loop on a thread of its own, where a worker's async handlers run."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="toolkit-handler-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            # Tasks a handler started and left running are cancelled, not abandoned.
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop and wait for it from this (pool) thread."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self, cleanup: Callable[[], Awaitable[object]] | None) -> None:
        """Await ``cleanup`` on the loop, then stop and close it."""
        if cleanup is not None:
            future = asyncio.run_coroutine_threadsafe(_awaited(cleanup()), self.loop)
            try:
                future.result(timeout=30)
            except TimeoutError:
                future.cancel()
                log.error("worker: async_cleanup did not finish within 30s; cancelled")
            except Exception:
                log.exception("worker: async_cleanup failed")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            log.warning("worker: the handlers' event loop did not stop within 30s")


def _retry_step(headers: Mapping[str, Any], ladder_length: int) -> tuple[int, bool]:
    """The delivery's place on the retry ladder, and whether its header could be trusted.

    A missing header is 0. A non-negative int is used as is, capped at
    ``ladder_length`` (the ladder done). Anything else cannot have been
    written by a worker (bools, negatives, strings, decimals, nulls, tables):
    it reads as ``ladder_length``, so a failure parks the message instead of
    buying it retries or an index off the ladder.
    """
    if RETRY_HEADER not in headers:
        return 0, True
    raw = headers[RETRY_HEADER]
    # bool is an int subclass; pika decodes 64-bit integers as its own int subclass.
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return min(int(raw), ladder_length), True
    return ladder_length, False


def _created_at(timestamp: object) -> datetime | None:
    """The AMQP ``timestamp`` property as a UTC datetime; None if absent or out of range."""
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        return None
    try:
        return datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 3] + "..."


class Worker:
    """Consumes the handled queues until stopped; see the module docstring.

    ``url`` is one broker URL or several (see
    :class:`~toolkit.messaging.connection.Brokers`); the retry publisher
    takes the same ones. ``handlers`` maps logical queue names to handlers,
    sync or async.
    ``prefetch`` bounds the unacked deliveries per queue, ``concurrency``
    the handlers running at once. ``async_cleanup`` is awaited on the async
    handlers' event loop when the worker stops, after the last handler.
    """

    def __init__(
        self,
        url: BrokerUrls,
        topology: Topology,
        handlers: Mapping[str, Handler | AsyncHandler],
        *,
        prefetch: int = 10,
        concurrency: int = 4,
        grace_period: float = 30.0,
        options: ConnectionOptions | None = None,
        models: Mapping[str, type[Message]] | None = None,
        max_reconnect_delay: float = 10.0,
        async_cleanup: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        for queue in handlers:
            topology.check(queue)
        self.url = url
        self.brokers = Brokers(url)
        self.topology = topology
        self.handlers: dict[str, Handler | AsyncHandler] = dict(handlers)
        self.prefetch = prefetch
        self.concurrency = concurrency
        self.grace_period = grace_period
        self.options = options or ConnectionOptions(name="toolkit-worker")
        self.models = dict(models or MODELS)
        self.max_reconnect_delay = max_reconnect_delay
        self.async_cleanup = async_cleanup
        self.stats = WorkerStats()
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        """Set while consumers are registered on an open connection."""
        self._publisher = Publisher(
            url, topology, options=ConnectionOptions(name="toolkit-worker-retry")
        )
        self._publish_lock = threading.Lock()
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._loop: _HandlerLoop | None = None
        self._loop_lock = threading.Lock()

    # -- control -----------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to finish the handlers in progress and return."""
        self.stop_event.set()

    def install_signal_handlers(self) -> None:
        """Stop gracefully on SIGTERM and SIGINT (main thread only)."""

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("worker: signal %s, finishing the messages in progress", signum)
            self.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    @property
    def in_flight(self) -> int:
        """How many deliveries are being handled now."""
        return self._in_flight

    def run(self) -> None:
        """Consume until :meth:`stop`; reconnects (with backoff) after a lost connection."""
        delay = 0.1
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="toolkit-handler")
        if self.async_cleanup is not None or any(
            inspect.iscoroutinefunction(handler) for handler in self.handlers.values()
        ):
            self._handler_loop()
        try:
            while not self.stop_event.is_set():
                try:
                    self._consume()
                    delay = 0.1
                except Exception as exc:  # reconnect after anything; unacked messages return
                    self.ready.clear()
                    if self.stop_event.is_set():
                        break
                    self.stats.reconnects += 1
                    reason = translate(exc, "consuming")
                    log.warning("worker: %s; reconnecting in %.1fs", reason, delay)
                    self.stop_event.wait(delay)
                    delay = min(self.max_reconnect_delay, delay * 2)
        finally:
            self.ready.clear()
            self._executor.shutdown(wait=True)
            if self._loop is not None:
                self._loop.close(self.async_cleanup)
                self._loop = None
            self._publisher.close()

    def _handler_loop(self) -> _HandlerLoop:
        """The async handlers' event loop, started on first need."""
        with self._loop_lock:
            if self._loop is None:
                self._loop = _HandlerLoop()
            return self._loop

    # -- the connection's thread ---------------------------------------------

    def _consume(self) -> None:
        connection = self.brokers.connect(self.options)
        try:
            if len(self.brokers.urls) > 1:
                log.info("worker: consuming from %s", mask_password(self.brokers.current))
            declare(connection, self.topology)
            channel = connection.channel()
            channel.basic_qos(prefetch_count=self.prefetch)
            tags = [
                channel.basic_consume(
                    self.topology.queue_name(queue),
                    self._on_message(connection, queue),
                    auto_ack=False,
                )
                for queue in self.handlers
            ]
            self.ready.set()
            while not self.stop_event.is_set():
                connection.process_data_events(time_limit=0.2)
            self.ready.clear()
            for tag in tags:
                channel.basic_cancel(tag)
            deadline = time.monotonic() + self.grace_period
            while self._in_flight and time.monotonic() < deadline:
                connection.process_data_events(time_limit=0.05)
            # Let the last acks out before closing.
            connection.process_data_events(time_limit=0)
            if self._in_flight:
                log.warning(
                    "worker: %d handler(s) still running after %.0fs; their messages "
                    "go back to the queue",
                    self._in_flight,
                    self.grace_period,
                )
        finally:
            self.ready.clear()
            close_quietly(connection)

    def _on_message(
        self, connection: pika.BlockingConnection, queue: str
    ) -> Callable[[Any, Any, pika.BasicProperties, bytes], None]:
        def on_message(
            channel: Any, method: Any, properties: pika.BasicProperties, body: bytes
        ) -> None:
            if self.stop_event.is_set():
                return  # not started: it goes back to the queue when the channel closes
            acker = _Acker(connection, channel, method.delivery_tag)
            incoming = _Incoming(acker, queue, bool(method.redelivered), properties, body)
            with self._in_flight_lock:
                self._in_flight += 1
            assert self._executor is not None
            self._executor.submit(self._process, incoming)

        return on_message

    # -- handler threads -----------------------------------------------------

    def _process(self, incoming: _Incoming) -> None:
        try:
            if self.stop_event.is_set():
                return  # prefetched, not started: back to the queue when the channel closes
            self._handle(incoming)
        except Exception:
            self.stats.errors += 1
            log.exception("worker: unexpected error handling a %s message", incoming.queue)
            if not incoming.acker.done:
                time.sleep(1.0)  # no hot loop; the delivery limit parks a repeat offender
                incoming.acker.nack(requeue=True)
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1

    def _handle(self, incoming: _Incoming) -> None:
        acker, queue, properties = incoming.acker, incoming.queue, incoming.properties
        headers = dict(properties.headers or {})
        retry_count, trusted = _retry_step(headers, len(self.topology.retry_delays))
        try:
            message_id = UUID(str(properties.message_id))
        except ValueError:
            self._park(incoming, "invalid-message", "message_id is not a UUID")
            return
        try:
            tenant = tenant_of(headers)
            message = decode(queue, incoming.body, self.models)
        except InvalidMessage as exc:
            self._park(incoming, exc.reason, exc.detail)
            return
        delivery = Delivery(
            queue=queue,
            message=message,
            message_id=message_id,
            tenant=tenant,
            retry_count=retry_count,
            redelivered=incoming.redelivered,
            headers=headers,
            created_at=_created_at(properties.timestamp),
            _ack=acker.ack,
        )
        try:
            outcome = self.handlers[queue](delivery)
            if inspect.isawaitable(outcome):
                # On the handlers' loop; this pool thread waits, the connection's runs on.
                self._handler_loop().run(_awaited(outcome))
        except Exception as exc:
            if acker.done:
                self.stats.errors += 1
                log.exception("worker: %s handler failed after acking %s", queue, message_id)
                return
            if isinstance(exc, MessageRefused):
                # Never to be applied (e.g. the inbox no longer covers it): parked at once,
                # with one log line (the park's).
                self._park(incoming, exc.reason, _text(exc), retry_count)
                return
            log.warning("worker: %s handler failed on %s: %s", queue, message_id, exc)
            if isinstance(exc, TenancyUnavailable):
                # The role cannot run this tenant's work; no retry changes that.
                self._park(incoming, "tenancy-unavailable", _text(exc), retry_count)
                return
            if not trusted:
                self._park(
                    incoming,
                    "invalid-retry-count",
                    _text(exc),
                    retry_count,
                    {INVALID_RETRY_HEADER: bounded_repr(headers[RETRY_HEADER])},
                )
                return
            self._retry_or_park(incoming, retry_count, exc)
            return
        if delivery.duplicate:
            self.stats.duplicates += 1
        self.stats.handled += 1
        acker.ack()

    def _republish(
        self, incoming: _Incoming, exchange: str, routing_key: str, headers: Mapping[str, Any]
    ) -> bool:
        acker, properties = incoming.acker, incoming.properties
        kept = {
            k: v
            for k, v in (properties.headers or {}).items()
            if k not in _BROKER_HEADERS and not k.startswith("x-first-death")
        }
        out = Outgoing(
            exchange=exchange,
            routing_key=routing_key,
            body=incoming.body,
            message_id=str(properties.message_id or ""),
            message_type=str(properties.type or ""),
            # Kept as it came (absent stays absent): the inbox keys a message by it.
            timestamp=properties.timestamp,
            headers={**kept, **headers},
        )
        try:
            with self._publish_lock:
                self._publisher.send(out)
        except ToolkitError as exc:
            log.error("worker: could not republish to %s (%s); requeueing", routing_key, exc)
            time.sleep(1.0)
            acker.nack(requeue=True)
            return False
        acker.ack()
        return True

    def _retry_or_park(self, incoming: _Incoming, retry_count: int, exc: BaseException) -> None:
        error = _text(exc)
        queue = incoming.queue
        if retry_count >= len(self.topology.retry_delays):
            self._park(incoming, "retries-exhausted", error, retry_count)
            return
        if self._republish(
            incoming,
            self.topology.retry_exchange,
            self.topology.retry_routing_key(queue, retry_count),
            {RETRY_HEADER: retry_count + 1, "x-last-error": error},
        ):
            self.stats.retried += 1

    def _park(
        self,
        incoming: _Incoming,
        reason: str,
        error: str,
        retry_count: int = 0,
        extra_headers: Mapping[str, Any] | None = None,
    ) -> None:
        queue = incoming.queue
        log.error("worker: parking a %s message (%s): %s", queue, reason, error)
        if self._republish(
            incoming,
            self.topology.dead_letter_exchange,
            queue,
            {
                **(extra_headers or {}),
                "x-parked-reason": reason,
                "x-error": error[:_MAX_ERROR],
                RETRY_HEADER: retry_count,
                "x-parked-at": datetime.now(UTC).isoformat(),
                "x-original-queue": self.topology.queue_name(queue),
            },
        ):
            self.stats.parked += 1


class Periodic:
    """Runs ``fn`` every ``interval`` seconds on a daemon thread until stopped.

    A :class:`~toolkit.leases.LeaseKeeper` whose renewal is ``fn``: a failure
    is logged and the job runs again next time, except one of ``give_up_on``
    (a failure the next run would repeat, such as a role not allowed the
    job), which logs ``advice`` once and ends the job.
    """

    def __init__(
        self,
        name: str,
        interval: float,
        fn: Callable[[], object],
        *,
        give_up_on: tuple[type[Exception], ...] = (),
        advice: str = "",
    ) -> None:
        self.name = name
        self.interval = interval
        self.fn = fn
        self.give_up_on = give_up_on
        self.advice = advice
        self._keeper = LeaseKeeper(self._run_once, interval, name=name, stop_timeout=10.0)

    def start(self) -> Periodic:
        self._keeper.start()
        return self

    def stop(self) -> None:
        self._keeper.stop()

    @property
    def ended(self) -> bool:
        """True once the job gave up (one of ``give_up_on``)."""
        return self._keeper.lost

    def _run_once(self) -> bool:
        try:
            self.fn()
        except self.give_up_on as exc:
            log.error("%s stopped (%s): %s", self.name, type(exc).__name__, self.advice)
            return False
        except Exception:
            log.exception("%s failed; trying again in %.0fs", self.name, self.interval)
        return True


def run_worker(worker: Worker, *, periodic: list[Periodic] | None = None) -> None:
    """Run ``worker`` in this (main) thread with signal handlers and periodic jobs."""
    worker.install_signal_handlers()
    jobs = [job.start() for job in periodic or []]
    try:
        worker.run()
    finally:
        for job in jobs:
            with contextlib.suppress(Exception):
                job.stop()


__all__ = [
    "AsyncHandler",
    "Delivery",
    "Handler",
    "Periodic",
    "Unavailable",
    "Worker",
    "WorkerStats",
    "run_worker",
]
