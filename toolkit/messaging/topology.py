"""Topology as code: every exchange and queue the toolkit uses, declared idempotently.

For each logical queue (``workflow.execute``, ``notification.send``,
``audit.log``), with the run's prefix ``P``:

* the work queue ``P<queue>``: a quorum queue bound to the work exchange
  ``Ptoolkit.work`` (direct) with routing key ``<queue>``;
* the retry ladder, held by the broker: one delay queue per step,
  ``P<queue>.retry.<delay>``, bound to ``Ptoolkit.retry`` with key
  ``<queue>.retry.<delay>``; its ``x-message-ttl`` is the delay and its
  dead-letter route leads back to the work exchange with key ``<queue>``;
* the parking queue ``P<queue>.parked``, bound to the dead-letter exchange
  ``Ptoolkit.dlx`` with key ``<queue>``: messages that exhausted the ladder,
  failed to decode, or hit the broker's delivery limit.

Every argument is explicit (queue type, delivery limit, dead-letter exchange
and key, ``dead-letter-strategy=at-least-once``, ``overflow=reject-publish``,
``max-length``), so the behaviour is the same on RabbitMQ 3.10 and on 4.x
whose quorum defaults differ (4.0 sets a delivery limit of 20 by default).

On a RabbitMQ cluster every quorum queue is replicated to ``replicas``
nodes (``x-quorum-initial-group-size``; unset, the broker's
``quorum_cluster_size``, 3 by default, decides): a queue keeps working,
nothing confirmed lost, while a minority of its replicas is down. The group
is chosen when the queue is created, so declare on the formed cluster.

Redeclaring is a no-op. Declaring against a broker whose exchange or queue
has other arguments raises :class:`~toolkit.errors.TopologyDrift`
listing every differing argument, not pika's bare PRECONDITION_FAILED.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions as pex

from toolkit.errors import ArgumentDrift, InvalidInput, TopologyDrift, bounded_repr
from toolkit.messaging.connection import CONNECTION_ERRORS, translate

log = logging.getLogger(__name__)

WORK_QUEUES = ("workflow.execute", "notification.send", "audit.log")
DEFAULT_RETRY_DELAYS = (1.0, 10.0, 60.0)
DEFAULT_DELIVERY_LIMIT = 10
DEFAULT_MAX_LENGTH = 1_000_000

_PREFIX = re.compile(r"^[A-Za-z0-9_.-]{0,64}$")
_QUEUE = re.compile(r"^[a-z][a-z0-9_.-]{0,199}$")


def delay_label(seconds: float) -> str:
    """A delay as it appears in names: ``250ms``, ``1s``, ``60s``."""
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


@dataclass(frozen=True)
class Exchange:
    """An exchange to declare."""

    name: str
    type: str = "direct"


@dataclass(frozen=True)
class Queue:
    """A queue to declare, with its arguments and bindings (exchange, routing key)."""

    name: str
    arguments: Mapping[str, Any]
    bindings: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Topology:
    """The exchanges and queues of one deployment (or one test run, by prefix).

    ``retry_delays`` are the ladder's steps in seconds; ``delivery_limit``
    is the broker-side safety net against crash loops (a message delivered
    that many times without an ack is dead-lettered to its parking queue).
    """

    prefix: str = ""
    queues: tuple[str, ...] = WORK_QUEUES
    retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT
    max_length: int = DEFAULT_MAX_LENGTH
    extra_arguments: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per logical queue, arguments added to (or replacing) its work queue's."""
    replicas: int | None = None
    """Cluster nodes holding each quorum queue (``x-quorum-initial-group-size``), e.g. 3
    on a three-node cluster; None leaves it to the broker. A broker with fewer nodes
    uses all it has. Part of a queue's identity: changing it on existing queues is
    a :class:`~toolkit.errors.TopologyDrift`."""

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise InvalidInput(
                "queue prefix must be up to 64 of A-Z a-z 0-9 _ . -, "
                f"got {bounded_repr(self.prefix)}",
                field="queue_prefix",
                value=self.prefix,
            )
        for queue in self.queues:
            if not _QUEUE.match(queue):
                raise InvalidInput(
                    f"bad logical queue name {bounded_repr(queue)}", field="queues", value=queue
                )
        if any(delay <= 0 for delay in self.retry_delays):
            raise InvalidInput("retry delays must be > 0 seconds", field="retry_delays")
        if self.delivery_limit < 1 or self.max_length < 1:
            raise InvalidInput("delivery_limit and max_length must be >= 1")
        if self.replicas is not None and self.replicas < 1:
            raise InvalidInput("replicas must be >= 1 (or None)", field="replicas")

    # -- names -----------------------------------------------------------

    @property
    def exchange(self) -> str:
        """The work exchange (direct): routing key = logical queue name."""
        return f"{self.prefix}toolkit.work"

    @property
    def retry_exchange(self) -> str:
        """The exchange in front of the delay queues."""
        return f"{self.prefix}toolkit.retry"

    @property
    def dead_letter_exchange(self) -> str:
        """The exchange in front of the parking queues."""
        return f"{self.prefix}toolkit.dlx"

    def queue_name(self, queue: str) -> str:
        """The broker name of logical ``queue``'s work queue."""
        self.check(queue)
        return f"{self.prefix}{queue}"

    def parking_queue(self, queue: str) -> str:
        """The broker name of ``queue``'s parking queue."""
        return f"{self.queue_name(queue)}.parked"

    def retry_routing_key(self, queue: str, step: int) -> str:
        """The routing key (on :attr:`retry_exchange`) of ladder step ``step`` (0-based)."""
        return f"{queue}.retry.{delay_label(self.retry_delays[step])}"

    def retry_queue(self, queue: str, step: int) -> str:
        """The broker name of ladder step ``step``'s delay queue."""
        return f"{self.prefix}{self.retry_routing_key(queue, step)}"

    def check(self, queue: str) -> str:
        """``queue`` if it is one of this topology's logical queues; InvalidInput otherwise."""
        if queue not in self.queues:
            raise InvalidInput(
                f"unknown queue {bounded_repr(queue)}; the topology has {', '.join(self.queues)}",
                field="queue",
                value=queue,
            )
        return queue

    # -- declarations ----------------------------------------------------

    def exchanges(self) -> list[Exchange]:
        """Every exchange, in declaration order."""
        return [
            Exchange(self.exchange),
            Exchange(self.retry_exchange),
            Exchange(self.dead_letter_exchange),
        ]

    def _quorum(self) -> dict[str, Any]:
        replicated = {} if self.replicas is None else {"x-quorum-initial-group-size": self.replicas}
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
            "x-max-length": self.max_length,
            "x-overflow": "reject-publish",
            **replicated,
        }

    def declarations(self) -> list[Queue]:
        """Every queue with its arguments and bindings, in declaration order."""
        out: list[Queue] = []
        for queue in self.queues:
            work = {
                **self._quorum(),
                "x-dead-letter-exchange": self.dead_letter_exchange,
                "x-dead-letter-routing-key": queue,
                "x-dead-letter-strategy": "at-least-once",
                **self.extra_arguments.get(queue, {}),
            }
            out.append(Queue(self.queue_name(queue), work, ((self.exchange, queue),)))
            for step, delay in enumerate(self.retry_delays):
                delayed = {
                    **self._quorum(),
                    "x-message-ttl": round(delay * 1000),
                    "x-dead-letter-exchange": self.exchange,
                    "x-dead-letter-routing-key": queue,
                    "x-dead-letter-strategy": "at-least-once",
                }
                key = self.retry_routing_key(queue, step)
                out.append(
                    Queue(self.retry_queue(queue, step), delayed, ((self.retry_exchange, key),))
                )
            out.append(
                Queue(
                    self.parking_queue(queue),
                    self._quorum(),
                    ((self.dead_letter_exchange, queue),),
                )
            )
        return out

    def queue_names(self) -> list[str]:
        """Every queue's broker name."""
        return [queue.name for queue in self.declarations()]


