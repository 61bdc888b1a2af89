"""A three-node RabbitMQ cluster loses the node leading ``workflow.execute``'s quorum queue
in the middle of the outbox flow: nothing lost, nothing applied twice.

Three private nodes (own node names, AMQP and distribution ports, data folders;
the machine's broker on 5672 is never touched) form a cluster. The topology is
declared with every quorum queue replicated to all three. The relay and the
worker are given the three addresses, the leader's first, so the node that is
killed (SIGKILL: a crash, no goodbye) takes their connections with it: they
must reconnect to a live node, the queue must elect a new leader, and the
flow must finish with every message applied once.

The cut lands with messages in flight (deliveries prefetched, running, and,
made certain by :class:`~tests.reliability.test_rabbitmq_faults.Gate`, one
whose transaction committed and whose ack had not reached the broker): the
broker redelivers them, so "applied twice" counts what the inbox let through.
Effects are counted in the database (one row per application, no uniqueness),
and the time to recover runs from the kill to the first message the worker
finished after consuming again (the first redelivered one: the dead node's
unacked deliveries come back first).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest

from tests.cluster.conftest import Row
from tests.messaging import _procs
from tests.messaging.conftest import FAST_LADDER, depth
from tests.reliability.private_servers import (
    PrivateRabbitMQCluster,
    private_rabbitmq_cluster,
    rabbitmq_available,
)
from tests.reliability.test_rabbitmq_faults import Gate, applied
from toolkit.db import Database
from toolkit.errors import Rejected
from toolkit.messaging import (
    Delivery,
    Handler,
    NotificationSend,
    PipelinedPublisher,
    Publisher,
    Relay,
    Topology,
    Worker,
    inbox,
    outbox,
)
from toolkit.messaging.connection import close_quietly, connect
from toolkit.messaging.models import WorkflowExecute
from toolkit.messaging.publisher import outgoing
from toolkit.messaging.topology import declare
from toolkit.tenants import DEFAULT_TENANT

# tox -e cluster runs 10,000 messages; TOOLKIT_CLUSTER_OPERATIONS scales it down.
MESSAGES = int(os.environ.get("TOOLKIT_CLUSTER_OPERATIONS", "10000"))
NODES = 3
QUEUE = "workflow.execute"
BATCHES = 20
STALL_S = 90.0
"""The flow fails once no message was applied for this long (a worker that never
reconnected, a queue that never elected a leader)."""
TOTAL_S = 900.0

pytestmark = pytest.mark.skipif(
    not rabbitmq_available(), reason="needs root, the rabbitmq user and RabbitMQ's scripts"
)


class Clock:
    """Wraps a handler: when each delivery the broker flagged redelivered was applied."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.redelivered_done: list[float] = []

    def __call__(self, delivery: Delivery) -> None:
        self._handler(delivery)
        if delivery.redelivered:
            self.redelivered_done.append(time.monotonic())


