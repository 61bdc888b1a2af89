"""RabbitMQ messaging: topology as code, confirmed publishing, outbox relay, consumer, inbox.

::

    from toolkit.messaging import AuditLog, outbox

    with db.transaction() as tx:
        ...  # the change
        outbox.enqueue(tx, AuditLog(action="workflow.viewed", entity="workflow"))
    # the relay (``toolkit relay``) publishes it once tx commits; a worker
    # (``toolkit worker``) consumes it.

Modules: :mod:`~toolkit.messaging.topology` (exchanges and queues),
:mod:`~toolkit.messaging.models` (one model per queue),
:mod:`~toolkit.messaging.publisher` (confirmed and pipelined publishing),
:mod:`~toolkit.messaging.outbox` (enqueue in the caller's transaction; the
relay), :mod:`~toolkit.messaging.inbox` (deduplication),
:mod:`~toolkit.messaging.consumer` (the worker and its retry ladder).
The domain's use of them (executions, handlers) is the application layer,
:mod:`toolkit.workflows`; nothing here imports it.
"""

from toolkit.errors import (
    ArgumentDrift,
    MessageTooLarge,
    Rejected,
    TopologyDrift,
    Unroutable,
)
from toolkit.messaging import inbox, outbox
from toolkit.messaging.connection import ConnectionOptions
from toolkit.messaging.consumer import Delivery, Handler, Periodic, Worker, run_worker
from toolkit.messaging.models import (
    MODELS,
    AuditLog,
    Message,
    NotificationSend,
    WorkflowExecute,
)
from toolkit.messaging.outbox import Relay
from toolkit.messaging.publisher import BatchResult, Outgoing, PipelinedPublisher, Publisher
from toolkit.messaging.topology import Topology, declare

__all__ = [
    "MODELS",
    "ArgumentDrift",
    "AuditLog",
    "BatchResult",
    "ConnectionOptions",
    "Delivery",
    "Handler",
    "Message",
    "MessageTooLarge",
    "NotificationSend",
    "Outgoing",
    "Periodic",
    "PipelinedPublisher",
    "Publisher",
    "Rejected",
    "Relay",
    "Topology",
    "TopologyDrift",
    "Unroutable",
    "Worker",
    "WorkflowExecute",
    "declare",
    "inbox",
    "outbox",
    "run_worker",
]
