"""RabbitMQ goes away while outbox messages flow: none is lost, none applied twice."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pika
import pytest

from tests.messaging import _procs
from tests.messaging.conftest import AMQP_URL, amqp_url_for, wait_for
from tests.reliability.conftest import Row
from tests.support.tcp_proxy import TcpProxy
from toolkit.db import Database
from toolkit.messaging import Relay, Topology, Worker, inbox, outbox
from toolkit.messaging.models import AuditLog

# tox -e reliability runs 10,000 messages; the default run 2,000.
MESSAGES = int(os.environ.get("TOOLKIT_RELIABILITY_OPERATIONS", "2000"))


def flow(
    effects: Database,
    topology: Topology,
    url: str,
    run_relay: Any,
    run_worker: Any,
    fault: Callable[[], None],
) -> tuple[int, int, int, float]:
    """Enqueue MESSAGES in batches, call ``fault`` halfway; (lost, twice, pending, recovery s)."""
    relay = Relay(effects, url, topology, batch_size=500, poll_interval=0.1, max_backoff=0.5)
    worker = Worker(
        url,
        topology,
        {"audit.log": inbox.transactional(effects, "reliability", _procs.record_effect)},
        prefetch=100,
        concurrency=2,
        max_reconnect_delay=0.5,
    )
    run_relay(relay)
    run_worker(worker)
    ids: set[str] = set()
    batches = 20
    fault_thread = None
    for batch in range(batches):
        with effects.transaction() as tx:
            new = outbox.enqueue_many(
                tx,
                [
                    AuditLog(action="user.created", entity="user", details={"n": batch, "i": i})
                    for i in range(MESSAGES // batches)
                ],
            )
        ids |= {str(i) for i in new}
        if batch == batches // 2:
            fault_thread = threading.Thread(target=fault)
            fault_thread.start()
    assert fault_thread is not None
    fault_thread.join()
    healed = time.monotonic()

    def applied() -> int:
        with effects.connection() as conn:
            row = conn.execute("SELECT count(DISTINCT message_id) FROM test_effects").fetchone()
        return int(row[0]) if row else 0

    wait_for(lambda: applied() == len(ids), timeout=240, interval=0.2)
    recovery = time.monotonic() - healed
    time.sleep(1.0)  # let any late duplicate land before counting
    with effects.connection() as conn:
        rows = conn.execute(
            "SELECT message_id::text, count(*) FROM test_effects GROUP BY message_id"
        ).fetchall()
        pending = outbox.stats(conn).pending
    seen = {row[0] for row in rows}
    return len(ids - seen), sum(row[1] - 1 for row in rows), pending, recovery


def test_broker_cut_off_during_outbox_flow(
    effects, topology, rabbit_proxy: TcpProxy, run_relay, run_worker, report
) -> None:
    def cut_off() -> None:
        rabbit_proxy.cut_all()
        rabbit_proxy.refuse_new()
        time.sleep(2.0)
        rabbit_proxy.restore()

    lost, twice, pending, recovery = flow(
        effects, topology, amqp_url_for(rabbit_proxy.port), run_relay, run_worker, cut_off
    )
    report(
        Row(
            "RabbitMQ cut off for 2 s (proxy: connections reset, refused) during outbox flow",
            MESSAGES,
            0,
            lost,
            twice,
            f"all delivered {recovery:.1f} s after it came back",
        )
    )
    assert (lost, twice, pending) == (0, 0, 0)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


def _ensure_rabbitmq_running() -> None:
    for _ in range(60):
        try:
            pika.BlockingConnection(pika.URLParameters(AMQP_URL)).close()
            return
        except pika.exceptions.AMQPError:
            subprocess.run(["rabbitmqctl", "start_app"], check=False, capture_output=True)
            time.sleep(1)
    raise RuntimeError("RabbitMQ did not come back")


@pytest.mark.service_restart
@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl")
def test_broker_restarted_during_outbox_flow(
    effects, topology, run_relay, run_worker, report
) -> None:
    took: list[float] = []

    def restart() -> None:
        began = time.monotonic()
        try:
            _rabbitmqctl("stop_app")
            _rabbitmqctl("start_app")
        finally:
            _ensure_rabbitmq_running()
        took.append(time.monotonic() - began)

    lost, twice, pending, recovery = flow(
        effects, topology, AMQP_URL, run_relay, run_worker, restart
    )
    report(
        Row(
            "RabbitMQ restarted (rabbitmqctl stop_app/start_app) during outbox flow",
            MESSAGES,
            0,
            lost,
            twice,
            f"all delivered {recovery:.1f} s after it came back (restart took {took[0]:.1f} s)",
        )
    )
    assert (lost, twice, pending) == (0, 0, 0)