def enqueue(effects: Database, count: int) -> set[str]:
    """``count`` workflow.execute messages through the outbox, in committed batches."""
    ids: set[str] = set()
    per_batch = max(1, count // (BATCHES // 2))
    for start in range(0, count, per_batch):
        with effects.transaction() as tx:
            new = outbox.enqueue_many(
                tx,
                [
                    WorkflowExecute(execution_id=uuid.uuid4(), workflow_id=uuid.uuid4())
                    for _ in range(start, min(count, start + per_batch))
                ],
            )
        ids |= {str(i) for i in new}
    return ids


def progress(count: Callable[[], int], target: int, stall: float, total: float) -> bool:
    """Wait until ``count()`` reaches ``target``; False once it stood still for ``stall``
    seconds or ``total`` passed."""
    began = time.monotonic()
    last, moved = count(), time.monotonic()
    while last < target:
        now = time.monotonic()
        if now - moved > stall or now - began > total:
            return False
        time.sleep(0.25)
        current = count()
        if current != last:
            last, moved = current, time.monotonic()
    return True


@dataclass(frozen=True)
class Outcome:
    """What the database and the surviving nodes hold after the flow."""

    enqueued: int
    lost: int
    twice: int
    wrong: int
    left_behind: int
    refused: int
    """Outbox rows the broker refused and that were never published after all."""
    nacked_then_sent: int
    """Outbox rows the broker nacked (the queue without a leader) and the relay
    published again later."""
    parked: int
    applied_at_kill: int
    replicated_to_all: bool
    leader_before: str
    leader_after: str
    online_after: int
    recovered_after_s: float | None
    """From the kill to the first message applied after the worker consumed again."""
    all_applied_after_s: float | None
    relay_outages: int
    worker_reconnects: int
    relay_moved: bool
    """The relay's publisher ended connected to a node other than the killed one."""
    worker_moved: bool
    cut_in_flight: bool
    redelivered: int
    absorbed: int
    cluster_start_s: float
    cluster_rss_mb: float

    def mid_flow(self) -> bool:
        """The kill came after some messages were applied and before all were."""
        return 0 < self.applied_at_kill < self.enqueued

    def recovery(self) -> str:
        recovered = (
            "never recovered"
            if self.recovered_after_s is None
            else f"{self.recovered_after_s:.1f} s to the next message processed"
        )
        finished = (
            "not all applied"
            if self.all_applied_after_s is None
            else f"all applied {self.all_applied_after_s:.1f} s after the kill"
        )
        return (
            f"{recovered}, {finished} (leader killed with {self.applied_at_kill:,} applied; "
            f"new leader elected: {self.leader_after != self.leader_before}; relay saw "
            f"{self.relay_outages} outages and {self.nacked_then_sent:,} nacks it published "
            f"again, worker reconnected {self.worker_reconnects} times; "
            f"{self.redelivered:,} redelivered, {self.absorbed:,} absorbed by the inbox; "
            f"{NODES} nodes started in {self.cluster_start_s:.0f} s, "
            f"{self.cluster_rss_mb:.0f} MB resident)"
        )


def queue_depths(cluster: PrivateRabbitMQCluster, topology: Topology) -> tuple[int, int]:
    """(messages still queued for work or retry, messages parked), from a live node."""
    live = next(node for node in cluster.nodes if node.running)
    connection = connect(live.url)
    try:
        parked = depth(connection, topology.parking_queue(QUEUE))
        waiting = depth(connection, topology.queue_name(QUEUE)) + sum(
            depth(connection, topology.retry_queue(QUEUE, step))
            for step in range(len(topology.retry_delays))
        )
    finally:
        close_quietly(connection)
    return waiting, parked


@pytest.fixture
def rabbit_cluster() -> Iterator[PrivateRabbitMQCluster]:
    """Three private nodes joined into one cluster; all stopped and removed afterwards."""
    with private_rabbitmq_cluster(NODES) as cluster:
        yield cluster


def flow(
    cluster: PrivateRabbitMQCluster, effects: Database, run_relay: Any, run_worker: Any
) -> Outcome:
    topology = Topology(
        prefix="cluster-", queues=(QUEUE,), retry_delays=FAST_LADDER, replicas=NODES
    )
    queue = topology.queue_name(QUEUE)
    # A new quorum queue's leader is the declaring client's node: the first one.
    connection = connect(cluster.urls[0])
    try:
        declare(connection, topology)
    finally:
        close_quietly(connection)
    leader, members, online = cluster.queue_replicas(queue)
    every_node = sorted(node.node for node in cluster.nodes)
    replicated = sorted(members) == every_node and sorted(online) == every_node
    rss_mb = cluster.rss_bytes() / 1e6
    # The leader's address first: killing it takes the relay's and worker's connections.
    doomed = cluster.node(leader)
    urls = [doomed.url, *(node.url for node in cluster.nodes if node is not doomed)]

    relay = Relay(effects, urls, topology, batch_size=500, poll_interval=0.1)
    clock = Clock(inbox.transactional(effects, "cluster", _procs.record_effect))
    gate = Gate(clock, hold_after=max(1, MESSAGES // 4))
    worker = Worker(urls, topology, {QUEUE: gate}, prefetch=100, concurrency=2)
    run_relay(relay)
    run_worker(worker)
    ids = enqueue(effects, MESSAGES // 2)
    # Kill while a committed delivery holds back its ack, the rest of the half in flight.
    cut_in_flight = gate.holding.wait(300)
    applied_at_kill = applied(effects)
    killed = time.monotonic()
    doomed.kill()
    gate.release()
    ids |= enqueue(effects, MESSAGES - MESSAGES // 2)
    everything = progress(lambda: applied(effects), len(ids), STALL_S, TOTAL_S)
    all_applied_after = time.monotonic() - killed if everything else None
    time.sleep(1.0)  # let any late duplicate land before counting
    after = [t - killed for t in clock.redelivered_done if t > killed]
    leader_after, _, online_after = cluster.queue_replicas(queue)
    with effects.connection() as conn:
        rows = conn.execute(
            "SELECT message_id::text, count(*) FROM test_effects GROUP BY message_id"
        ).fetchall()
        wrong, refused, nacked_then_sent = conn.execute(
            "SELECT"
            " (SELECT count(*) FROM test_effects e JOIN outbox o ON o.id = e.message_id"
            "   WHERE e.payload <> o.body),"
            " (SELECT count(*) FROM outbox WHERE last_error IS NOT NULL AND sent_at IS NULL),"
            " (SELECT count(*) FROM outbox WHERE last_error IS NOT NULL AND sent_at IS NOT NULL)"
        ).fetchone()
        pending = outbox.stats(conn).pending
    waiting, parked = queue_depths(cluster, topology)
    seen = {row[0] for row in rows}
    return Outcome(
        enqueued=len(ids),
        lost=len(ids - seen),
        twice=sum(row[1] - 1 for row in rows),
        wrong=wrong,
        left_behind=pending + waiting,
        refused=refused,
        nacked_then_sent=nacked_then_sent,
        parked=parked,
        applied_at_kill=applied_at_kill,
        replicated_to_all=replicated,
        leader_before=leader,
        leader_after=leader_after,
        online_after=len(online_after),
        recovered_after_s=min(after) if after else None,
        all_applied_after_s=all_applied_after,
        relay_outages=relay.stats.broker_outages,
        worker_reconnects=worker.stats.reconnects,
        relay_moved=relay.publisher.brokers.current != doomed.url,
        worker_moved=worker.brokers.current != doomed.url,
        cut_in_flight=cut_in_flight,
        redelivered=gate.redelivered,
        absorbed=worker.stats.duplicates,
        cluster_start_s=cluster.started_in or 0.0,
        cluster_rss_mb=rss_mb,
    )


def test_leader_killed_during_outbox_flow(
    rabbit_cluster: PrivateRabbitMQCluster, effects, run_relay, run_worker, report
) -> None:
    outcome = flow(rabbit_cluster, effects, run_relay, run_worker)
    report(
        Row(
            f"RabbitMQ cluster ({NODES} nodes, quorum queues on all): the leader of "
            f"{QUEUE} killed (SIGKILL) mid outbox flow",
            outcome.enqueued,
            outcome.refused + outcome.parked,
            None,
            outcome.lost,
            outcome.twice,
            outcome.recovery(),
        )
    )
    assert outcome.replicated_to_all, f"the queue was not replicated to every node: {outcome}"
    assert outcome.mid_flow(), f"the leader was not killed mid-flow: {outcome}"
    assert outcome.leader_after != outcome.leader_before, f"no new leader: {outcome}"
    assert outcome.online_after == NODES - 1, f"replicas online afterwards: {outcome}"
    # Both lost their node and went on through another one.
    assert outcome.relay_moved and outcome.worker_moved, f"stayed on the dead node: {outcome}"
    assert outcome.worker_reconnects > 0, outcome
    assert outcome.all_applied_after_s is not None, f"not everything was applied: {outcome}"
    assert outcome.recovered_after_s is not None, f"no message processed after: {outcome}"
    assert (outcome.lost, outcome.twice, outcome.wrong, outcome.left_behind) == (0, 0, 0, 0)
    assert (outcome.refused, outcome.parked) == (0, 0)
    # The committed-but-unacked delivery came back and the inbox turned it away.
    assert outcome.cut_in_flight and outcome.redelivered > 0, outcome
    assert outcome.absorbed > 0, f"the inbox saw no redelivered message: {outcome}"


def test_publishers_nacked_while_the_queue_had_no_leader_publish_again(
    rabbit_cluster: PrivateRabbitMQCluster, report
) -> None:
    """On RabbitMQ 3.10 a channel whose first publish to a quorum queue comes while the
    queue's leader just died has that publish nacked, and every later one: both
    publishers (the blocking one, and the relay's pipelined one) must start over on a
    fresh channel after a negative confirm.

    The publishers are connected (their channels open, publishing to another queue)
    before the kill, so their first publish to ``workflow.execute`` comes at once
    after it, while the queue has no leader; each is given one surviving node only,
    so moving to another node cannot hide a stuck channel."""
    cluster = rabbit_cluster
    topology = Topology(
        prefix="nack-",
        queues=(QUEUE, "notification.send"),
        retry_delays=FAST_LADDER,
        replicas=NODES,
    )
    connection = connect(cluster.urls[0])
    try:
        declare(connection, topology)
    finally:
        close_quietly(connection)
    leader, _, _ = cluster.queue_replicas(topology.queue_name(QUEUE))
    survivors = [node.url for node in cluster.nodes if node.node != leader]
    blocking = [Publisher(url, topology, declare_topology=False) for url in survivors * 2]
    pipelined = [PipelinedPublisher(url, topology, declare_topology=False) for url in survivors]
    warm_up = NotificationSend(kind="warm-up", subject="channel open")
    for publisher in blocking:
        publisher.publish(warm_up, tenant=DEFAULT_TENANT)
    for batcher in pipelined:
        assert batcher.publish_batch([outgoing(topology, warm_up, tenant=DEFAULT_TENANT)]).acked

    def work() -> WorkflowExecute:
        return WorkflowExecute(execution_id=uuid.uuid4(), workflow_id=uuid.uuid4())

    def send_blocking(publisher: Publisher) -> bool:
        try:
            publisher.publish(work(), tenant=DEFAULT_TENANT)
        except Rejected:
            return False
        return True

    def send_pipelined(batcher: PipelinedPublisher) -> bool:
        result = batcher.publish_batch([outgoing(topology, work(), tenant=DEFAULT_TENANT)])
        return bool(result.acked)

    senders: list[tuple[str, Callable[[], bool]]] = [
        *(("blocking", partial(send_blocking, p)) for p in blocking),
        *(("pipelined", partial(send_pipelined, b)) for b in pipelined),
    ]
    nacked: dict[str, int] = {"blocking": 0, "pipelined": 0}
    through_after: list[float] = []
    attempts = 0
    lock = threading.Lock()

    def until_through(kind: str, send: Callable[[], bool]) -> None:
        nonlocal attempts
        for _ in range(20):
            with lock:
                attempts += 1
            if send():
                with lock:
                    through_after.append(time.monotonic() - killed)
                return
            with lock:
                nacked[kind] += 1
            time.sleep(0.5)

    threads = [threading.Thread(target=until_through, args=sender) for sender in senders]
    killed = time.monotonic()
    cluster.node(leader).kill()
    for thread in threads:  # all at once: the leaderless moment is short
        thread.start()
    for thread in threads:
        thread.join(60)
    for publisher in blocking:
        publisher.close()
    for batcher in pipelined:
        batcher.close()
    stuck = len(senders) - len(through_after)
    report(
        Row(
            f"RabbitMQ cluster: {len(blocking)} blocking and {len(pipelined)} pipelined "
            f"publishers' first publish to {QUEUE} right after its leader was killed",
            attempts,
            sum(nacked.values()),
            None,
            None,  # a nacked publish is refused to its caller (Rejected, or held back), not lost
            None,
            (
                f"every publisher through {max(through_after):.1f} s after the kill "
                f"(nacked: {nacked['blocking']} blocking, {nacked['pipelined']} pipelined; "
                "each on a fresh channel after)"
                if not stuck
                else f"{stuck} publishers nacked on every one of 20 tries ({nacked})"
            ),
        )
    )
    assert all(nacked.values()), f"no publish of each kind hit the leaderless queue: {nacked}"
    assert stuck == 0, f"{stuck} publishers stayed nacked after the queue had a leader again"
