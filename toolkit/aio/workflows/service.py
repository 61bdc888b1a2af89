"""The domain wired to messaging, and long work that outlives the consumer timeout.

Each change and its message commit together through the outbox:

* :func:`start_execution` creates a pending execution and enqueues
  ``workflow.execute``;
* :func:`finish_execution` records the outcome and enqueues
  ``notification.send``;
* :func:`record_audit_event` appends to the audit chain and enqueues
  ``audit.log``.

An agent workflow can run longer than the broker's consumer timeout (30
minutes by default), so the ``workflow.execute`` handler
(:func:`workflow_handler`) never keeps its message unacked while it works:
it claims the execution in PostgreSQL (pending -> running with a lease),
acks, runs the work while the lease is renewed beside it, then finishes the
execution and enqueues the notification in one transaction. A worker that
dies leaves a running execution whose lease expires; :func:`sweep_expired`
returns it to pending and enqueues it again. The state machine is the
handler's inbox: a duplicate message finds the execution no longer pending
and does nothing. Every transaction of the handler (claim, lease renewals,
finish) runs as the message's tenant (:func:`toolkit.aio.messaging.inbox.tenant_transaction`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from uuid import UUID

from toolkit.aio.db.database import AsyncConnection, AsyncDatabase
from toolkit.aio.db.patterns import validate
from toolkit.aio.leases import LeaseKeeper
from toolkit.aio.messaging import inbox, outbox
from toolkit.aio.repositories import Audit, audit_events, executions, workflows
from toolkit.errors import IllegalTransition, NotFound, ToolkitError
from toolkit.messaging.consumer import AsyncHandler, Delivery
from toolkit.messaging.models import AuditLog, NotificationSend, WorkflowExecute
from toolkit.repositories.records import (
    AuditEvent,
    AuditEventCreate,
    Execution,
    RequeuedExecution,
)

log = logging.getLogger(__name__)

WorkFunction = Callable[[Execution], Awaitable[Mapping[str, Any]]]
"""Runs one execution and returns its output; raising marks it failed."""


async def start_execution(
    tx: AsyncConnection,
    workflow_id: UUID | str,
    input: Mapping[str, Any] | None = None,
    *,
    audit: Audit | None = None,
) -> Execution:
    """Create a pending execution and enqueue ``workflow.execute`` for it, in ``tx``."""
    execution = await executions.create(
        tx, {"workflow_id": workflow_id, "input": dict(input or {})}, audit=audit
    )
    await outbox.enqueue(
        tx, WorkflowExecute(execution_id=execution.id, workflow_id=execution.workflow_id)
    )
    if audit is not None:
        await _enqueue_audit(tx, "execution.created", "execution", execution.id, audit.actor_id)
    return execution


async def finish_execution(
    tx: AsyncConnection,
    execution_id: UUID | str,
    *,
    output: Mapping[str, Any] | None = None,
    error: str | None = None,
    audit: Audit | None = None,
) -> Execution:
    """Succeed (or, with ``error``, fail) a running execution and enqueue its notification."""
    if error is None:
        execution = await executions.succeed(tx, execution_id, output, audit=audit)
    else:
        execution = await executions.fail(tx, execution_id, error, audit=audit)
    workflow = await workflows.get(tx, execution.workflow_id)
    summary = error if error is not None else _summary(execution.output)
    await outbox.enqueue(
        tx,
        NotificationSend(
            kind=f"execution.{execution.status}",
            subject=f"Workflow {workflow.name!r} {execution.status}",
            text=summary[:10_000],
            recipient_id=workflow.owner_id,
            execution_id=execution.id,
            data={"workflow_id": str(workflow.id), "attempt": execution.attempt},
        ),
    )
    if audit is not None:
        await _enqueue_audit(
            tx, f"execution.{execution.status}", "execution", execution.id, audit.actor_id
        )
    return execution


def _summary(output: Mapping[str, Any] | None) -> str:
    if not output:
        return "finished with no output"
    text = ", ".join(f"{key}: {value}" for key, value in output.items())
    return text if len(text) <= 500 else text[:497] + "..."


async def _enqueue_audit(
    tx: AsyncConnection,
    action: str,
    entity: str,
    entity_id: UUID | None,
    actor_id: UUID | None,
) -> None:
    await outbox.enqueue(
        tx, AuditLog(action=action, entity=entity, entity_id=entity_id, actor_id=actor_id)
    )


async def record_audit_event(
    tx: AsyncConnection, data: AuditEventCreate | Mapping[str, Any]
) -> AuditEvent:
    """Append an audit event to the chain and enqueue it for ``audit.log``, in ``tx``."""
    event = await audit_events.record(tx, validate(AuditEventCreate, data))
    await outbox.enqueue(
        tx,
        AuditLog(
            action=event.action,
            entity=event.entity,
            entity_id=event.entity_id,
            actor_id=event.actor_id,
            event_id=event.id,
            occurred_at=event.created_at,
            details=dict(event.details),
        ),
    )
    return event


async def sweep_expired(
    db: AsyncDatabase, *, tenant: UUID | str | None = None, limit: int = 100
) -> list[RequeuedExecution]:
    """Return executions whose lease expired to pending and enqueue them again.

    One transaction: an execution is back in pending exactly when its new
    ``workflow.execute`` message is in the outbox, as the execution's
    tenant. Without ``tenant``, a role the policies do not bind (an
    operator's: superuser or BYPASSRLS) sweeps every tenant, and a role they
    bind raises TenantRequired; with one, only that tenant's executions.
    """
    async with db.transaction(tenant=tenant) as tx:
        expired = await executions.requeue_expired(tx, limit=limit)
        for execution in expired:
            await outbox.enqueue(
                tx,
                WorkflowExecute(
                    execution_id=execution.id,
                    workflow_id=execution.workflow_id,
                    attempt=execution.attempt,
                ),
                tenant=execution.tenant_id,
            )
    if expired:
        log.warning("sweeper: %d execution(s) with an expired lease re-enqueued", len(expired))
    return expired


def _execution_lease_keeper(
    db: AsyncDatabase,
    delivery: Delivery,
    execution_id: UUID,
    *,
    worker_id: str,
    lease: float,
    every: float,
) -> LeaseKeeper:
    """A keeper that renews an execution's lease beside its work, as the delivery's
    tenant; ``lost`` notes a lost lease."""

    async def renew() -> bool:
        try:
            async with inbox.tenant_transaction(db, delivery) as conn:
                await executions.renew_lease(
                    conn, execution_id, worker_id=worker_id, lease_seconds=lease
                )
        except IllegalTransition:
            log.error("execution %s: lease lost (swept or cancelled)", execution_id)
            return False
        except ToolkitError as exc:
            log.warning("execution %s: lease renewal failed: %s", execution_id, exc)
        return True

    return LeaseKeeper(renew, every, name="toolkit-lease", stop_timeout=10.0)


def workflow_handler(
    db: AsyncDatabase,
    work: WorkFunction,
    *,
    worker_id: str,
    lease_seconds: float = 60.0,
    renew_every: float | None = None,
) -> AsyncHandler:
    """The ``workflow.execute`` handler: claim, ack, work under a renewed lease, finish.

    A message for an execution that is not pending (a duplicate, or one
    already swept and claimed elsewhere) is acked and ignored.
    """
    every = renew_every if renew_every is not None else lease_seconds / 3

    async def handle(delivery: Delivery) -> None:
        message = delivery.message
        assert isinstance(message, WorkflowExecute)
        try:
            async with inbox.tenant_transaction(db, delivery) as tx:
                execution = await executions.start(
                    tx, message.execution_id, worker_id=worker_id, lease_seconds=lease_seconds
                )
        except (IllegalTransition, NotFound) as exc:
            delivery.duplicate = True
            log.info("workflow.execute %s ignored: %s", delivery.message_id, exc)
            return
        delivery.ack_now()
        async with _execution_lease_keeper(
            db, delivery, execution.id, worker_id=worker_id, lease=lease_seconds, every=every
        ) as keeper:
            try:
                output: Mapping[str, Any] | None = await work(execution)
                error = None
            except Exception as exc:
                output, error = None, f"{type(exc).__name__}: {exc}"[:10_000]
        if keeper.lost:
            return
        try:
            async with inbox.tenant_transaction(db, delivery) as tx:
                await finish_execution(tx, execution.id, output=output, error=error)
        except IllegalTransition:
            log.error("execution %s was taken from this worker before it finished", execution.id)

    return handle
