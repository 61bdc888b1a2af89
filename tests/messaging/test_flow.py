"""The domain wired through the outbox, the broker and a worker, with faults."""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import pika
import pytest

from toolkit.aio.db import AsyncConnection, AsyncDatabase
from toolkit.aio.messaging import inbox as ainbox
from toolkit.aio.workflows import service as aservice
from toolkit.commands.messaging import add_relay_arguments, add_worker_arguments, relay_command
from toolkit.config import Settings
from toolkit.db import Connection, Database
from toolkit.messaging import (
    AuditLog,
    Delivery,
    NotificationSend,
    Relay,
    Topology,
    Worker,
    WorkflowExecute,
    inbox,
    outbox,
)
from toolkit.repositories import Audit, executions
from toolkit.repositories.records import Execution
from toolkit.workflows import service
from toolkit.workflows.demo_messaging import run_demo_messaging

from ..core.factories import make_workflow
from ..support.tcp_proxy import TcpProxy
from . import _procs
from .conftest import AMQP_URL, amqp_url_for, get_all, wait_for


class Inbox:
    """Collects what the notification and audit handlers received."""

    def __init__(self) -> None:
        self.notifications: list[NotificationSend] = []
        self.audit: list[AuditLog] = []

    def notify(self, _tx: Connection, delivery: Delivery) -> None:
        assert isinstance(delivery.message, NotificationSend)
        self.notifications.append(delivery.message)

    def log(self, _tx: Connection, delivery: Delivery) -> None:
        assert isinstance(delivery.message, AuditLog)
        self.audit.append(delivery.message)


def make_worker(
    db: Database,
    topology: Topology,
    sink: Inbox,
    work: Any,
    *,
    url: str = AMQP_URL,
    lease_seconds: float = 30.0,
    renew_every: float | None = None,
) -> Worker:
    return Worker(
        url,
        topology,
        {
            "workflow.execute": service.workflow_handler(
                db, work, worker_id="w1", lease_seconds=lease_seconds, renew_every=renew_every
            ),
            "notification.send": inbox.transactional(db, "notifier", sink.notify),
            "audit.log": inbox.transactional(db, "auditor", sink.log),
        },
    )


def summarise(execution: Execution) -> Mapping[str, Any]:
    return {"summary": f"read {execution.input['paper']}"}


def test_end_to_end_execution_flow(
    db: Database, full_topology: Topology, run_relay: Any, run_worker: Any
) -> None:
    sink = Inbox()
    run_relay(Relay(db, AMQP_URL, full_topology, poll_interval=0.2))
    run_worker(make_worker(db, full_topology, sink, summarise))
    with db.transaction() as tx:
        workflow = make_workflow(tx)
        actor = Audit(actor_id=workflow.owner_id)
        execution = service.start_execution(
            tx, workflow.id, {"paper": "On Computable Numbers"}, audit=actor
        )
        service.record_audit_event(
            tx,
            {
                "actor_id": workflow.owner_id,
                "action": "workflow.viewed",
                "entity": "workflow",
                "entity_id": workflow.id,
            },
        )
    wait_for(lambda: sink.notifications, timeout=15)
    [note] = sink.notifications
    assert note.kind == "execution.succeeded"
    assert note.execution_id == execution.id and note.recipient_id == workflow.owner_id
    assert "read On Computable Numbers" in note.text
    with db.connection() as conn:
        done = executions.get(conn, execution.id)
        assert done.status == "succeeded" and done.attempt == 1
        assert done.output == {"summary": "read On Computable Numbers"}
        wait_for(lambda: outbox.stats(conn).pending == 0)
    wait_for(lambda: len(sink.audit) == 2)
    assert {event.action for event in sink.audit} == {"execution.created", "workflow.viewed"}