# -- declaring, and explaining drift --------------------------------------

_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for (?P<kind>queue|exchange) '(?P<name>.*)' "
    r"in vhost '[^']*': received (?P<received>.+) but current is (?P<current>.+)$"
)
_TYPED = re.compile(r"^the value '(?P<value>.*)' of type '(?P<type>[^']+)'$")
_INTEGER_TYPES = {"long", "signedint", "short", "byte", "unsignedint", "unsignedshort"}


def _parse_value(text: str) -> tuple[str, Any, bool]:
    """(printable, python value, present) of a value in a PRECONDITION_FAILED text."""
    text = text.strip()
    if text == "none":
        return "none", None, False
    typed = _TYPED.match(text)
    if typed:
        raw, kind = typed["value"], typed["type"]
        value: Any = raw
        if kind in _INTEGER_TYPES:
            value = int(raw)
        elif kind == "bool":
            value = raw == "true"
        elif kind in ("double", "float"):
            value = float(raw)
        return f"{raw!r} ({kind})", value, True
    raw = text.strip("'")
    if raw in ("true", "false"):
        return raw, raw == "true", True
    return repr(raw), raw, True


def parse_inequivalent(reply_text: str) -> tuple[ArgumentDrift, Any, bool] | None:
    """The drift named by a PRECONDITION_FAILED reply, the broker's value, and whether set."""
    match = _INEQUIVALENT.search(reply_text)
    if match is None:
        return None
    received, _, _ = _parse_value(match["received"])
    current, value, present = _parse_value(match["current"])
    return ArgumentDrift(match["arg"], received, current), value, present


