"""Publishing with publisher confirms: one message at a time, or pipelined in bulk.

Both publishers send persistent JSON messages with ``mandatory`` set, so a
message no queue is bound for comes back as an error instead of vanishing,
and count a message as sent only once the broker confirmed it. Every message
carries its tenant in the ``x-tenant-id`` header
(:data:`~toolkit.messaging.models.TENANT_HEADER`): :func:`outgoing` and
:meth:`Publisher.publish` take it as ``tenant=`` (the relay takes it from the
outbox row), never from the caller's headers.

* :class:`Publisher` (pika ``BlockingConnection``) waits for each message's
  own confirm: simple, and right for a single message (the consumer's retry
  and parking path, a direct :meth:`Publisher.publish`). It reconnects once
  after a lost connection.
* :class:`PipelinedPublisher` runs a pika ``SelectConnection`` on a thread of
  its own and keeps up to ``window`` messages in flight, matching confirms to
  messages by delivery tag (``multiple`` acks included). The outbox relay
  uses it: a batch costs one round trip, not one per message.

Both take one broker URL or several (a cluster's nodes, see
:class:`~toolkit.messaging.connection.Brokers`): a reconnection tries the
other nodes first, so a publisher whose node died goes on through a live one.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pika
import pika.exceptions as pex
from pika.spec import Basic

from toolkit.config import mask_password
from toolkit.errors import MessageTooLarge, Rejected, Unavailable, Unroutable
from toolkit.messaging.connection import (
    CONNECTION_ERRORS,
    Brokers,
    BrokerUrls,
    ConnectionOptions,
    close_quietly,
    describe,
    parameters,
    unreachable,
)
from toolkit.messaging.models import CONTENT_TYPE, Message, refuse_tenant_header, stamped
from toolkit.messaging.topology import Topology, declare
from toolkit.tenants import tenant_id

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
"""Bodies above 1 MiB are refused before they reach the broker (or the outbox)."""


@dataclass(frozen=True)
class Outgoing:
    """One message ready to publish: where to, its body and its properties."""

    exchange: str
    routing_key: str
    body: bytes
    message_id: str
    message_type: str
    timestamp: int | None
    """Seconds since the epoch: when the message was created (None: a consumer's
    republish of a message that came without one)."""
    headers: Mapping[str, Any] = field(default_factory=dict)

    def properties(self) -> pika.BasicProperties:
        """The AMQP properties: JSON, persistent, with id, type and timestamp."""
        return pika.BasicProperties(
            content_type=CONTENT_TYPE,
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=self.message_id,
            timestamp=self.timestamp,
            type=self.message_type,
            headers=dict(self.headers) or None,
            app_id="toolkit",
        )


def outgoing(
    topology: Topology,
    message: Message,
    *,
    tenant: uuid.UUID | str,
    message_id: str | uuid.UUID | None = None,
    headers: Mapping[str, Any] | None = None,
) -> Outgoing:
    """``message`` of ``tenant`` addressed to its queue through ``topology``'s work exchange.

    Raises InvalidInput for a ``tenant`` that is not a UUID (or its text) and
    for ``headers`` naming the tenant themselves.
    """
    queue = topology.check(message.queue)
    scoped = tenant_id(tenant)
    refuse_tenant_header(headers or {})
    return Outgoing(
        exchange=topology.exchange,
        routing_key=queue,
        body=message.body(),
        message_id=str(message_id or uuid.uuid4()),
        message_type=message.type_name(),
        timestamp=int(time.time()),
        headers=stamped(headers or {}, scoped),
    )


def check_size(body: bytes, limit: int, queue: str) -> None:
    """MessageTooLarge if ``body`` exceeds ``limit`` bytes."""
    if len(body) > limit:
        raise MessageTooLarge(len(body), limit, queue)


@dataclass
class BatchResult:
    """What became of each message of a batch, by message_id."""

    acked: list[str] = field(default_factory=list)
    """Confirmed by the broker: safe to mark sent."""
    failed: dict[str, str] = field(default_factory=dict)
    """Refused (unroutable, negative confirm, too large), with the reason."""
    unconfirmed: list[str] = field(default_factory=list)
    """No answer (connection lost or timeout): they may or may not have arrived."""
    error: str | None = None
    """Why the batch stopped early, when it did."""


_NACKED = "negative confirm from the broker: the queue is full or unavailable"

# A channel that first published to a quorum queue while the queue had no
# leader (its node just died) had every later publish nacked, while a fresh
# channel on the same connection was acked (measured on RabbitMQ 3.10.8, three
# nodes): after a negative confirm both publishers start over on a new channel.


def _translate_publish_error(exc: BaseException, out: Outgoing) -> Exception:
    if isinstance(exc, pex.UnroutableError):
        return Unroutable(out.exchange, out.routing_key, "NO_ROUTE")
    if isinstance(exc, pex.NackError):
        return Rejected(
            f"the broker refused message {out.message_id} for {out.routing_key!r} ({_NACKED})"
        )
    if isinstance(exc, pex.ChannelClosedByBroker):
        if exc.reply_code == 406 and "size" in exc.reply_text.lower():
            return MessageTooLarge(len(out.body), len(out.body) - 1, out.routing_key)
        if exc.reply_code == 404:
            return Unroutable(out.exchange, out.routing_key, exc.reply_text)
        return Rejected(f"the broker closed the channel: {exc.reply_code} {exc.reply_text}")
    return Unavailable(f"publishing {out.message_id}: {describe(exc)}")


class Publisher:
    """A confirmed, mandatory publisher on one blocking connection (not thread-safe).

    The first publish connects and declares the topology. After a lost
    connection the next publish reconnects (to another of ``url``'s nodes
    first, when it names several); a publish interrupted by the loss is
    retried once on the new connection (so the broker may hold it twice:
    consumers deduplicate by message_id).
    """

    def __init__(
        self,
        url: BrokerUrls,
        topology: Topology,
        *,
        options: ConnectionOptions | None = None,
        declare_topology: bool = True,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.url = url
        self.brokers = Brokers(url)
        self.topology = topology
        self.options = options or ConnectionOptions(name="toolkit-publisher")
        self.max_message_bytes = max_message_bytes
        self._declare = declare_topology
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (the next publish opens a new one)."""
        close_quietly(self._connection)
        self._connection = None
        self._channel = None

    def _ensure_channel(self) -> Any:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self.close()
        self._connection = self.brokers.connect(self.options)
        if self._declare:
            declare(self._connection, self.topology)
        channel = self._connection.channel()
        channel.confirm_delivery()
        self._channel = channel
        return channel

    def publish(
        self,
        message: Message,
        *,
        tenant: uuid.UUID | str,
        message_id: str | uuid.UUID | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """Publish ``message`` of ``tenant`` to its queue and wait for the confirm;
        returns its message_id.

        A single-workspace application passes
        :data:`~toolkit.tenants.DEFAULT_TENANT`. Raises InvalidInput (see
        :func:`outgoing`), MessageTooLarge, Unroutable (no queue bound),
        Rejected (negative confirm, e.g. the queue is full) or Unavailable.
        """
        out = outgoing(
            self.topology, message, tenant=tenant, message_id=message_id, headers=headers
        )
        self.send(out)
        return out.message_id

    def send(self, out: Outgoing) -> None:
        """Publish one prepared message with its own confirm (see :meth:`publish`)."""
        check_size(out.body, self.max_message_bytes, out.routing_key)
        for attempt in (1, 2):
            try:
                channel = self._ensure_channel()
                channel.basic_publish(
                    out.exchange, out.routing_key, out.body, out.properties(), mandatory=True
                )
                return
            except (pex.UnroutableError, pex.NackError, pex.ChannelClosedByBroker) as exc:
                if isinstance(exc, pex.ChannelClosedByBroker):
                    self._channel = None
                elif isinstance(exc, pex.NackError):
                    self.close()  # the next publish starts on a fresh channel
                raise _translate_publish_error(exc, out) from exc
            except Unavailable:
                if attempt == 2:
                    raise
            except (*CONNECTION_ERRORS, pex.AMQPError) as exc:
                log.warning("publish of %s interrupted: %s; reconnecting", out.message_id, exc)
                self.close()
                if attempt == 2:
                    raise Unavailable(
                        f"publishing to {out.routing_key!r} at "
                        f"{mask_password(self.brokers.current)}: "
                        f"{describe(exc)}"
                    ) from exc

    def publish_batch(self, messages: Sequence[Outgoing], timeout: float = 30.0) -> BatchResult:
        """Publish one message at a time, each waiting for its own confirm.

        The slow path, kept as the baseline the benchmark compares against.
        """
        return self.submit(messages, timeout).result()

    def submit(self, messages: Sequence[Outgoing], timeout: float = 30.0) -> PendingBatch:
        """:meth:`publish_batch` behind the interface of :meth:`PipelinedPublisher.submit`:
        the batch is published and confirmed before this returns."""
        return PendingBatch.settled(self._publish_each(messages, timeout))

    def _publish_each(self, messages: Sequence[Outgoing], timeout: float) -> BatchResult:
        result = BatchResult()
        deadline = time.monotonic() + timeout
        for index, out in enumerate(messages):
            if time.monotonic() > deadline:
                result.unconfirmed.extend(m.message_id for m in messages[index:])
                result.error = "timed out"
                break
            try:
                self.send(out)
                result.acked.append(out.message_id)
            except (Unroutable, Rejected, MessageTooLarge) as exc:
                result.failed[out.message_id] = str(exc)
            except Unavailable as exc:
                result.unconfirmed.extend(m.message_id for m in messages[index:])
                result.error = str(exc)
                break
        return result


def _close_on_loop(connection: pika.SelectConnection) -> None:
    if connection.is_open:
        connection.close()
    elif connection.is_closed:
        connection.ioloop.stop()


class _Batch:
    def __init__(self, messages: Sequence[Outgoing]) -> None:
        self.messages = messages
        self.next = 0
        self.in_flight: OrderedDict[int, Outgoing] = OrderedDict()
        self.returned: dict[str, str] = {}
        self.result = BatchResult()
        self.done = threading.Event()

    def finished(self) -> bool:
        return self.next >= len(self.messages) and not self.in_flight


class PendingBatch:
    """A batch handed to a publisher: :meth:`result` waits for its confirms.

    Between :meth:`PipelinedPublisher.submit` and :meth:`result` the caller
    is free to do other work (the relay claims its next batch and marks the
    previous one sent) while the broker confirms this one. Call
    :meth:`result` exactly once: until then the publisher takes no other batch.
    """

    def __init__(self, settle: Callable[[], BatchResult]) -> None:
        self._settle: Callable[[], BatchResult] | None = settle
        self._result: BatchResult | None = None

    @classmethod
    def settled(cls, result: BatchResult) -> PendingBatch:
        """A batch whose fate is already known."""
        return cls(lambda: result)

    def result(self) -> BatchResult:
        """What became of each message, once confirmed (or the submit's timeout passed)."""
        if self._settle is not None:
            settle, self._settle = self._settle, None
            self._result = settle()
        assert self._result is not None
        return self._result


class PipelinedPublisher:
    """Confirmed publishing with many messages in flight, on a thread of its own.

    :meth:`publish_batch` hands a batch to the I/O thread, which publishes up
    to ``window`` messages ahead of their confirms and sorts each confirm
    (``multiple`` included) back to its message by delivery tag. A returned
    (unroutable) message counts as failed even though the broker then acks
    it. A lost connection ends the batch: the unconfirmed messages are
    reported as such, and the next batch reconnects (to another of ``url``'s
    nodes first, when it names several). Thread-safe: batches from several
    threads run one after another.
    """

    def __init__(
        self,
        url: BrokerUrls,
        topology: Topology,
        *,
        options: ConnectionOptions | None = None,
        window: int = 1000,
        declare_topology: bool = True,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        connect_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.brokers = Brokers(url)
        self.topology = topology
        self.options = options or ConnectionOptions(name="toolkit-relay")
        self.window = max(1, window)
        self.max_message_bytes = max_message_bytes
        self.connect_timeout = connect_timeout
        self._declare = declare_topology
        self._lock = threading.Lock()
        self._connection: pika.SelectConnection | None = None
        self._channel: Any = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._open_error: str | None = None
        self._batch: _Batch | None = None
        self._tag = 0

    def __enter__(self) -> PipelinedPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        """Whether the I/O thread holds an open channel."""
        return self._ready.is_set() and self._thread is not None and self._thread.is_alive()

    # -- the caller's side -------------------------------------------------

    def publish_batch(self, messages: Sequence[Outgoing], timeout: float = 30.0) -> BatchResult:
        """Publish ``messages`` and wait (at most ``timeout`` s) for their confirms.

        Raises Unavailable only when no connection can be made (nothing was
        sent); a connection lost midway is reported in the result.
        """
        return self.submit(messages, timeout).result()

    def submit(self, messages: Sequence[Outgoing], timeout: float = 30.0) -> PendingBatch:
        """Start publishing ``messages`` on the I/O thread and return at once;
        the returned batch's ``result()`` waits for the confirms, at most
        ``timeout`` s from now. A batch submitted from another thread waits
        until this one's result was taken.

        Raises Unavailable only when no connection can be made (nothing was sent).
        """
        self._lock.acquire()
        try:
            deadline = time.monotonic() + timeout
            batch = _Batch([])
            sendable: list[Outgoing] = []
            for out in messages:
                if len(out.body) > self.max_message_bytes:
                    batch.result.failed[out.message_id] = str(
                        MessageTooLarge(len(out.body), self.max_message_bytes, out.routing_key)
                    )
                else:
                    sendable.append(out)
            if not sendable:
                self._lock.release()
                return PendingBatch.settled(batch.result)
            batch.messages = sendable
            self._ensure_connected()
            connection = self._connection
            assert connection is not None
            self._batch = batch
            try:
                connection.ioloop.add_callback_threadsafe(self._pump)
            except Exception as exc:
                self._fail_batch(batch, f"connection lost before publishing ({exc})")
        except BaseException:
            self._lock.release()
            raise
        return PendingBatch(partial(self._settle, batch, deadline, timeout))

    def _settle(self, batch: _Batch, deadline: float, timeout: float) -> BatchResult:
        """Wait for ``batch``'s confirms until ``deadline``, then free the publisher."""
        try:
            if not batch.done.wait(max(0.0, deadline - time.monotonic())):
                self._abandon(batch, f"no confirm within {timeout:g}s")
            elif _NACKED in batch.result.failed.values():
                self._stop_thread()  # the next batch starts on a fresh channel
            self._batch = None
            return batch.result
        finally:
            self._lock.release()

    def close(self) -> None:
        """Close the connection and stop the I/O thread."""
        with self._lock:
            self._stop_thread()

    def _ensure_connected(self) -> None:
        if self.connected:
            return
        self._stop_thread()
        failures: list[tuple[str, str]] = []
        for url in self.brokers.order():
            reason = self._open(url)
            if reason is None:
                self.brokers.connected(url)
                return
            log.info("publisher: RabbitMQ at %s unreachable: %s", mask_password(url), reason)
            failures.append((mask_password(url), reason))
        raise Unavailable(unreachable(failures))

    def _open(self, url: str) -> str | None:
        """Declare the topology at ``url`` and open the I/O thread's connection there;
        None once open, else why not. TopologyDrift is raised, not reported: another
        node of the same cluster would answer the same."""
        if self._declare:
            try:
                blocking = pika.BlockingConnection(parameters(url, self.options))
            except (TimeoutError, pex.AMQPError, OSError) as exc:
                return describe(exc)
            try:
                declare(blocking, self.topology)
            except Unavailable as exc:
                return str(exc)
            finally:
                close_quietly(blocking)
        self._ready.clear()
        self._open_error = None
        self._tag = 0
        try:
            connection = pika.SelectConnection(
                parameters(url, self.options),
                on_open_callback=self._on_open,
                on_open_error_callback=self._on_open_error,
                on_close_callback=self._on_close,
            )
        except (pex.AMQPError, OSError) as exc:
            return describe(exc)
        self._connection = connection
        self._thread = threading.Thread(
            target=self._run_loop, args=(connection,), name="toolkit-publisher", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(self.connect_timeout) or self._open_error:
            reason = self._open_error or f"not open after {self.connect_timeout:g}s"
            self._stop_thread()
            return reason
        return None

    def _stop_thread(self) -> None:
        connection, thread = self._connection, self._thread
        self._connection = None
        self._thread = None
        self._ready.clear()
        if connection is not None and thread is not None and thread.is_alive():
            try:
                connection.ioloop.add_callback_threadsafe(partial(_close_on_loop, connection))
            except Exception:
                log.debug("publisher loop already stopped", exc_info=True)
            thread.join(timeout=5)

    def _abandon(self, batch: _Batch, reason: str) -> None:
        """Give up on a batch: what has no confirm is unconfirmed; drop the connection."""
        self._stop_thread()
        self._fail_batch(batch, reason)

    @staticmethod
    def _fail_batch(batch: _Batch, reason: str) -> None:
        if batch.done.is_set():
            return
        result = batch.result
        result.unconfirmed.extend(out.message_id for out in batch.in_flight.values())
        result.unconfirmed.extend(out.message_id for out in batch.messages[batch.next :])
        batch.in_flight.clear()
        batch.next = len(batch.messages)
        result.error = reason
        batch.done.set()

    # -- the I/O thread ----------------------------------------------------

    def _run_loop(self, connection: pika.SelectConnection) -> None:
        try:
            connection.ioloop.start()
        except Exception:
            log.exception("publisher I/O loop failed")
        finally:
            self._ready.clear()
            # Release the loop's own wake-up socket pair now, not at garbage collection.
            connection.ioloop.close()
            batch = self._batch
            if batch is not None:
                self._fail_batch(batch, "publisher connection closed")

    def _on_open(self, connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_open_error(self, connection: pika.SelectConnection, error: BaseException) -> None:
        self._open_error = describe(error)
        self._ready.set()
        connection.ioloop.stop()

    def _on_close(self, connection: pika.SelectConnection, reason: BaseException) -> None:
        log.info("publisher connection closed: %s", reason)
        self._ready.clear()
        batch = self._batch
        if batch is not None:
            self._fail_batch(batch, f"connection lost: {describe(reason)}")
        connection.ioloop.stop()

    def _on_channel_open(self, channel: Any) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self._on_selected)

    def _on_selected(self, _frame: Any) -> None:
        self._ready.set()

    def _on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        log.info("publisher channel closed: %s", reason)
        batch = self._batch
        if batch is not None:
            self._fail_batch(batch, f"channel closed: {describe(reason)}")
        connection = self._connection
        if connection is not None and connection.is_open:
            connection.close()

    def _pump(self) -> None:
        batch = self._batch
        channel = self._channel
        if batch is None or batch.done.is_set():
            return
        if channel is None or not channel.is_open:
            self._fail_batch(batch, "channel not open")
            return
        messages = batch.messages
        while batch.next < len(messages) and len(batch.in_flight) < self.window:
            out = messages[batch.next]
            batch.next += 1
            self._tag += 1
            batch.in_flight[self._tag] = out
            channel.basic_publish(
                out.exchange, out.routing_key, out.body, out.properties(), mandatory=True
            )
        if batch.finished():
            batch.done.set()

    def _on_return(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        batch = self._batch
        if batch is not None and properties.message_id:
            batch.returned[properties.message_id] = str(
                Unroutable(method.exchange, method.routing_key, method.reply_text)
            )

    def _on_confirm(self, frame: Any) -> None:
        batch = self._batch
        if batch is None or batch.done.is_set():
            return
        method = frame.method
        acked = isinstance(method, Basic.Ack)
        tag = method.delivery_tag
        # A multiple confirm settles every tag up to its own; a single one, its own only.
        if method.multiple:
            settled = [t for t in batch.in_flight if t <= tag]
        else:
            settled = [tag] if tag in batch.in_flight else []
        for delivery_tag in settled:
            out = batch.in_flight.pop(delivery_tag)
            returned = batch.returned.pop(out.message_id, None)
            if returned is not None:
                batch.result.failed[out.message_id] = returned
            elif acked:
                batch.result.acked.append(out.message_id)
            else:
                batch.result.failed[out.message_id] = _NACKED
        self._pump()
