"""The worker: acks, inbox, retry ladder, parking, reconnects, graceful stop, heartbeats."""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import multiprocessing
import os
import signal
import struct
import threading
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pika
import pika.data
import pytest

from toolkit.aio.db import AsyncConnection, AsyncDatabase
from toolkit.aio.messaging import inbox as ainbox
from toolkit.config import Settings
from toolkit.db import Connection, Database
from toolkit.messaging import AuditLog, Delivery, Publisher, Topology, Worker, inbox
from toolkit.messaging.connection import ConnectionOptions
from toolkit.messaging.consumer import INVALID_RETRY_HEADER
from toolkit.tenants import DEFAULT_TENANT

from ..support.tcp_proxy import TcpProxy
from . import _procs
from .conftest import (
    AMQP_URL,
    FAST_LADDER,
    amqp_url_for,
    depth,
    get_all,
    raw_publish,
    wait_for,
)

EVENT = AuditLog(action="user.created", entity="user")


def effect_count(db: Database, message_id: Any = None) -> int:
    with db.connection() as conn:
        if message_id is None:
            row = conn.execute("SELECT count(*) FROM test_effects WHERE queue = 'audit.log'")
        else:
            row = conn.execute(
                "SELECT count(*) FROM test_effects WHERE message_id = %s AND queue = 'audit.log'",
                (message_id,),
            )
        return int(row.fetchone()[0])  # type: ignore[index]


def encoding_doubles(encode_value: Callable[[list[bytes], Any], int]) -> Any:
    """pika's header encoder plus AMQP doubles (``d``), which pika cannot send but
    RabbitMQ carries and pika decodes: how another client could send a float."""

    def encode(pieces: list[bytes], value: Any) -> int:
        if isinstance(value, float):
            pieces.append(struct.pack(">cd", b"d", value))
            return 9
        return encode_value(pieces, value)

    return encode


def test_handled_once_even_when_delivered_twice(
    effects: Database, topology: Topology, broker: pika.BlockingConnection, run_worker: Any
) -> None:
    handler = inbox.transactional(effects, "test-consumer", _procs.record_effect)
    worker = Worker(AMQP_URL, topology, {"audit.log": handler}, prefetch=5)
    run_worker(worker)
    message_id = str(uuid.uuid4())
    with Publisher(AMQP_URL, topology) as publisher:
        publisher.publish(EVENT, tenant=DEFAULT_TENANT, message_id=message_id)
        # a duplicate, same id
        publisher.publish(EVENT, tenant=DEFAULT_TENANT, message_id=message_id)
    wait_for(lambda: worker.stats.handled == 2)
    assert worker.stats.duplicates == 1
    assert effect_count(effects, message_id) == 1
    with effects.connection() as conn:
        assert inbox.seen(conn, "test-consumer", message_id)
    wait_for(lambda: depth(broker, topology.queue_name("audit.log")) == 0)


def test_poison_message_goes_down_the_ladder_then_is_parked(
    topology: Topology, broker: pika.BlockingConnection, run_worker: Any
) -> None:
    calls: list[tuple[float, int]] = []

    def always_fails(delivery: Delivery) -> None:
        calls.append((time.monotonic(), delivery.retry_count))
        raise ValueError("the model refused the prompt")

    worker = Worker(AMQP_URL, topology, {"audit.log": always_fails})
    run_worker(worker)
    with Publisher(AMQP_URL, topology) as publisher:
        message_id = publisher.publish(EVENT, tenant=DEFAULT_TENANT)
    parked = get_all(broker, topology.parking_queue("audit.log"), expect=1, timeout=10)
    assert len(parked) == 1
    props, body = parked[0]
    assert props.message_id == message_id
    assert props.headers["x-parked-reason"] == "retries-exhausted"
    assert "ValueError: the model refused the prompt" in props.headers["x-error"]
    assert props.headers["x-retry-count"] == len(topology.retry_delays)
    assert json.loads(body)["action"] == "user.created"
    # one try per step, each after its delay: no hot redelivery loop
    assert [count for _, count in calls] == [0, 1, 2]
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(calls)]
    for gap, delay in zip(gaps, topology.retry_delays, strict=True):
        assert gap >= delay * 0.9
    time.sleep(0.5)
    assert len(calls) == 3
    assert worker.stats.retried == 2 and worker.stats.parked == 1


INVALID = "invalid-retry-count"
EXHAUSTED = "retries-exhausted"
LADDER = len(FAST_LADDER)

