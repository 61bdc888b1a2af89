"""Several broker addresses (a cluster's nodes): the publisher, the relay and the worker
use a live one and move to another when theirs dies; quorum queues declare their
replication. Against the machine's RabbitMQ, the dead address being a closed port or
the loopback proxy cut off (the cluster itself runs in tests/cluster)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pydantic import ValidationError

from toolkit.config import Settings, split_amqp_urls
from toolkit.db import Database
from toolkit.errors import InvalidInput, TopologyDrift, Unavailable
from toolkit.messaging import (
    AuditLog,
    PipelinedPublisher,
    Publisher,
    Relay,
    Topology,
    Worker,
    inbox,
    outbox,
)
from toolkit.messaging.connection import Brokers, close_quietly, connect
from toolkit.messaging.publisher import outgoing
from toolkit.messaging.topology import declare
from toolkit.tenants import DEFAULT_TENANT

from ..support.tcp_proxy import TcpProxy
from . import _procs
from .conftest import AMQP_URL, FAST_LADDER, amqp_url_for, cleanup, depth, wait_for

CLOSED = amqp_url_for(1)  # nothing listens on port 1
EVENT = AuditLog(action="user.created", entity="user")


def test_a_list_splits_before_each_scheme_never_inside_a_password() -> None:
    value = "amqp://u:p,w@h1:5672/%2F, amqp://u:p;x@h2:5672/%2F;amqps://h3/%2F"
    assert split_amqp_urls(value) == (
        "amqp://u:p,w@h1:5672/%2F",
        "amqp://u:p;x@h2:5672/%2F",
        "amqps://h3/%2F",
    )
    settings = Settings(amqp_url=value)
    assert settings.amqp_urls == split_amqp_urls(value)
    assert Brokers([AMQP_URL, f" {CLOSED} "]).urls == (AMQP_URL, CLOSED)
    with pytest.raises(ValidationError, match="amqp://"):
        Settings(amqp_url="amqp://h1/%2F,http://h2/")


def test_the_settings_repr_masks_every_password_of_a_list() -> None:
    settings = Settings(amqp_url="amqp://u:first-secret@h1/%2F,amqp://u:second-secret@h2/%2F")
    shown = repr(settings)
    assert "secret" not in shown
    assert "u:***@h1" in shown and "u:***@h2" in shown  # each node still named


def test_an_address_that_does_not_answer_is_skipped(topology: Topology) -> None:
    with Publisher([CLOSED, AMQP_URL], topology) as publisher:
        publisher.publish(EVENT, tenant=DEFAULT_TENANT)
        assert publisher.brokers.current == AMQP_URL
    with PipelinedPublisher(f"{CLOSED},{AMQP_URL}", topology) as pipelined:
        result = pipelined.publish_batch([outgoing(topology, EVENT, tenant=DEFAULT_TENANT)])
        assert len(result.acked) == 1
        assert pipelined.brokers.current == AMQP_URL
    connection = connect(AMQP_URL)
    try:
        assert depth(connection, topology.queue_name("audit.log")) == 2
    finally:
        close_quietly(connection)


def test_no_address_answering_names_each_without_its_password(topology: Topology) -> None:
    urls = "amqp://guest:pw-one@127.0.0.1:1/%2F,amqp://guest:pw-two@127.0.0.1:2/%2F"
    with Publisher(urls, topology) as publisher, pytest.raises(Unavailable) as caught:
        publisher.publish(EVENT, tenant=DEFAULT_TENANT)
    text = str(caught.value)
    assert "each of 2 addresses" in text
    assert "127.0.0.1:1/" in text and "127.0.0.1:2/" in text
    assert "pw-" not in text


def test_the_relay_and_the_worker_move_to_a_live_address_when_theirs_dies(
    effects: Database,
    topology: Topology,
    rabbit_proxy: TcpProxy,
    run_relay: Any,
    run_worker: Any,
) -> None:
    """Both start on the proxy (the first address); the proxy then resets every
    connection and refuses new ones for good: the flow goes on through the second."""
    urls = [amqp_url_for(rabbit_proxy.port), AMQP_URL]
    relay = Relay(effects, urls, topology, batch_size=50, poll_interval=0.1)
    apply = inbox.transactional(effects, "brokers-test", _procs.record_effect)
    worker = Worker(urls, topology, {"audit.log": apply}, prefetch=20, concurrency=2)
    run_relay(relay)
    run_worker(worker)

    def enqueue(count: int) -> set[str]:
        with effects.transaction() as tx:
            return {str(i) for i in outbox.enqueue_many(tx, [EVENT] * count)}

    def applied() -> int:
        with effects.connection() as conn:
            row = conn.execute("SELECT count(*) FROM test_effects").fetchone()
        return int(row[0]) if row else 0

    ids = enqueue(50)
    wait_for(lambda: applied() >= 50, timeout=20)
    assert worker.brokers.current == urls[0]
    assert relay.publisher.brokers.current == urls[0]
    rabbit_proxy.cut_all()
    rabbit_proxy.refuse_new()
    ids |= enqueue(50)
    wait_for(lambda: applied() >= 100, timeout=30)
    time.sleep(0.5)  # a late duplicate would land now
    with effects.connection() as conn:
        counts = dict(
            conn.execute(
                "SELECT message_id::text, count(*) FROM test_effects GROUP BY message_id"
            ).fetchall()
        )
    assert set(counts) == ids and set(counts.values()) == {1}
    assert worker.stats.reconnects >= 1
    assert worker.brokers.current == AMQP_URL
    assert relay.publisher.brokers.current == AMQP_URL


def test_replicas_declare_the_quorum_group_size(prefix: str) -> None:
    """On one node the group is that node; changing the size of existing queues is drift."""
    replicated = Topology(
        prefix=prefix, queues=("audit.log",), retry_delays=FAST_LADDER, replicas=3
    )
    assert all(
        queue.arguments["x-quorum-initial-group-size"] == 3 for queue in replicated.declarations()
    )
    plain = Topology(prefix=prefix, queues=("audit.log",), retry_delays=FAST_LADDER)
    assert all("x-quorum-initial-group-size" not in q.arguments for q in plain.declarations())
    connection = connect(AMQP_URL)
    try:
        declare(connection, replicated)
        declare(connection, replicated)  # idempotent
        with pytest.raises(TopologyDrift) as caught:
            declare(connection, plain)
        assert "x-quorum-initial-group-size" in {d.name for d in caught.value.differences}
    finally:
        close_quietly(connection)
        cleanup(replicated)


def test_replicas_must_be_positive() -> None:
    with pytest.raises(InvalidInput, match="replicas"):
        Topology(replicas=0)
    with pytest.raises(ValidationError):
        Settings(amqp_quorum_replicas=0)
    assert Settings(amqp_quorum_replicas=3).amqp_quorum_replicas == 3
