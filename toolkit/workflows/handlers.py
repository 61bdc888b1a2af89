"""The default handlers ``toolkit worker`` runs, and how to plug in others.

``--work module:function`` replaces the workflow work function (it gets the
running :class:`~toolkit.repositories.records.Execution` and returns its output);
``--handler queue=module:function`` replaces a queue's handler (it gets a
:class:`~toolkit.messaging.consumer.Delivery`, and does its work in
``inbox.tenant_transaction(db, delivery)``: as the message's tenant).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from toolkit.db.database import Connection, Database
from toolkit.errors import ConfigurationError
from toolkit.messaging import inbox
from toolkit.messaging.consumer import Delivery, Handler
from toolkit.messaging.models import AuditLog, NotificationSend
from toolkit.repositories.records import Execution
from toolkit.workflows.service import WorkFunction, workflow_handler

log = logging.getLogger(__name__)


def echo_work(execution: Execution) -> Mapping[str, Any]:
    """The default work: echo the input back (real work is plugged in with ``--work``)."""
    return {"echo": dict(execution.input), "attempt": execution.attempt}


def notification_line(message: NotificationSend) -> str:
    """One line describing a notification, as the demo prints it."""
    return f"[{message.kind}] {message.subject}: {message.text}"


def log_notification(_tx: Connection, delivery: Delivery) -> None:
    """The default ``notification.send`` handler: log it (a real one sends mail or a hook)."""
    message = delivery.message
    assert isinstance(message, NotificationSend)
    log.warning("notification %s: %s", delivery.message_id, notification_line(message))


def log_audit(_tx: Connection, delivery: Delivery) -> None:
    """The default ``audit.log`` handler: log the event (a real one ships it to a SIEM)."""
    message = delivery.message
    assert isinstance(message, AuditLog)
    log.info("audit %s %s %s", message.action, message.entity, message.entity_id)


def load_callable(spec: str) -> Callable[..., Any]:
    """``module:function`` imported; ConfigurationError naming ``spec`` otherwise."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ConfigurationError(f"expected module:function, got {spec!r}")
    try:
        target = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"cannot load {spec!r}: {exc}") from None
    if not callable(target):
        raise ConfigurationError(f"{spec!r} is not callable")
    return target  # type: ignore[no-any-return]


def default_handlers(
    db: Database,
    *,
    worker_id: str,
    work: WorkFunction = echo_work,
    lease_seconds: float = 60.0,
    consumer: str = "toolkit-worker",
) -> dict[str, Handler]:
    """The worker's handlers: workflow execution under a lease, and the two log sinks."""
    return {
        "workflow.execute": workflow_handler(
            db, work, worker_id=worker_id, lease_seconds=lease_seconds
        ),
        "notification.send": inbox.transactional(db, consumer, log_notification),
        "audit.log": inbox.transactional(db, consumer, log_audit),
    }