# (x-retry-count as published, handler tries, parked reason). 10**30 has no
# AMQP encoding; 2**63 - 1 (the largest AMQP integer) and the double 1e30
# stand for "huge". pika decodes a double as its integer part (1.5 arrives as
# 1, 1e30 as a 31-digit int), so a float counts as that integer. NaN and
# infinity never arrive: RabbitMQ closes the publisher's connection.
RETRY_HEADERS: list[tuple[Any, int, str]] = [
    (-1, 1, INVALID),
    (-1000, 1, INVALID),
    (-1.5, 1, INVALID),
    ("3", 1, INVALID),
    ("", 1, INVALID),
    (True, 1, INVALID),
    (False, 1, INVALID),
    (None, 1, INVALID),
    (Decimal("1"), 1, INVALID),
    (b"1", 1, INVALID),
    ({"count": 1}, 1, INVALID),
    ([1, 2], 1, INVALID),
    (2**63 - 1, 1, EXHAUSTED),
    (1e30, 1, EXHAUSTED),
    (LADDER, 1, EXHAUSTED),
    (1.5, 2, EXHAUSTED),
    (LADDER - 1, 2, EXHAUSTED),
]


def test_a_forged_retry_count_never_buys_retries_and_is_parked_with_its_headers(
    topology: Topology,
    broker: pika.BlockingConnection,
    run_worker: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tries: collections.Counter[str] = collections.Counter()

    def always_fails(delivery: Delivery) -> None:
        tries[str(delivery.message_id)] += 1
        assert 0 <= delivery.retry_count <= LADDER
        raise ValueError("the handler always fails")

    worker = Worker(AMQP_URL, topology, {"audit.log": always_fails})
    run_worker(worker)
    monkeypatch.setattr(pika.data, "encode_value", encoding_doubles(pika.data.encode_value))
    sent: dict[str, tuple[Any, int, str]] = {}
    for value, expected_tries, reason in RETRY_HEADERS:
        message_id = str(uuid.uuid4())
        sent[message_id] = (value, expected_tries, reason)
        raw_publish(broker, topology, EVENT.body(), message_id, {"x-retry-count": value})

    parking = topology.parking_queue("audit.log")
    parked = get_all(broker, parking, expect=len(sent), timeout=15)
    time.sleep(1.0)  # longer than the whole ladder: a message still looping would show
    parked += get_all(broker, parking)
    by_id = {props.message_id: props.headers for props, _ in parked}
    assert len(parked) == len(by_id) == len(sent)
    for message_id, (value, expected_tries, reason) in sent.items():
        headers = by_id[message_id]
        assert (value, tries[message_id]) == (value, expected_tries)
        assert (value, headers["x-parked-reason"]) == (value, reason)
        assert headers["x-retry-count"] == LADDER
        assert "ValueError: the handler always fails" in headers["x-error"]
        assert (INVALID_RETRY_HEADER in headers) == (reason == INVALID)
    [minus_one] = [h for h in by_id.values() if h.get(INVALID_RETRY_HEADER) == "-1"]
    assert minus_one["x-parked-reason"] == INVALID
    assert sum(tries.values()) == sum(expected for _, expected, _ in RETRY_HEADERS)
    assert worker.stats.errors == 0 and worker.stats.parked == len(sent)
    assert depth(broker, topology.queue_name("audit.log")) == 0
    for step in range(LADDER):
        assert depth(broker, topology.retry_queue("audit.log", step)) == 0


def test_a_handler_that_recovers_on_retry_is_applied_once(
    effects: Database, topology: Topology, broker: pika.BlockingConnection, run_worker: Any
) -> None:
    apply = inbox.transactional(effects, "test-consumer", _procs.record_effect)
    seen: list[int] = []

    def flaky(delivery: Delivery) -> None:
        seen.append(delivery.retry_count)
        if delivery.retry_count == 0:
            raise ConnectionError("upstream timed out")
        apply(delivery)

    worker = Worker(AMQP_URL, topology, {"audit.log": flaky})
    run_worker(worker)
    with Publisher(AMQP_URL, topology) as publisher:
        message_id = publisher.publish(EVENT, tenant=DEFAULT_TENANT)
    wait_for(lambda: effect_count(effects, message_id) == 1)
    assert seen == [0, 1]
    assert depth(broker, topology.parking_queue("audit.log")) == 0


UNDECODABLE = [
    (b"{not json", True, "invalid-json", "not JSON"),
    (b"[1, 2]", True, "invalid-json", "not an object"),
    (
        b'{"schema_version": 1, "action": "NOPE", "entity": "user"}',
        True,
        "invalid-message",
        "action",
    ),
    (
        b'{"schema_version": 9, "action": "a.b", "entity": "user"}',
        True,
        "invalid-message",
        "schema",
    ),
    (b'{"schema_version": 1, "action": "a.b", "entity": "user"}', False, "invalid-message", "UUID"),
]


def test_undecodable_messages_are_parked_at_once(
    topology: Topology, broker: pika.BlockingConnection, run_worker: Any
) -> None:
    calls: list[Delivery] = []
    worker = Worker(AMQP_URL, topology, {"audit.log": calls.append})
    run_worker(worker)
    for body, with_id, _, _ in UNDECODABLE:
        raw_publish(broker, topology, body, str(uuid.uuid4()) if with_id else None)
    parked = get_all(broker, topology.parking_queue("audit.log"), expect=len(UNDECODABLE))
    assert len(parked) == len(UNDECODABLE)
    by_body = {body: props.headers for props, body in parked}
    for body, _, reason, words in UNDECODABLE:
        assert by_body[body]["x-parked-reason"] == reason
        assert words in by_body[body]["x-error"]
    assert not calls and worker.stats.retried == 0 and worker.stats.parked == len(UNDECODABLE)


def test_consumer_killed_between_effect_and_ack_the_inbox_absorbs_the_redelivery(
    effects: Database, topology: Topology, broker: pika.BlockingConnection, run_worker: Any
) -> None:
    with Publisher(AMQP_URL, topology) as publisher:
        message_id = publisher.publish(EVENT, tenant=DEFAULT_TENANT)
    context = multiprocessing.get_context("spawn")
    child = context.Process(
        target=_procs.worker_dies_after_effect, args=(effects.url, AMQP_URL, topology.prefix)
    )
    child.start()
    child.join(30)
    assert child.exitcode == 23
    assert effect_count(effects, message_id) == 1  # the effect committed, no ack was sent
    handler = inbox.transactional(effects, "test-consumer", _procs.record_effect)
    worker = Worker(AMQP_URL, topology, {"audit.log": handler})
    run_worker(worker)
    wait_for(lambda: worker.stats.handled == 1)
    assert worker.stats.duplicates == 1
    assert effect_count(effects, message_id) == 1
    wait_for(lambda: depth(broker, topology.queue_name("audit.log")) == 0)


def test_sigterm_finishes_the_current_message_then_exits(
    effects: Database, topology: Topology, broker: pika.BlockingConnection
) -> None:
    with Publisher(AMQP_URL, topology) as publisher:
        first = publisher.publish(EVENT, tenant=DEFAULT_TENANT)
        publisher.publish(EVENT, tenant=DEFAULT_TENANT)
    context = multiprocessing.get_context("spawn")
    child = context.Process(
        target=_procs.slow_worker, args=(effects.url, AMQP_URL, topology.prefix, 0.8)
    )
    child.start()

    def started() -> bool:
        with effects.connection() as conn:
            return bool(conn.execute("SELECT count(*) FROM test_effects").fetchone()[0])  # type: ignore[index]

    wait_for(started, timeout=20)
    assert child.pid is not None
    os.kill(child.pid, signal.SIGTERM)
    child.join(20)
    assert child.exitcode == 0
    assert effect_count(effects, first) == 1  # finished, committed and acked
    # the second message was never started: it waits in the queue, not lost
    wait_for(lambda: depth(broker, topology.queue_name("audit.log")) == 1)
    assert effect_count(effects) == 1


def test_heartbeats_keep_flowing_during_long_work(
    topology: Topology, broker: pika.BlockingConnection, run_worker: Any
) -> None:
    done: list[str] = []

    def long_work(delivery: Delivery) -> None:
        time.sleep(2.6)  # more than two heartbeat intervals
        done.append(str(delivery.message_id))

    worker = Worker(
        AMQP_URL,
        topology,
        {"audit.log": long_work},
        options=ConnectionOptions(heartbeat=1, name="test-heartbeat"),
    )
    run_worker(worker)
    with Publisher(AMQP_URL, topology) as publisher:
        publisher.publish(EVENT, tenant=DEFAULT_TENANT)
    wait_for(lambda: worker.stats.handled == 1, timeout=10)
    time.sleep(0.3)
    assert worker.stats.reconnects == 0  # the connection survived the long handler
    assert depth(broker, topology.queue_name("audit.log")) == 0


def test_worker_reconnects_after_the_connection_is_cut(
    effects: Database,
    topology: Topology,
    broker: pika.BlockingConnection,
    rabbit_proxy: TcpProxy,
    run_worker: Any,
) -> None:
    handler = inbox.transactional(effects, "test-consumer", _procs.record_effect)
    worker = Worker(amqp_url_for(rabbit_proxy.port), topology, {"audit.log": handler})
    run_worker(worker)
    with Publisher(AMQP_URL, topology) as publisher:
        publisher.publish(EVENT, tenant=DEFAULT_TENANT)
        wait_for(lambda: effect_count(effects) == 1)
        rabbit_proxy.cut_all()
        publisher.publish(EVENT, tenant=DEFAULT_TENANT)
    wait_for(lambda: effect_count(effects) == 2, timeout=15)
    assert worker.stats.reconnects >= 1


# -- async handlers: run on the worker's own event loop ------------------------


def test_async_handlers_await_longer_than_the_heartbeat_on_one_loop_of_their_own(
    topology: Topology, broker: pika.BlockingConnection, run_worker: Any
) -> None:
    seen: list[tuple[asyncio.AbstractEventLoop, threading.Thread]] = []

    async def long_work(delivery: Delivery) -> None:
        await asyncio.sleep(2.6)  # more than two heartbeat intervals
        seen.append((asyncio.get_running_loop(), threading.current_thread()))

    worker = Worker(
        AMQP_URL,
        topology,
        {"audit.log": long_work},
        options=ConnectionOptions(heartbeat=1, name="test-async-heartbeat"),
    )
    running = run_worker(worker)
    with Publisher(AMQP_URL, topology) as publisher:
        publisher.publish(EVENT, tenant=DEFAULT_TENANT)
        publisher.publish(EVENT, tenant=DEFAULT_TENANT)
    wait_for(lambda: worker.stats.handled == 2, timeout=15)
    time.sleep(0.3)
    assert worker.stats.reconnects == 0  # the connection survived the long awaits
    assert worker.stats.errors == worker.stats.retried == 0
    assert depth(broker, topology.queue_name("audit.log")) == 0  # both acked
    [(loop, thread), (loop2, thread2)] = seen
    assert loop is loop2 and thread is thread2  # one loop, created once
    assert thread is not running.thread  # not the connection's thread
    running.stop()
    assert loop.is_closed() and not thread.is_alive()  # closed on stop


def test_an_async_handlers_exception_goes_down_the_ladder_then_is_parked(
    topology: Topology, broker: pika.BlockingConnection, run_worker: Any
) -> None:
    counts: list[int] = []

    async def always_fails(delivery: Delivery) -> None:
        await asyncio.sleep(0)
        counts.append(delivery.retry_count)
        raise ValueError("the model refused the prompt")

    worker = Worker(AMQP_URL, topology, {"audit.log": always_fails})
    run_worker(worker)
    with Publisher(AMQP_URL, topology) as publisher:
        message_id = publisher.publish(EVENT, tenant=DEFAULT_TENANT)
    [(props, _)] = get_all(broker, topology.parking_queue("audit.log"), expect=1, timeout=10)
    assert props.message_id == message_id
    assert props.headers["x-parked-reason"] == "retries-exhausted"
    assert "ValueError: the model refused the prompt" in props.headers["x-error"]
    assert counts == [0, 1, 2]
    assert worker.stats.retried == 2 and worker.stats.parked == 1 and worker.stats.handled == 0


def test_async_inbox_handler_applies_a_duplicate_once_and_closes_its_pool(
    effects: Database,
    settings: Settings,
    topology: Topology,
    broker: pika.BlockingConnection,
    run_worker: Any,
) -> None:
    adb = AsyncDatabase(settings, warn_if_privileged=False)  # opens on the worker's loop
    closed: list[asyncio.AbstractEventLoop] = []

    async def apply(tx: AsyncConnection, delivery: Delivery) -> None:
        await tx.execute(
            "INSERT INTO test_effects (message_id, queue, payload) VALUES (%s, %s, '{}')",
            (delivery.message_id, delivery.queue),
        )

    async def cleanup() -> None:
        await adb.close()
        closed.append(asyncio.get_running_loop())

    handler = ainbox.transactional(adb, "test-consumer", apply)
    worker = Worker(AMQP_URL, topology, {"audit.log": handler}, prefetch=5, async_cleanup=cleanup)
    running = run_worker(worker)
    message_id = str(uuid.uuid4())
    with Publisher(AMQP_URL, topology) as publisher:
        publisher.publish(EVENT, tenant=DEFAULT_TENANT, message_id=message_id)
        # a duplicate, same id
        publisher.publish(EVENT, tenant=DEFAULT_TENANT, message_id=message_id)
    wait_for(lambda: worker.stats.handled == 2)
    assert worker.stats.duplicates == 1
    assert effect_count(effects, message_id) == 1
    with effects.connection() as conn:
        assert inbox.seen(conn, "test-consumer", message_id)
    running.stop()
    [loop] = closed
    assert loop.is_closed()  # the cleanup ran on the handlers' loop, before it closed


def test_unknown_queue_handler_is_refused(topology: Topology) -> None:
    with pytest.raises(Exception, match="unknown queue"):
        Worker(AMQP_URL, topology, {"workflow.execute": lambda d: None})


def _unused(_: Connection) -> None:
    pass
