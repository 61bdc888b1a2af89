"""Fixtures for the messaging tests: the real RabbitMQ at 127.0.0.1:5672 (guest/guest).

Each test declares its own topology under a fresh queue-name prefix and
deletes every queue and exchange of it afterwards; PostgreSQL comes from the
root conftest (one migrated database per test). Faults go through the
loopback TCP proxy of tests/support: nothing restarts the machine's broker.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest

from toolkit.config import Settings
from toolkit.db import Database
from toolkit.messaging import Relay, Topology, Worker
from toolkit.messaging.connection import close_quietly, connect
from toolkit.messaging.models import TENANT_HEADER
from toolkit.messaging.topology import declare, delete
from toolkit.tenants import DEFAULT_TENANT

from ..support.tcp_proxy import TcpProxy

AMQP_HOST = os.environ.get("TOOLKIT_TEST_AMQP_HOST", "127.0.0.1")
AMQP_PORT = int(os.environ.get("TOOLKIT_TEST_AMQP_PORT", "5672"))
AMQP_URL = f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/%2F"
FAST_LADDER = (0.2, 0.4)


def amqp_url_for(port: int) -> str:
    return f"amqp://guest:guest@127.0.0.1:{port}/%2F"


def wait_for(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(interval)


@pytest.fixture(scope="session", autouse=True)
def rabbitmq_reachable() -> None:
    """Fail every messaging test, loudly, if RabbitMQ does not answer."""
    try:
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    except Exception as exc:
        raise RuntimeError(
            f"the messaging tests need RabbitMQ at {AMQP_HOST}:{AMQP_PORT} (guest/guest): {exc}"
        ) from exc
    connection.close()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}-"


@pytest.fixture
def topology(prefix: str) -> Iterator[Topology]:
    """A topology of the test's own: ``audit.log`` only (quorum queues are slow to
    create and delete), fast retry ladder; deleted afterwards."""
    topo = Topology(prefix=prefix, queues=("audit.log",), retry_delays=FAST_LADDER)
    yield topo
    cleanup(topo)


@pytest.fixture
def full_topology(prefix: str) -> Iterator[Topology]:
    """Every queue of the platform, under the test's prefix; deleted afterwards."""
    topo = Topology(prefix=prefix, retry_delays=FAST_LADDER)
    yield topo
    cleanup(topo)


def cleanup(topo: Topology) -> None:
    connection = connect(AMQP_URL)
    try:
        delete(connection, topo)
    finally:
        close_quietly(connection)


@pytest.fixture
def broker(topology: Topology) -> Iterator[pika.BlockingConnection]:
    """A direct connection for looking behind the toolkit's back; the topology is declared."""
    connection = connect(AMQP_URL)
    declare(connection, topology)
    yield connection
    close_quietly(connection)


@pytest.fixture
def msettings(settings: Settings, prefix: str) -> Settings:
    return settings.model_copy(update={"amqp_url": AMQP_URL, "queue_prefix": prefix})


@pytest.fixture
def rabbit_proxy() -> Iterator[TcpProxy]:
    with TcpProxy(upstream_port=AMQP_PORT) as proxy:
        yield proxy


def get_all(
    connection: pika.BlockingConnection, queue: str, *, expect: int = 0, timeout: float = 10.0
) -> list[tuple[Any, bytes]]:
    """Take every message from ``queue`` (waiting until at least ``expect`` came)."""
    channel = connection.channel()
    out: list[tuple[Any, bytes]] = []
    deadline = time.monotonic() + timeout
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is not None:
            out.append((properties, body))
            continue
        if len(out) >= expect or time.monotonic() > deadline:
            break
        connection.process_data_events(time_limit=0.05)
    channel.close()
    return out


def raw_publish(
    broker: pika.BlockingConnection,
    topology: Topology,
    body: bytes,
    message_id: str | None,
    headers: dict[str, Any] | None = None,
    *,
    with_tenant: bool = True,
) -> None:
    """Publish to ``audit.log`` behind the toolkit's back, as any client of the broker
    could: ``headers`` as given, plus the default tenant's header unless
    ``with_tenant`` is False or ``headers`` name a tenant themselves."""
    sent = {TENANT_HEADER: str(DEFAULT_TENANT)} if with_tenant else {}
    sent.update(headers or {})
    channel = broker.channel()
    channel.confirm_delivery()
    channel.basic_publish(
        topology.exchange,
        "audit.log",
        body,
        pika.BasicProperties(delivery_mode=2, message_id=message_id, headers=sent or None),
        mandatory=True,
    )
    channel.close()


def depth(connection: pika.BlockingConnection, queue: str) -> int:
    channel = connection.channel()
    try:
        return int(channel.queue_declare(queue, passive=True).method.message_count)
    finally:
        channel.close()


class Running:
    """A relay or worker running on a thread, stopped at teardown."""

    def __init__(self, target: Callable[[], None], stop: Callable[[], None]) -> None:
        self._stop = stop
        self.error: BaseException | None = None

        def run() -> None:
            try:
                target()
            except BaseException as exc:  # reported by stop()
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "did not stop in time"
        assert self.error is None, f"the thread died: {self.error!r}"


@pytest.fixture
def run_relay() -> Iterator[Callable[[Relay], Running]]:
    started: list[tuple[Running, Relay]] = []

    def start(relay: Relay) -> Running:
        stop = threading.Event()
        running = Running(lambda: relay.run(stop), stop.set)
        started.append((running, relay))
        return running

    yield start
    for running, relay in started:
        running.stop()
        relay.close()


@pytest.fixture
def run_worker() -> Iterator[Callable[[Worker], Running]]:
    started: list[Running] = []

    def start(worker: Worker, *, wait: bool = True) -> Running:
        running = Running(worker.run, worker.stop)
        started.append(running)
        if wait:
            wait_for(worker.ready.is_set, timeout=10)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def effects(db: Database) -> Database:
    """A table where handlers write their effect, with no uniqueness: a duplicate shows."""
    with db.connection() as conn:
        conn.execute(
            "CREATE TABLE test_effects (message_id uuid NOT NULL, queue text NOT NULL, "
            "payload jsonb NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
    return db
