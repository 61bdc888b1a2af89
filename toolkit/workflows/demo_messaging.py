"""The messaging part of ``toolkit demo``: an execution through outbox, queue and worker.

:func:`run_demo_messaging` starts an execution (the row and its
``workflow.execute`` message commit together), runs a relay and a worker
on threads under a demo queue prefix of its own, waits for the
``notification.send`` the finished execution produced, deletes its queues
and returns the notification's line. Without a reachable RabbitMQ it says so in one line
(pika's own error logs and traceback of the failed attempt kept quiet) and
leaves the message in the outbox.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from uuid import UUID

from toolkit.config import Settings, mask_password
from toolkit.db.database import Connection, Database
from toolkit.errors import ToolkitError, Unavailable
from toolkit.messaging import inbox, outbox
from toolkit.messaging.connection import ConnectionOptions, close_quietly, connect
from toolkit.messaging.consumer import Delivery, Worker
from toolkit.messaging.models import NotificationSend
from toolkit.messaging.relay import Relay
from toolkit.messaging.topology import Topology, delete
from toolkit.repositories import executions
from toolkit.workflows.handlers import echo_work, log_audit, notification_line
from toolkit.workflows.service import WorkFunction, start_execution, workflow_handler


@contextlib.contextmanager
def _pika_quiet() -> Iterator[None]:
    """Silence pika's loggers for a while.

    pika logs a failed connection attempt as seven ERROR lines and a
    traceback; the demo reports the failure itself, in one line.
    """
    pika_log = logging.getLogger("pika")
    previous = pika_log.level
    pika_log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        pika_log.setLevel(previous)


def run_demo_messaging(
    database: Database,
    settings: Settings,
    workflow_id: UUID,
    *,
    input: Mapping[str, Any] | None = None,
    work: WorkFunction = echo_work,
    timeout: float = 30.0,
    echo: Callable[[str], None] = print,
) -> str:
    """Walk one execution through the outbox, RabbitMQ and a worker; returns the
    notification's line (or, without RabbitMQ, a line saying the message waits)."""
    with database.transaction() as tx:
        execution = start_execution(tx, workflow_id, input)
    echo(
        f"execution {execution.id} created; workflow.execute written to the outbox in the "
        "same transaction"
    )
    topology = Topology(prefix=f"{settings.queue_prefix}demo-{uuid.uuid4().hex[:8]}-")
    try:
        with _pika_quiet():
            probe = connect(settings.amqp_url, ConnectionOptions(name="toolkit-demo"))
    except Unavailable as exc:
        with database.connection() as conn:
            pending = outbox.stats(conn).pending
        reason = str(exc).rsplit(" unreachable: ", 1)[-1]
        line = (
            f"RabbitMQ is not reachable at {mask_password(settings.amqp_url)} ({reason}): "
            f"{pending} message(s) wait in the outbox; start RabbitMQ (or set TOOLKIT_AMQP_URL) "
            "and run `toolkit relay` to publish them, then `toolkit worker` to run them"
        )
        echo(line)
        return line
    close_quietly(probe)
    notified = threading.Event()
    lines: list[str] = []

    def on_notification(_tx: Connection, delivery: Delivery) -> None:
        message = delivery.message
        assert isinstance(message, NotificationSend)
        if message.execution_id == execution.id:
            lines.append(notification_line(message))
            notified.set()

    worker = Worker(
        settings.amqp_url,
        topology,
        {
            "workflow.execute": workflow_handler(database, work, worker_id="demo-worker"),
            "notification.send": inbox.transactional(database, "demo", on_notification),
            "audit.log": inbox.transactional(database, "demo", log_audit),
        },
        grace_period=5.0,
    )
    stop = threading.Event()
    try:
        with Relay(database, settings.amqp_url, topology, poll_interval=0.2) as relay:
            threads = [
                threading.Thread(target=relay.run, args=(stop,), daemon=True),
                threading.Thread(target=worker.run, daemon=True),
            ]
            for thread in threads:
                thread.start()
            if not notified.wait(timeout):
                raise ToolkitError(f"demo: no notification within {timeout:g}s")
            stop.set()
            worker.stop()
            for thread in threads:
                thread.join(timeout=10)
            echo(f"relay published {relay.stats.published} message(s) with pipelined confirms")
    finally:
        stop.set()
        worker.stop()
        cleanup = connect(settings.amqp_url, ConnectionOptions(name="toolkit-demo"))
        try:
            delete(cleanup, topology)
        finally:
            close_quietly(cleanup)
    with database.connection() as conn:
        finished = executions.get(conn, execution.id)
    echo(
        f"worker claimed, acked and ran it: execution {finished.status} (attempt "
        f"{finished.attempt}), output {finished.output}"
    )
    echo(f"notification: {lines[0]}")
    return lines[0]
