"""The transactional outbox and its relay, against real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pika
import psycopg
import pytest

from toolkit.config import Settings
from toolkit.db import Database
from toolkit.errors import Unavailable
from toolkit.messaging import (
    AuditLog,
    MessageTooLarge,
    Publisher,
    Relay,
    Topology,
    WorkflowExecute,
    outbox,
)
from toolkit.messaging.outbox import NOTIFY_CHANNEL

from ..support.tcp_proxy import TcpProxy
from . import _procs
from .conftest import AMQP_URL, Running, amqp_url_for, depth, get_all, wait_for


def event(n: int = 0) -> AuditLog:
    return AuditLog(action="user.created", entity="user", details={"n": n})


def ids_in(messages: list[tuple[Any, bytes]]) -> Counter[str]:
    return Counter(props.message_id for props, _ in messages)


def unlocked_unsent(db: Database) -> int:
    """Unsent rows no transaction holds (what a relay could claim now)."""
    with psycopg.connect(db.url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM (SELECT id FROM outbox WHERE sent_at IS NULL "
            "FOR UPDATE SKIP LOCKED) AS free"
        ).fetchone()
        conn.rollback()
    return int(row[0]) if row else 0


def test_rollback_leaves_no_message_and_commit_publishes_it(
    db: Database, topology: Topology, broker: pika.BlockingConnection
) -> None:
    with pytest.raises(RuntimeError), db.transaction() as tx:
        outbox.enqueue(tx, event(1))
        raise RuntimeError("the change failed")
    with db.transaction() as tx:
        message_id = outbox.enqueue(tx, event(2), headers={"x-trace": "t1"})
    with db.connection() as conn:
        assert outbox.stats(conn).pending == 1
    with Relay(db, AMQP_URL, topology, listen=False) as relay:
        assert relay.drain(timeout=10) == 1
    [(props, body)] = get_all(broker, topology.queue_name("audit.log"), expect=1)
    assert props.message_id == str(message_id)
    assert props.headers["x-trace"] == "t1"
    assert json.loads(body)["details"] == {"n": 2}
    with db.connection() as conn:
        row = outbox.get(conn, message_id)
        assert row.sent_at is not None
        assert outbox.stats(conn).pending == 0


def test_oversize_message_is_refused_at_enqueue(db: Database) -> None:
    with db.transaction() as tx, pytest.raises(MessageTooLarge):
        outbox.enqueue(tx, event(), max_message_bytes=10)


def test_one_notify_per_transaction_sent_at_commit(db: Database) -> None:
    with psycopg.connect(db.url, autocommit=True) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        with db.transaction() as tx:
            for n in range(50):
                outbox.enqueue(tx, event(n))
            outbox.enqueue_many(tx, [event(n) for n in range(50)])
            assert not list(listener.notifies(timeout=0.2))  # nothing before commit
        got = list(listener.notifies(timeout=0.5))
    assert len(got) == 1


def test_rows_committed_out_of_sequence_order_are_not_skipped(
    db: Database, topology: Topology, broker: pika.BlockingConnection
) -> None:
    early = psycopg.connect(db.url)
    try:
        first = outbox.enqueue(early, event(1))  # takes the lower seq, commits later
        with db.transaction() as tx:
            second = outbox.enqueue(tx, event(2))
        with Relay(db, AMQP_URL, topology, listen=False) as relay:
            assert relay.drain(timeout=10) == 1
            early.commit()
            assert relay.drain(timeout=10) == 1
    finally:
        early.close()
    got = ids_in(get_all(broker, topology.queue_name("audit.log"), expect=2))
    assert got == Counter({str(second): 1, str(first): 1})


def test_unroutable_rows_are_held_back_with_the_error_never_dropped(
    db: Database, topology: Topology
) -> None:
    with db.transaction() as tx:
        message_id = outbox.enqueue(tx, event())
        outbox.enqueue(tx, WorkflowExecute(execution_id=uuid.uuid4(), workflow_id=uuid.uuid4()))
    # this relay's topology has no workflow.execute queue: the broker returns that message
    with Relay(db, AMQP_URL, topology, listen=False) as relay:
        assert relay.run_once() == 2
        assert (relay.stats.published, relay.stats.failed) == (1, 1)
        assert relay.run_once() == 0  # held back, not retried at once
    with db.connection() as conn:
        assert outbox.get(conn, message_id).sent_at is not None
        [row] = conn.execute("SELECT id FROM outbox WHERE sent_at IS NULL").fetchall()
        row = outbox.get(conn, row[0])
    assert row.sent_at is None and row.attempts == 1
    assert "unroutable" in (row.last_error or "")


def test_sent_rows_are_pruned_after_retention(
    db: Database, topology: Topology, broker: pika.BlockingConnection
) -> None:
    with db.transaction() as tx:
        outbox.enqueue_many(tx, [event(n) for n in range(5)])
    with Relay(db, AMQP_URL, topology, listen=False) as relay:
        relay.drain(timeout=10)
    with db.connection() as conn:
        assert outbox.prune(conn, timedelta(hours=1)) == 0
        conn.execute("UPDATE outbox SET sent_at = sent_at - interval '2 hours'")
        with db.transaction() as tx:
            outbox.enqueue(tx, event(99))  # unsent: never pruned
        assert outbox.prune(conn, timedelta(hours=1)) == 5
        assert outbox.stats(conn).pending == 1


def test_relay_wakes_on_notify_without_polling(
    db: Database, topology: Topology, broker: pika.BlockingConnection, run_relay: Any
) -> None:
    relay = Relay(db, AMQP_URL, topology, poll_interval=30.0)
    run_relay(relay)
    time.sleep(0.3)  # the relay is now waiting on LISTEN
    started = time.monotonic()
    with db.transaction() as tx:
        outbox.enqueue(tx, event())
    assert len(get_all(broker, topology.queue_name("audit.log"), expect=1, timeout=5)) == 1
    assert time.monotonic() - started < 2.0


def test_several_relays_share_the_work_without_duplicates(
    db: Database, topology: Topology, broker: pika.BlockingConnection, run_relay: Any
) -> None:
    with db.transaction() as tx:
        outbox.enqueue_many(tx, [event(n) for n in range(600)])
    relays = [
        Relay(
            db,
            AMQP_URL,
            topology,
            batch_size=40,
            poll_interval=0.2,
            after_publish=lambda _rows: time.sleep(0.05),  # slow enough for all to take part
        )
        for _ in range(3)
    ]
    for relay in relays:
        run_relay(relay)
    got = ids_in(get_all(broker, topology.queue_name("audit.log"), expect=600, timeout=30))
    assert len(got) == 600 and set(got.values()) == {1}
    assert sum(1 for relay in relays if relay.stats.published) >= 2  # they shared it


def test_broker_unreachable_then_back_every_message_delivered(
    db: Database,
    topology: Topology,
    broker: pika.BlockingConnection,
    rabbit_proxy: TcpProxy,
    run_relay: Any,
) -> None:
    relay = Relay(
        db,
        amqp_url_for(rabbit_proxy.port),
        topology,
        batch_size=50,
        poll_interval=0.2,
        max_backoff=0.5,
    )
    run_relay(relay)
    expected: set[str] = set()
    with db.transaction() as tx:
        expected |= {str(i) for i in outbox.enqueue_many(tx, [event(n) for n in range(50)])}
    wait_for(lambda: relay.stats.published >= 50, timeout=10)
    rabbit_proxy.cut_all()
    rabbit_proxy.refuse_new()
    for batch in range(5):
        with db.transaction() as tx:
            new = outbox.enqueue_many(tx, [event(1000 * batch + n) for n in range(50)])
            expected |= {str(i) for i in new}
    time.sleep(1.0)
    assert relay.stats.broker_outages >= 1
    with db.connection() as conn:
        assert outbox.stats(conn).pending == 250  # held in the outbox
    rabbit_proxy.restore()
    got = ids_in(get_all(broker, topology.queue_name("audit.log"), expect=300, timeout=30))
    assert set(got) == expected  # 0 lost
    with db.connection() as conn:
        assert outbox.stats(conn).pending == 0


def test_relay_killed_between_publish_and_mark_republishes(
    db: Database, topology: Topology, broker: pika.BlockingConnection
) -> None:
    with db.transaction() as tx:
        ids = {str(i) for i in outbox.enqueue_many(tx, [event(n) for n in range(20)])}
    context = multiprocessing.get_context("spawn")
    child = context.Process(
        target=_procs.relay_dies_after_publish, args=(db.url, AMQP_URL, topology.prefix)
    )
    child.start()
    child.join(30)
    assert child.exitcode == 17
    with db.connection() as conn:
        assert outbox.stats(conn).pending == 20  # published but never marked
    # The dead relay's backend lets go of its row locks once the server notices the
    # closed socket, which a loaded machine can delay past the child's exit.
    wait_for(lambda: unlocked_unsent(db) == 20, timeout=30)
    with Relay(db, AMQP_URL, topology, listen=False) as relay:
        assert relay.drain(timeout=10) == 20
    got = ids_in(get_all(broker, topology.queue_name("audit.log"), expect=40))
    assert set(got) == ids and set(got.values()) == {2}  # every one twice: the inbox's job


def test_drain_raises_unavailable_when_the_broker_stays_down(
    db: Database, topology: Topology, rabbit_proxy: TcpProxy
) -> None:
    rabbit_proxy.refuse_new()
    with db.transaction() as tx:
        outbox.enqueue(tx, event())
    with (
        Relay(db, amqp_url_for(rabbit_proxy.port), topology, listen=False) as relay,
        pytest.raises(Unavailable),
    ):
        relay.drain(timeout=0.5)
    with db.connection() as conn:
        assert outbox.stats(conn).pending == 1


def test_blocking_publisher_can_drive_the_relay(
    db: Database, topology: Topology, broker: pika.BlockingConnection, msettings: Settings
) -> None:
    with db.transaction() as tx:
        outbox.enqueue_many(tx, [event(n) for n in range(30)])
    publisher = Publisher(msettings.amqp_url, topology)
    with Relay(db, AMQP_URL, topology, publisher=publisher, listen=False) as relay:
        assert relay.drain(timeout=10) == 30
    assert depth(broker, topology.queue_name("audit.log")) == 30
    assert isinstance(threading.current_thread(), threading.Thread)
    assert Running  # keep the helper import used
