"""Confirmed publishing: properties, unroutable and oversize errors, reconnects, pipelining."""

from __future__ import annotations

import json
import time
import uuid

import pika
import pytest

from toolkit.errors import InvalidInput, Unavailable
from toolkit.messaging import (
    AuditLog,
    MessageTooLarge,
    PipelinedPublisher,
    Publisher,
    Rejected,
    Topology,
    Unroutable,
)
from toolkit.messaging.connection import ConnectionOptions
from toolkit.messaging.models import TENANT_HEADER
from toolkit.messaging.publisher import Outgoing, outgoing
from toolkit.tenants import DEFAULT_TENANT

from ..support.tcp_proxy import TcpProxy
from .conftest import AMQP_URL, amqp_url_for, cleanup, depth, get_all

EVENT = AuditLog(action="user.created", entity="user")


def test_publish_sets_json_persistent_id_type_and_timestamp(
    topology: Topology, broker: pika.BlockingConnection
) -> None:
    with Publisher(AMQP_URL, topology) as publisher:
        message_id = publisher.publish(EVENT, tenant=DEFAULT_TENANT, headers={"x-trace": "abc"})
    [(props, body)] = get_all(broker, topology.queue_name("audit.log"), expect=1)
    assert props.content_type == "application/json"
    assert props.delivery_mode == 2
    assert props.message_id == message_id
    uuid.UUID(message_id)
    assert abs(props.timestamp - time.time()) < 60
    assert props.type == "audit.log.v1"
    assert props.headers["x-trace"] == "abc"
    assert props.headers[TENANT_HEADER] == str(DEFAULT_TENANT)
    data = json.loads(body)
    assert data["action"] == "user.created" and data["schema_version"] == 1


def test_the_tenant_header_comes_from_tenant_never_from_the_callers_headers(
    topology: Topology, broker: pika.BlockingConnection
) -> None:
    tenant = uuid.uuid4()
    forged = {TENANT_HEADER: str(uuid.uuid4())}
    with Publisher(AMQP_URL, topology) as publisher:
        with pytest.raises(InvalidInput, match=TENANT_HEADER):
            publisher.publish(EVENT, tenant=tenant, headers=forged)
        with pytest.raises(InvalidInput, match="tenant must be a UUID"):
            publisher.publish(EVENT, tenant="workspace-1")
        publisher.publish(EVENT, tenant=str(tenant).upper())
    with pytest.raises(InvalidInput, match=TENANT_HEADER):
        outgoing(topology, EVENT, tenant=tenant, headers=forged)
    [(props, _)] = get_all(broker, topology.queue_name("audit.log"), expect=1)
    assert props.headers[TENANT_HEADER] == str(tenant)


def test_unroutable_message_raises_a_clear_error(topology: Topology, broker: object) -> None:
    stray = Outgoing(topology.exchange, "no.such.queue", b"{}", str(uuid.uuid4()), "t", 0)
    with Publisher(AMQP_URL, topology) as publisher:
        with pytest.raises(Unroutable, match=r"no\.such\.queue"):
            publisher.send(stray)
        publisher.publish(EVENT, tenant=DEFAULT_TENANT)  # the publisher still works afterwards
    with PipelinedPublisher(AMQP_URL, topology) as pipelined:
        ok = outgoing(topology, EVENT, tenant=DEFAULT_TENANT)
        result = pipelined.publish_batch([stray, ok])
    assert result.acked == [ok.message_id]
    assert "unroutable" in result.failed[stray.message_id]


def test_oversize_message_is_refused_before_sending(
    topology: Topology, broker: pika.BlockingConnection
) -> None:
    big = AuditLog(action="file.stored", entity="file", details={"blob": "x" * 5000})
    with Publisher(AMQP_URL, topology, max_message_bytes=4096) as publisher:
        with pytest.raises(MessageTooLarge, match="over the 4096-byte limit") as caught:
            publisher.publish(big, tenant=DEFAULT_TENANT)
        assert isinstance(caught.value, InvalidInput)
    with PipelinedPublisher(AMQP_URL, topology, max_message_bytes=4096) as pipelined:
        result = pipelined.publish_batch([outgoing(topology, big, tenant=DEFAULT_TENANT)])
    assert not result.acked and "4096-byte limit" in next(iter(result.failed.values()))
    assert depth(broker, topology.queue_name("audit.log")) == 0


