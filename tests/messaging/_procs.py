"""Relays and workers run in child processes (spawn), to be killed or signalled."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from toolkit.config import load_settings
from toolkit.db import Connection, Database
from toolkit.messaging import Delivery, Relay, Topology, Worker, inbox

FAST_LADDER = (0.2, 0.4)


def _db(database_url: str) -> Database:
    return Database(load_settings(database_url=database_url, pool_min_size=0, pool_max_size=4))


def record_effect(tx: Connection, delivery: Delivery) -> None:
    """The effect tests count: one row per application of a message."""
    tx.execute(
        "INSERT INTO test_effects (message_id, queue, payload) VALUES (%s, %s, %s::jsonb)",
        (delivery.message_id, delivery.queue, delivery.message.model_dump_json()),
    )


def relay_dies_after_publish(database_url: str, amqp_url: str, prefix: str) -> None:
    """Publish one batch, then die before marking it sent (exit code 17)."""

    def die(_rows: Sequence[Any]) -> None:
        os._exit(17)

    relay = Relay(
        _db(database_url),
        amqp_url,
        Topology(prefix=prefix, queues=("audit.log",), retry_delays=FAST_LADDER),
        after_publish=die,
        listen=False,
    )
    relay.run_once()
    os._exit(0)  # not reached when there was a batch


def worker_dies_after_effect(database_url: str, amqp_url: str, prefix: str) -> None:
    """Apply one message's effect (committed, inbox recorded), then die before the ack."""
    db = _db(database_url)
    apply = inbox.transactional(db, "test-consumer", record_effect)

    def handle(delivery: Delivery) -> None:
        apply(delivery)
        os._exit(23)

    worker = Worker(
        amqp_url,
        Topology(prefix=prefix, queues=("audit.log",), retry_delays=FAST_LADDER),
        {"audit.log": handle},
        prefetch=1,
        concurrency=1,
    )
    worker.run()


def slow_worker(database_url: str, amqp_url: str, prefix: str, seconds: float) -> None:
    """A worker whose handler takes ``seconds``; stops gracefully on SIGTERM."""
    db = _db(database_url)

    def slow(tx: Connection, delivery: Delivery) -> None:
        time.sleep(seconds)
        record_effect(tx, delivery)

    apply = inbox.transactional(db, "test-consumer", slow)

    def handle(delivery: Delivery) -> None:
        with db.connection() as conn:
            conn.execute(
                "INSERT INTO test_effects (message_id, queue, payload) "
                "VALUES (%s, 'started', '{}')",
                (delivery.message_id,),
            )
        apply(delivery)

    worker = Worker(
        amqp_url,
        Topology(prefix=prefix, queues=("audit.log",), retry_delays=FAST_LADDER),
        {"audit.log": handle},
        prefetch=5,
        concurrency=1,
        grace_period=20,
    )
    worker.install_signal_handlers()
    try:
        worker.run()
    finally:
        # An unclosed pool makes interpreter exit wait for its threads.
        db.close()
