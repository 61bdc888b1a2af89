"""Topology as code: idempotent declaration, explicit arguments, drift reported clearly."""

from __future__ import annotations

import time
import uuid

import pika
import pytest

from toolkit.errors import ConfigurationError, InvalidInput
from toolkit.messaging import Topology, TopologyDrift
from toolkit.messaging.connection import close_quietly, connect
from toolkit.messaging.topology import declare, delete, parse_inequivalent

from .conftest import AMQP_URL, cleanup, depth, get_all


def test_declare_is_idempotent_and_every_queue_is_quorum(full_topology: Topology) -> None:
    topology = full_topology
    broker = connect(AMQP_URL)
    declare(broker, topology)
    declare(broker, topology)  # a second time: no error, nothing changes
    names = topology.queue_names()
    # 3 work queues, 2 delay queues each (fast ladder), 3 parking queues
    assert len(names) == 3 * (1 + len(topology.retry_delays) + 1)
    for name in names:
        assert depth(broker, name) == 0
    for queue in topology.declarations():
        assert queue.arguments["x-queue-type"] == "quorum"
        assert queue.arguments["x-delivery-limit"] == topology.delivery_limit
        assert queue.arguments["x-overflow"] == "reject-publish"
        if not queue.name.endswith(".parked"):
            assert queue.arguments["x-dead-letter-strategy"] == "at-least-once"
            assert "x-dead-letter-exchange" in queue.arguments
    close_quietly(broker)


def test_drift_names_the_queue_and_every_differing_argument(
    topology: Topology, broker: pika.BlockingConnection
) -> None:
    changed = Topology(
        prefix=topology.prefix,
        queues=topology.queues,
        retry_delays=topology.retry_delays,
        delivery_limit=3,
        max_length=50,
    )
    with pytest.raises(TopologyDrift) as caught:
        declare(broker, changed)
    drift = caught.value
    assert isinstance(drift, ConfigurationError)
    assert drift.kind == "queue"
    assert drift.name == topology.queue_name("audit.log")
    found = {d.name: d for d in drift.differences}
    assert set(found) == {"x-delivery-limit", "x-max-length"}
    assert "3" in found["x-delivery-limit"].declared
    assert str(topology.delivery_limit) in found["x-delivery-limit"].current
    assert "x-delivery-limit" in str(drift) and topology.queue_name("audit.log") in str(drift)
    # the broker's queue is untouched and the connection still usable
    declare(broker, topology)


def test_drift_on_a_classic_queue_where_quorum_is_declared(prefix: str) -> None:
    topo = Topology(prefix=prefix, queues=("audit.log",), retry_delays=(0.5,))
    connection = connect(AMQP_URL)
    try:
        channel = connection.channel()
        channel.queue_declare(topo.queue_name("audit.log"), durable=True)  # classic, no args
        with pytest.raises(TopologyDrift) as caught:
            declare(connection, topo)
        names = {d.name for d in caught.value.differences}
        assert "x-queue-type" in names or "x-delivery-limit" in names
        assert "classic" in str(caught.value) or "none" in str(caught.value)
    finally:
        delete(connection, topo)
        close_quietly(connection)


def test_exchange_type_drift_is_reported(prefix: str) -> None:
    topo = Topology(prefix=prefix, queues=("audit.log",), retry_delays=(0.5,))
    connection = connect(AMQP_URL)
    try:
        connection.channel().exchange_declare(topo.exchange, "topic", durable=True)
        with pytest.raises(TopologyDrift) as caught:
            declare(connection, topo)
        assert caught.value.kind == "exchange"
        assert caught.value.differences[0].name == "type"
        assert "topic" in str(caught.value)
    finally:
        delete(connection, topo)
        close_quietly(connection)


def test_parse_inequivalent_reads_the_broker_reply() -> None:
    text = (
        "PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-exchange' for queue 'q' in "
        "vhost '/': received none but current is the value 'dlx' of type 'longstr'"
    )
    parsed = parse_inequivalent(text)
    assert parsed is not None
    drift, value, present = parsed
    assert (drift.name, drift.declared, value, present) == (
        "x-dead-letter-exchange",
        "none",
        "dlx",
        True,
    )
    assert parse_inequivalent("NOT_FOUND - no queue 'x'") is None


def test_delay_queue_returns_the_message_to_its_work_queue(
    topology: Topology, broker: pika.BlockingConnection
) -> None:
    channel = broker.channel()
    channel.confirm_delivery()
    started = time.monotonic()
    channel.basic_publish(
        topology.retry_exchange,
        topology.retry_routing_key("audit.log", 0),
        b"{}",
        pika.BasicProperties(delivery_mode=2, message_id=str(uuid.uuid4())),
        mandatory=True,
    )
    got = get_all(broker, topology.queue_name("audit.log"), expect=1, timeout=5)
    assert len(got) == 1
    assert time.monotonic() - started >= topology.retry_delays[0] * 0.9


def test_bad_prefix_and_unknown_queue_are_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        Topology(prefix="bad prefix!")
    with pytest.raises(InvalidInput, match="unknown queue"):
        Topology().queue_name("nope")
    assert Topology(retry_delays=(0.25, 1.0)).retry_routing_key("audit.log", 0) == (
        "audit.log.retry.250ms"
    )


def test_cleanup_removes_everything(prefix: str) -> None:
    topo = Topology(prefix=prefix, queues=("audit.log",), retry_delays=(0.5,))
    connection = connect(AMQP_URL)
    try:
        declare(connection, topo)
    finally:
        close_quietly(connection)
    cleanup(topo)
    connection = connect(AMQP_URL)
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            connection.channel().queue_declare(topo.queue_name("audit.log"), passive=True)
    finally:
        close_quietly(connection)
