"""RabbitMQ messaging: topology as code, confirmed publishing, outbox relay, consumer, inbox.

::

    from toolkit.messaging import AuditLog, outbox

    with db.transaction() as tx:
        ...  # the change
        outbox.enqueue(tx, AuditLog(action="workflow.viewed", entity="workflow"))
    # the relay (``toolkit relay``) publishes it once tx commits; a worker
    # (``toolkit worker``) consumes it.

The async API of the outbox and the inbox is :mod:`toolkit.aio.messaging`
(same functions, awaited); a worker's handler may be a coroutine function.

Modules: :mod:`~toolkit.messaging.topology` (exchanges and queues),
:mod:`~toolkit.messaging.models` (one model per queue),
:mod:`~toolkit.messaging.publisher` (confirmed and pipelined publishing),
:mod:`~toolkit.messaging.outbox` (enqueue in the caller's transaction),
:mod:`~toolkit.messaging.relay` (publishes committed outbox rows),
:mod:`~toolkit.messaging.inbox` (deduplication),
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
from toolkit.messaging.consumer import (
    AsyncHandler,
    Delivery,
    Handler,
    Periodic,
    Worker,
    run_worker,
)
from toolkit.messaging.models import (
    MODELS,
    AuditLog,
    Message,
    NotificationSend,
    WorkflowExecute,
)
from toolkit.messaging.publisher import BatchResult, Outgoing, PipelinedPublisher, Publisher
from toolkit.messaging.relay import Relay
from toolkit.messaging.topology import Topology, declare

__all__ = [
    "MODELS",
    "ArgumentDrift",
    "AsyncHandler",
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
