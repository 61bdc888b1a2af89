"""RabbitMQ goes away while outbox messages flow: none is lost, none applied twice.

Half the messages are enqueued; while the worker is in the middle of them
the broker is taken away, the other half is enqueued while it is gone, and it
comes back. The cut lands with messages in flight: deliveries prefetched or
running, and (made certain by :class:`Gate`) handlers whose transaction
committed and whose ack has not reached the broker. The broker redelivers
all of those, so "duplicates applied" counts what the inbox let through, and
the scenario fails unless redeliveries happened and the inbox absorbed some.

The row's columns are read from the database (outbox, effects) and the broker
(queue depths) afterwards. The fault is proven to have hit: messages
enqueued while the broker was away were applied only after it came back,
none of them earlier.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.messaging import _procs
from tests.messaging.conftest import AMQP_URL, FAST_LADDER, amqp_url_for, depth
from tests.reliability.conftest import Row
from tests.reliability.private_servers import (
    PrivateRabbitMQ,
    private_rabbitmq,
    rabbitmq_available,
)
from tests.support.tcp_proxy import TcpProxy
from toolkit.db import Database
from toolkit.messaging import Delivery, Handler, Relay, Topology, Worker, inbox, outbox
from toolkit.messaging.connection import close_quietly, connect
from toolkit.messaging.models import AuditLog

# tox -e reliability runs 10,000 messages; the default run 2,000.
MESSAGES = int(os.environ.get("TOOLKIT_RELIABILITY_OPERATIONS", "2000"))
BATCHES = 20
OUTAGE_S = 2.0
SETTLE_S = 240.0


class Gate:
    """Wraps the worker's handler: counts redeliveries, and holds a committed delivery
    before its ack until the broker has been cut off.

    From the ``hold_after``-th delivery on, a handler that has committed waits
    (its ack not yet sent) until :meth:`release`: the cut then lands while the
    effect is in the database and the broker still counts the message unacked,
    the window the inbox exists for.
    """

    def __init__(self, handler: Handler, hold_after: int) -> None:
        self._handler = handler
        self._hold_after = hold_after
        self._lock = threading.Lock()
        self._released = threading.Event()
        self.holding = threading.Event()
        """Set once a handler has committed and is holding back its ack."""
        self.deliveries = 0
        self.redelivered = 0
        """Deliveries the broker flagged as redelivered."""

    def __call__(self, delivery: Delivery) -> None:
        with self._lock:
            self.deliveries += 1
            self.redelivered += delivery.redelivered
            hold = self.deliveries >= self._hold_after and not self._released.is_set()
        self._handler(delivery)
        if hold:
            self.holding.set()
            self._released.wait(SETTLE_S)

    def release(self) -> None:
        self._released.set()


@dataclass(frozen=True)
class Outcome:
    """What the database and the broker hold after the flow."""

    enqueued: int
    lost: int
    twice: int
    wrong: int
    left_behind: int
    refused: int
    parked: int
    applied_before: int
    held_by_outage: int
    leaked_during_outage: int
    delivered_after_s: float | None
    restart_s: float
    relay_outages: int
    worker_reconnects: int
    cut_in_flight: bool
    """A committed delivery was still unacked when the broker went away."""
    redelivered: int
    """Deliveries flagged redelivered by the broker."""
    absorbed: int
    """Deliveries whose message_id the inbox already had (applied nothing)."""

    def proven(self) -> bool:
        return (
            self.applied_before > 0
            and self.held_by_outage > 0
            and self.leaked_during_outage == 0
            and self.relay_outages + self.worker_reconnects > 0
        )

    def duplicates_were_possible(self) -> bool:
        """Whether "duplicates applied" can mean anything: a committed delivery was
        unacked at the cut, and the broker redelivered messages."""
        return self.cut_in_flight and self.redelivered > 0

    def recovery(self) -> str:
        took = (
            "never all delivered"
            if self.delivered_after_s is None
            else f"all delivered {self.delivered_after_s:.1f} s after it came back"
        )
        return (
            f"{took} ({self.held_by_outage:,} messages held by the outage; "
            f"{self.redelivered:,} redelivered, {self.absorbed:,} already applied and "
            f"absorbed by the inbox; relay saw {self.relay_outages} outages, worker "
            f"reconnected {self.worker_reconnects} times; coming back took "
            f"{self.restart_s:.1f} s)"
        )


def settle(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` until true; False (not a failure) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def enqueue(effects: Database, count: int, tag: str) -> set[str]:
    ids: set[str] = set()
    per_batch = max(1, count // (BATCHES // 2))
    for batch in range(0, count, per_batch):
        with effects.transaction() as tx:
            new = outbox.enqueue_many(
                tx,
                [
                    AuditLog(action="user.created", entity="user", details={"tag": tag, "i": i})
                    for i in range(batch, min(count, batch + per_batch))
                ],
            )
        ids |= {str(i) for i in new}
    return ids


def applied(effects: Database) -> int:
    with effects.connection() as conn:
        row = conn.execute("SELECT count(DISTINCT message_id) FROM test_effects").fetchone()
    return int(row[0]) if row else 0


def broker_depths(url: str, topology: Topology) -> tuple[int, int]:
    """(messages still queued for work or retry, messages parked) on the broker."""
    connection = connect(url)
    try:
        parked = depth(connection, topology.parking_queue("audit.log"))
        waiting = depth(connection, topology.queue_name("audit.log")) + sum(
            depth(connection, topology.retry_queue("audit.log", step))
            for step in range(len(topology.retry_delays))
        )
    finally:
        close_quietly(connection)
    return waiting, parked


def flow(
    effects: Database,
    topology: Topology,
    url: str,
    inspect_url: str,
    run_relay: Any,
    run_worker: Any,
    take_down: Callable[[], None],
    bring_back: Callable[[], None],
) -> Outcome:
    """Half the messages, cut off in their midst, half during the outage; then measure."""
    relay = Relay(effects, url, topology, batch_size=500, poll_interval=0.1, max_backoff=0.5)
    gate = Gate(
        inbox.transactional(effects, "reliability", _procs.record_effect),
        hold_after=max(1, MESSAGES // 4),
    )
    worker = Worker(
        url,
        topology,
        {"audit.log": gate},
        prefetch=100,
        concurrency=2,
        max_reconnect_delay=0.5,
    )
    run_relay(relay)
    run_worker(worker)
    ids = enqueue(effects, MESSAGES // 2, "before")
    # Cut while a committed delivery holds its ack, the rest of the half in flight.
    cut_in_flight = gate.holding.wait(SETTLE_S)
    take_down()
    down = datetime.now(UTC)
    gate.release()
    ids |= enqueue(effects, MESSAGES - MESSAGES // 2, "during")
    time.sleep(max(0.0, OUTAGE_S - (datetime.now(UTC) - down).total_seconds()))
    up = datetime.now(UTC)
    began = time.monotonic()
    bring_back()
    back = time.monotonic()
    everything = settle(lambda: applied(effects) >= len(ids), SETTLE_S)
    delivered_after = time.monotonic() - back if everything else None
    time.sleep(1.0)  # let any late duplicate land before counting
    with effects.connection() as conn:
        rows = conn.execute(
            "SELECT message_id::text, count(*) FROM test_effects GROUP BY message_id"
        ).fetchall()
        wrong, refused, before, held, leaked = conn.execute(
            "SELECT"
            " (SELECT count(*) FROM test_effects e JOIN outbox o ON o.id = e.message_id"
            "   WHERE e.payload <> o.body),"
            " (SELECT count(*) FROM outbox WHERE last_error IS NOT NULL),"
            " (SELECT count(*) FROM test_effects WHERE at < %(down)s),"
            " (SELECT count(*) FROM outbox o JOIN test_effects e ON e.message_id = o.id"
            "   WHERE o.created_at >= %(down)s AND o.created_at < %(up)s AND e.at >= %(up)s),"
            " (SELECT count(*) FROM outbox o JOIN test_effects e ON e.message_id = o.id"
            "   WHERE o.created_at >= %(down)s AND o.created_at < %(up)s AND e.at < %(up)s)",
            {"down": down, "up": up},
        ).fetchone()
        pending = outbox.stats(conn).pending
    waiting, parked = broker_depths(inspect_url, topology)
    seen = {row[0] for row in rows}
    return Outcome(
        enqueued=len(ids),
        lost=len(ids - seen),
        twice=sum(row[1] - 1 for row in rows),
        wrong=wrong,
        left_behind=pending + waiting,
        refused=refused,
        parked=parked,
        applied_before=before,
        held_by_outage=held,
        leaked_during_outage=leaked,
        delivered_after_s=delivered_after,
        restart_s=back - began,
        relay_outages=relay.stats.broker_outages,
        worker_reconnects=worker.stats.reconnects,
        cut_in_flight=cut_in_flight,
        redelivered=gate.redelivered,
        absorbed=worker.stats.duplicates,
    )


def record(report: Any, scenario: str, outcome: Outcome) -> None:
    report(
        Row(
            scenario,
            outcome.enqueued,
            outcome.refused + outcome.parked,
            None,
            outcome.wrong,
            outcome.lost,
            outcome.twice,
            outcome.recovery(),
        )
    )


def verdict(outcome: Outcome) -> None:
    assert outcome.proven(), f"the outage did not visibly hit the flow: {outcome}"
    assert outcome.duplicates_were_possible(), f"no message was in flight at the cut: {outcome}"
    assert outcome.delivered_after_s is not None, f"not everything was delivered: {outcome}"
    assert (outcome.lost, outcome.twice, outcome.wrong, outcome.left_behind) == (0, 0, 0, 0)
    assert (outcome.refused, outcome.parked) == (0, 0)
    # The committed-but-unacked deliveries came back and the inbox turned them away.
    assert outcome.absorbed > 0, f"the inbox saw no redelivered message: {outcome}"


def test_broker_cut_off_during_outbox_flow(
    effects, topology, rabbit_proxy: TcpProxy, run_relay, run_worker, report
) -> None:
    def cut_off() -> None:
        rabbit_proxy.cut_all()
        rabbit_proxy.refuse_new()

    outcome = flow(
        effects,
        topology,
        amqp_url_for(rabbit_proxy.port),
        AMQP_URL,
        run_relay,
        run_worker,
        cut_off,
        rabbit_proxy.restore,
    )
    record(
        report,
        f"RabbitMQ cut off for {OUTAGE_S:.0f} s (proxy: connections reset, refused) "
        "during outbox flow",
        outcome,
    )
    verdict(outcome)


@pytest.fixture
def private_node() -> Iterator[PrivateRabbitMQ]:
    with private_rabbitmq() as node:
        yield node


@pytest.mark.service_restart
@pytest.mark.skipif(
    not rabbitmq_available(), reason="needs root, the rabbitmq user and RabbitMQ's scripts"
)
def test_broker_restarted_during_outbox_flow(
    effects, prefix, private_node: PrivateRabbitMQ, run_relay, run_worker, report
) -> None:
    """A private RabbitMQ node's application is stopped, then started again, mid-flow."""
    topology = Topology(prefix=prefix, queues=("audit.log",), retry_delays=FAST_LADDER)

    def start_again() -> None:
        private_node.ctl("start_app")
        private_node.wait_until_up()

    outcome = flow(
        effects,
        topology,
        private_node.url,
        private_node.url,
        run_relay,
        run_worker,
        lambda: private_node.ctl("stop_app"),
        start_again,
    )
    record(
        report,
        f"RabbitMQ restarted (private node, rabbitmqctl stop_app, {OUTAGE_S:.0f} s, start_app) "
        "during outbox flow",
        outcome,
    )
    verdict(outcome)