def test_end_to_end_with_async_handlers_on_the_workers_loop(
    db: Database, settings: Settings, full_topology: Topology, run_relay: Any, run_worker: Any
) -> None:
    """The async service's handler and an async inbox handler, with long awaited work
    under a renewed lease, from an execution started through the async API."""
    adb = AsyncDatabase(settings, warn_if_privileged=False)  # opens on the worker's loop
    notes: list[NotificationSend] = []

    async def notify(_tx: AsyncConnection, delivery: Delivery) -> None:
        assert isinstance(delivery.message, NotificationSend)
        notes.append(delivery.message)

    async def work(execution: Execution) -> Mapping[str, Any]:
        await asyncio.sleep(1.0)  # longer than the lease: renewed beside the work
        return {"summary": f"read {execution.input['paper']}"}

    with db.transaction() as tx:
        workflow_id = make_workflow(tx).id

    async def start_execution() -> Execution:
        async with (
            AsyncDatabase(settings, warn_if_privileged=False) as own,
            own.transaction() as tx,
        ):
            return await aservice.start_execution(tx, workflow_id, {"paper": "Computing Machinery"})

    execution = asyncio.run(start_execution())
    run_relay(Relay(db, AMQP_URL, full_topology, poll_interval=0.2))
    worker = Worker(
        AMQP_URL,
        full_topology,
        {
            "workflow.execute": aservice.workflow_handler(
                adb, work, worker_id="w-async", lease_seconds=0.5, renew_every=0.1
            ),
            "notification.send": ainbox.transactional(adb, "notifier", notify),
            "audit.log": ainbox.transactional(adb, "auditor", notify),
        },
        async_cleanup=adb.close,
    )
    run_worker(worker)
    wait_for(lambda: notes, timeout=15)
    [note] = notes
    assert note.kind == "execution.succeeded" and note.execution_id == execution.id
    assert "read Computing Machinery" in note.text
    assert not service.sweep_expired(db)
    with db.connection() as conn:
        done = executions.get(conn, execution.id)
    assert done.status == "succeeded" and done.attempt == 1 and done.worker_id == "w-async"
    assert worker.stats.errors == 0 and worker.stats.retried == 0


def test_a_rolled_back_start_sends_nothing(
    db: Database, full_topology: Topology, broker: pika.BlockingConnection
) -> None:
    with db.transaction() as tx:
        workflow = make_workflow(tx)
    with pytest.raises(RuntimeError), db.transaction() as tx:
        service.start_execution(tx, workflow.id, {"paper": "x"})
        raise RuntimeError("validation failed later in the request")
    with db.connection() as conn:
        assert outbox.stats(conn).pending == 0
        assert executions.count(conn) == 0


def test_failed_work_fails_the_execution_and_notifies(
    db: Database, full_topology: Topology, run_relay: Any, run_worker: Any
) -> None:
    def broken(_execution: Execution) -> Mapping[str, Any]:
        raise RuntimeError("the tool call timed out")

    sink = Inbox()
    run_relay(Relay(db, AMQP_URL, full_topology, poll_interval=0.2))
    run_worker(make_worker(db, full_topology, sink, broken))
    with db.transaction() as tx:
        execution = service.start_execution(tx, make_workflow(tx).id, {"paper": "x"})
    wait_for(lambda: sink.notifications, timeout=15)
    assert sink.notifications[0].kind == "execution.failed"
    assert "the tool call timed out" in sink.notifications[0].text
    with db.connection() as conn:
        failed = executions.get(conn, execution.id)
    assert failed.status == "failed" and "RuntimeError" in (failed.error or "")


def test_long_work_renews_its_lease_and_a_duplicate_message_is_ignored(
    db: Database, full_topology: Topology, run_relay: Any, run_worker: Any
) -> None:
    """Work longer than its lease: the message is acked at once, the lease renewed, and a
    sweeper running all along never takes the execution away."""
    started = threading.Event()

    def slow(execution: Execution) -> Mapping[str, Any]:
        started.set()
        time.sleep(2.0)
        return {"slow": True}

    sink = Inbox()
    run_relay(Relay(db, AMQP_URL, full_topology, poll_interval=0.2))
    worker = make_worker(db, full_topology, sink, slow, lease_seconds=0.8, renew_every=0.2)
    run_worker(worker)
    with db.transaction() as tx:
        execution = service.start_execution(tx, make_workflow(tx).id, {"paper": "x"})
    assert started.wait(10)
    with db.transaction() as tx:  # a duplicate of the start message
        outbox.enqueue(
            tx, WorkflowExecute(execution_id=execution.id, workflow_id=execution.workflow_id)
        )
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and not sink.notifications:
        assert not service.sweep_expired(db)
        time.sleep(0.1)
    wait_for(lambda: sink.notifications, timeout=10)
    with db.connection() as conn:
        done = executions.get(conn, execution.id)
    assert done.status == "succeeded" and done.attempt == 1
    assert worker.stats.duplicates == 1


def test_a_dead_workers_execution_is_swept_and_run_again(
    db: Database, full_topology: Topology, run_relay: Any, run_worker: Any
) -> None:
    sink = Inbox()
    with db.transaction() as tx:
        workflow = make_workflow(tx)
        execution = executions.create(tx, {"workflow_id": workflow.id, "input": {"paper": "x"}})
        # a worker claimed it with a short lease, acked its message, then died
        executions.start(tx, execution.id, worker_id="dead-worker", lease_seconds=0.3)
    time.sleep(0.5)
    assert [e.id for e in service.sweep_expired(db)] == [execution.id]
    run_relay(Relay(db, AMQP_URL, full_topology, poll_interval=0.2))
    run_worker(make_worker(db, full_topology, sink, summarise))
    wait_for(lambda: sink.notifications, timeout=15)
    with db.connection() as conn:
        done = executions.get(conn, execution.id)
    assert done.status == "succeeded" and done.attempt == 2 and done.worker_id == "w1"