def _like(declared: Any, value: Any) -> Any:
    """The broker's ``value`` converted to the type of our declared value where it fits."""
    if isinstance(declared, int) and not isinstance(declared, bool) and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    return value


def declare(connection: pika.BlockingConnection, topology: Topology) -> None:
    """Declare every exchange, queue and binding of ``topology`` (idempotent).

    Raises :class:`TopologyDrift` naming the exchange or queue and each
    argument whose broker value differs, and Unavailable when the
    connection fails.
    """
    context = "declaring the RabbitMQ topology"
    try:
        channel = connection.channel()
        for exchange in topology.exchanges():
            channel = _declare_exchange(connection, channel, exchange)
        for queue in topology.declarations():
            channel = _declare_queue(connection, channel, queue)
            for exchange_name, key in queue.bindings:
                channel.queue_bind(queue.name, exchange_name, routing_key=key)
        channel.close()
    except TopologyDrift:
        raise
    except (*CONNECTION_ERRORS, pex.AMQPError) as exc:
        raise translate(exc, context) from exc


def _declare_exchange(connection: pika.BlockingConnection, channel: Any, exchange: Exchange) -> Any:
    try:
        channel.exchange_declare(exchange.name, exchange.type, durable=True)
        return channel
    except pex.ChannelClosedByBroker as exc:
        parsed = parse_inequivalent(exc.reply_text) if exc.reply_code == 406 else None
        if parsed is None:
            raise
        raise TopologyDrift("exchange", exchange.name, [parsed[0]]) from None


def _declare_queue(connection: pika.BlockingConnection, channel: Any, queue: Queue) -> Any:
    try:
        channel.queue_declare(queue.name, durable=True, arguments=dict(queue.arguments))
        return channel
    except pex.ChannelClosedByBroker as exc:
        first = parse_inequivalent(exc.reply_text) if exc.reply_code == 406 else None
        if first is None:
            raise
    # The broker names one differing argument per refusal. To list them all,
    # declare again with the broker's value for each one found: the declare
    # that finally matches is a no-op on the existing queue.
    differences = [first[0]]
    arguments = dict(queue.arguments)
    durable = True
    found = first
    for _ in range(2 * len(arguments) + 4):
        drift, value, present = found
        if drift.name == "durable":
            durable = bool(value)
        elif present:
            arguments[drift.name] = _like(queue.arguments.get(drift.name), value)
        else:
            arguments.pop(drift.name, None)
        probe = connection.channel()
        try:
            probe.queue_declare(queue.name, durable=durable, arguments=arguments)
            probe.close()
            break
        except pex.ChannelClosedByBroker as exc:
            nxt = parse_inequivalent(exc.reply_text) if exc.reply_code == 406 else None
            if nxt is None or any(d.name == nxt[0].name for d in differences):
                break
            differences.append(nxt[0])
            found = nxt
    raise TopologyDrift("queue", queue.name, differences)


def delete(connection: pika.BlockingConnection, topology: Topology) -> None:
    """Delete every queue and exchange of ``topology`` (for tests and teardown)."""
    channel = connection.channel()
    for name in topology.queue_names():
        channel.queue_delete(name)
    for exchange in topology.exchanges():
        channel.exchange_delete(exchange.name)
    channel.close()


def describe(topology: Topology) -> Sequence[str]:
    """One line per exchange and queue, for ``toolkit worker --show-topology``."""
    lines = [f"exchange {e.name} ({e.type}, durable)" for e in topology.exchanges()]
    for queue in topology.declarations():
        args = ", ".join(f"{k}={v}" for k, v in sorted(queue.arguments.items()))
        binds = ", ".join(f"{ex}:{key}" for ex, key in queue.bindings)
        lines.append(f"queue {queue.name} [{args}] <- {binds}")
    return lines