def test_unknown_queue_is_invalid_input(prefix: str) -> None:
    topo = Topology(prefix=prefix, queues=("workflow.execute",), retry_delays=(1.0,))
    with pytest.raises(InvalidInput, match=r"unknown queue 'audit\.log'"):
        outgoing(topo, EVENT, tenant=DEFAULT_TENANT)


def test_full_queue_rejects_publish_with_a_negative_confirm(prefix: str) -> None:
    topo = Topology(prefix=prefix, queues=("audit.log",), retry_delays=(1.0,), max_length=3)
    try:
        # A quorum queue applies the limit once it is over it: one more gets in.
        with Publisher(AMQP_URL, topo) as publisher, pytest.raises(Rejected, match="negative"):
            for _ in range(5):
                publisher.publish(EVENT, tenant=DEFAULT_TENANT)
        with PipelinedPublisher(AMQP_URL, topo) as pipelined:
            result = pipelined.publish_batch([outgoing(topo, EVENT, tenant=DEFAULT_TENANT)])
        assert not result.acked and result.failed
    finally:
        cleanup(topo)


def test_publisher_reconnects_after_the_connection_is_cut(
    topology: Topology, broker: pika.BlockingConnection, rabbit_proxy: TcpProxy
) -> None:
    url = amqp_url_for(rabbit_proxy.port)
    with Publisher(url, topology) as publisher:
        publisher.publish(EVENT, tenant=DEFAULT_TENANT)
        assert rabbit_proxy.cut_all() >= 1
        publisher.publish(EVENT, tenant=DEFAULT_TENANT)  # reconnects under the hood
    with PipelinedPublisher(url, topology) as pipelined:
        result = pipelined.publish_batch([outgoing(topology, EVENT, tenant=DEFAULT_TENANT)])
        assert len(result.acked) == 1
        rabbit_proxy.cut_all()
        time.sleep(0.1)
        result = pipelined.publish_batch([outgoing(topology, EVENT, tenant=DEFAULT_TENANT)])
        assert len(result.acked) == 1
    assert len(get_all(broker, topology.queue_name("audit.log"), expect=4)) == 4


def test_unreachable_broker_raises_unavailable_quickly(
    topology: Topology, rabbit_proxy: TcpProxy
) -> None:
    rabbit_proxy.refuse_new()
    url = amqp_url_for(rabbit_proxy.port)
    started = time.monotonic()
    with (
        Publisher(url, topology) as publisher,
        pytest.raises(Unavailable, match="unreachable") as e,
    ):
        publisher.publish(EVENT, tenant=DEFAULT_TENANT)
    assert "guest:***@" in str(e.value)  # the password is masked
    with PipelinedPublisher(url, topology) as pipelined, pytest.raises(Unavailable):
        pipelined.publish_batch([outgoing(topology, EVENT, tenant=DEFAULT_TENANT)])
    assert time.monotonic() - started < 5


def test_cut_in_the_middle_of_a_batch_reports_unconfirmed(
    topology: Topology, broker: pika.BlockingConnection, rabbit_proxy: TcpProxy
) -> None:
    url = amqp_url_for(rabbit_proxy.port)
    messages = [outgoing(topology, EVENT, tenant=DEFAULT_TENANT) for _ in range(3000)]
    rabbit_proxy.add_latency(0.002)
    with PipelinedPublisher(url, topology, window=200) as pipelined:
        pipelined.publish_batch(messages[:1])

        import threading

        threading.Timer(0.05, rabbit_proxy.cut_all).start()
        result = pipelined.publish_batch(messages[1:])
    assert result.unconfirmed, "the cut came too late to interrupt the batch"
    assert result.error
    assert len(result.acked) + len(result.unconfirmed) + len(result.failed) == 2999


def test_pipelined_batch_is_all_confirmed(
    topology: Topology, broker: pika.BlockingConnection
) -> None:
    messages = [outgoing(topology, EVENT, tenant=DEFAULT_TENANT) for _ in range(2000)]
    with PipelinedPublisher(
        AMQP_URL, topology, window=300, options=ConnectionOptions(name="test")
    ) as pipelined:
        result = pipelined.publish_batch(messages)
    assert sorted(result.acked) == sorted(m.message_id for m in messages)
    assert not result.failed and not result.unconfirmed
    assert depth(broker, topology.queue_name("audit.log")) == 2000