def test_broker_cut_repeatedly_nothing_lost_nothing_applied_twice(
    effects: Database, topology: Topology, rabbit_proxy: TcpProxy, run_relay: Any, run_worker: Any
) -> None:
    total = 300
    url = amqp_url_for(rabbit_proxy.port)
    relay = Relay(effects, url, topology, batch_size=50, poll_interval=0.1, max_backoff=0.3)
    worker = Worker(
        url,
        topology,
        {"audit.log": inbox.transactional(effects, "test-consumer", _procs.record_effect)},
        prefetch=20,
        concurrency=2,
        max_reconnect_delay=0.3,
    )
    run_relay(relay)
    run_worker(worker)
    ids: set[str] = set()
    for batch in range(6):
        with effects.transaction() as tx:
            new = outbox.enqueue_many(
                tx,
                [
                    AuditLog(action="user.created", entity="user", details={"n": batch * 1000 + n})
                    for n in range(total // 6)
                ],
            )
            ids |= {str(i) for i in new}
        time.sleep(0.15)
        rabbit_proxy.cut_all()
        if batch == 2:
            rabbit_proxy.refuse_new()
            time.sleep(0.5)
            rabbit_proxy.restore()

    def applied() -> int:
        with effects.connection() as conn:
            return int(
                conn.execute("SELECT count(DISTINCT message_id) FROM test_effects").fetchone()[0]
            )  # type: ignore[index]

    started = time.monotonic()
    try:
        wait_for(lambda: applied() == total, timeout=40)
        print("took", time.monotonic() - started, relay.stats, worker.stats)
    except BaseException:
        print("relay", relay.stats, "worker", worker.stats, "applied", applied())
        with effects.connection() as conn:
            print("outbox", outbox.stats(conn))
        raise
    time.sleep(0.5)
    with effects.connection() as conn:
        rows = conn.execute(
            "SELECT message_id::text, count(*) FROM test_effects GROUP BY message_id"
        ).fetchall()
        assert outbox.stats(conn).pending == 0
    assert {row[0] for row in rows} == ids  # 0 lost
    assert max(row[1] for row in rows) == 1  # 0 applied twice
    assert rabbit_proxy.stats.cut >= 6


def test_relay_command_once_publishes_and_exits(
    db: Database, msettings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    topology = Topology(prefix=msettings.queue_prefix)
    for key, value in (
        ("TOOLKIT_AMQP_URL", msettings.amqp_url),
        ("TOOLKIT_QUEUE_PREFIX", msettings.queue_prefix),
    ):
        monkeypatch.setenv(key, value)
    with db.transaction() as tx:
        outbox.enqueue(tx, AuditLog(action="user.created", entity="user"))
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url")
    add_relay_arguments(parser)
    try:
        args = parser.parse_args(["--database-url", db.url, "--once"])
        assert relay_command(args) == 0
        broker = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        assert len(get_all(broker, topology.queue_name("audit.log"), expect=1)) == 1
        broker.close()
    finally:
        from .conftest import cleanup

        cleanup(topology)
    worker_parser = argparse.ArgumentParser()
    add_worker_arguments(worker_parser)
    parsed = worker_parser.parse_args(["--queue", "audit.log", "--handler", "audit.log=m:f"])
    assert parsed.queues == ["audit.log"] and parsed.handlers == ["audit.log=m:f"]


def test_demo_walks_an_execution_to_its_notification(db: Database, msettings: Settings) -> None:
    with db.transaction() as tx:
        workflow = make_workflow(tx, name="Summarise a paper")
    lines: list[str] = []
    line = run_demo_messaging(db, msettings, workflow.id, input={"paper": "x"}, echo=lines.append)
    assert line.startswith("[execution.succeeded] Workflow 'Summarise a paper' succeeded")
    assert any("same transaction" in text for text in lines)


def test_demo_without_rabbitmq_leaves_the_message_in_the_outbox(
    db: Database, msettings: Settings, rabbit_proxy: TcpProxy
) -> None:
    rabbit_proxy.refuse_new()
    down = msettings.model_copy(update={"amqp_url": amqp_url_for(rabbit_proxy.port)})
    with db.transaction() as tx:
        workflow = make_workflow(tx)
    line = run_demo_messaging(db, down, workflow.id, echo=lambda _: None)
    assert "not reachable" in line and "1 message(s) wait in the outbox" in line
    assert uuid  # imported for factories' sake
