"""The partitioned inbox (migration 0012) through the broker and a worker.

A record is keyed by the message's creation time, the AMQP timestamp the
relay sets from its outbox row: a redelivery carries the same, so it is
still absorbed. A message created in a range the inbox no longer keeps, or
one without a timestamp, is parked at once, never applied.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pika
import psycopg
import pytest

from toolkit.db import Database
from toolkit.db.partitions import maintain
from toolkit.messaging import AuditLog, Relay, Topology, Worker, inbox, outbox
from toolkit.tenants import DEFAULT_TENANT

from . import _procs
from .conftest import AMQP_URL, get_all, raw_publish, wait_for
from .test_consumer import effect_count

EVENT = AuditLog(action="user.created", entity="user")
CONSUMER = "test-consumer"


def audit_worker(db: Database, topology: Topology) -> Worker:
    return Worker(
        AMQP_URL, topology, {"audit.log": inbox.transactional(db, CONSUMER, _procs.record_effect)}
    )


def test_a_relayed_message_published_again_after_a_lost_commit_is_applied_once(
    effects: Database,
    topology: Topology,
    superuser: psycopg.Connection[Any],
    run_worker: Any,
) -> None:
    worker = audit_worker(effects, topology)
    run_worker(worker)
    with effects.transaction() as tx:
        message_id = outbox.enqueue(tx, EVENT)
    with Relay(effects, AMQP_URL, topology, listen=False) as relay:
        assert relay.drain() == 1
        wait_for(lambda: worker.stats.handled == 1)
        # The relay's commit "lost": the row is unsent again and goes out a second time,
        # with the same created_at, hence the same AMQP timestamp.
        superuser.execute("UPDATE outbox SET sent_at = NULL WHERE id = %s", [message_id])
        assert relay.drain() == 1
    wait_for(lambda: worker.stats.handled == 2)
    assert worker.stats.duplicates == 1
    assert effect_count(effects, message_id) == 1
    (created,) = superuser.execute("SELECT created_at FROM outbox").fetchone()  # type: ignore[misc]
    recorded = superuser.execute("SELECT created_at FROM inbox").fetchall()
    assert recorded == [(created.replace(microsecond=0),)]


def publish_created_at(
    broker: pika.BlockingConnection, topology: Topology, message_id: str, created: datetime | None
) -> None:
    """Publish an audit.log message as a producer outside the toolkit would."""
    channel = broker.channel()
    channel.confirm_delivery()
    channel.basic_publish(
        topology.exchange,
        "audit.log",
        EVENT.body(),
        pika.BasicProperties(
            delivery_mode=2,
            message_id=message_id,
            timestamp=None if created is None else int(created.timestamp()),
            headers={"x-tenant-id": str(DEFAULT_TENANT)},
        ),
        mandatory=True,
    )
    channel.close()


def test_a_redelivery_created_before_every_kept_partition_is_parked_never_applied(
    effects: Database,
    topology: Topology,
    broker: pika.BlockingConnection,
    superuser: psycopg.Connection[Any],
    direct_database_url: str,
    run_worker: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = audit_worker(effects, topology)
    run_worker(worker)
    yesterday = datetime.now(UTC) - timedelta(days=1)
    message_id = str(uuid.uuid4())
    publish_created_at(broker, topology, message_id, yesterday)
    wait_for(lambda: worker.stats.handled == 1)
    assert effect_count(effects, message_id) == 1
    # Retention 0: maintain drops every inbox partition that ended before now, and the
    # record of yesterday's message with it.
    superuser.execute(
        "UPDATE toolkit_partitions.policy SET retention = '0' WHERE parent = 'public.inbox'"
    )
    assert any("inbox_before_" in name for name in maintain(direct_database_url).dropped)
    with caplog.at_level(logging.INFO, logger="toolkit"):
        publish_created_at(broker, topology, message_id, yesterday)
        parked = get_all(broker, topology.parking_queue("audit.log"), expect=1, timeout=10)
    assert parked[0][0].message_id == message_id
    assert parked[0][0].headers["x-parked-reason"] == "inbox-expired"
    assert effect_count(effects, message_id) == 1  # refused, not applied again
    said = [r for r in caplog.records if message_id in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.ERROR, said
    assert "before the oldest partition the inbox keeps" in said[0].getMessage()
    assert worker.stats.parked == 1 and worker.stats.retried == 0


def test_a_message_without_a_timestamp_is_parked_never_applied(
    effects: Database,
    topology: Topology,
    broker: pika.BlockingConnection,
    run_worker: Any,
) -> None:
    worker = audit_worker(effects, topology)
    run_worker(worker)
    message_id = str(uuid.uuid4())
    raw_publish(broker, topology, EVENT.body(), message_id)  # no timestamp property
    parked = get_all(broker, topology.parking_queue("audit.log"), expect=1, timeout=10)
    props = parked[0][0]
    assert props.headers["x-parked-reason"] == "missing-timestamp"
    assert props.timestamp is None  # kept absent: a replay is refused the same way
    assert effect_count(effects, message_id) == 0
    with effects.connection() as conn:
        assert not inbox.seen(conn, CONSUMER, message_id)
