"""The workflow service, sync and async (tests/support/modes.py): each change and its
message commit together, and the ``workflow.execute`` handler claims, works and finishes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from typing import Any

import psycopg
import pytest

from tests.support.modes import Mode, both
from toolkit.aio.workflows import service as aservice
from toolkit.errors import IllegalTransition, InvalidInput
from toolkit.messaging import AuditLog, Delivery, NotificationSend, WorkflowExecute
from toolkit.messaging.models import MODELS, Message
from toolkit.repositories.records import Execution
from toolkit.tenants import DEFAULT_TENANT
from toolkit.workflows import service as sservice

from ..core.factories import make_workflow

service = both("toolkit.workflows.service")
executions = both("toolkit.repositories.executions")
audit_events = both("toolkit.repositories.audit_events")
Audit = both("toolkit.repositories").Audit

pytestmark = pytest.mark.usefixtures("mode")


def raw(db: Any) -> Any:
    """The pool itself (an AsyncDatabase is wrapped for the test body in an async run)."""
    return getattr(db, "target", db)


def enqueued(superuser: psycopg.Connection[Any]) -> list[Message]:
    """Every message in the outbox, in the order written."""
    rows = superuser.execute("SELECT queue, body::text FROM outbox ORDER BY seq").fetchall()
    return [MODELS[queue].model_validate_json(body) for queue, body in rows]


def execute_delivery(execution: Execution, acks: list[int]) -> Delivery:
    return Delivery(
        queue="workflow.execute",
        message=WorkflowExecute(execution_id=execution.id, workflow_id=execution.workflow_id),
        message_id=uuid.uuid4(),
        tenant=DEFAULT_TENANT,
        retry_count=0,
        redelivered=False,
        headers={},
        _ack=lambda: acks.append(1),
    )


def test_start_execution_enqueues_its_message_in_the_same_transaction(
    db: Any, superuser: psycopg.Connection[Any]
) -> None:
    with db.transaction() as tx:
        workflow = make_workflow(tx)
    with pytest.raises(RuntimeError), db.transaction() as tx:
        service.start_execution(tx, workflow.id, {"paper": "x"})
        raise RuntimeError("validation failed later in the request")
    assert enqueued(superuser) == []
    with db.transaction() as tx:
        actor = Audit(actor_id=workflow.owner_id)
        execution = service.start_execution(tx, str(workflow.id), {"paper": "y"}, audit=actor)
    assert execution.status == "pending" and execution.input == {"paper": "y"}
    start, audit = enqueued(superuser)
    assert start == WorkflowExecute(execution_id=execution.id, workflow_id=workflow.id)
    assert isinstance(audit, AuditLog)
    assert (audit.action, audit.entity_id, audit.actor_id) == (
        "execution.created",
        execution.id,
        workflow.owner_id,
    )
    with db.connection() as conn:
        assert executions.count(conn) == 1
        [event] = audit_events.list(conn, {"entity_id": execution.id}).items
    assert event.action == "execution.created"


def test_finish_execution_records_the_outcome_and_notifies_the_owner(
    db: Any, superuser: psycopg.Connection[Any]
) -> None:
    with db.transaction() as tx:
        workflow = make_workflow(tx, name="Summarise")
        good = service.start_execution(tx, workflow.id, {"paper": "x"})
        bad = service.start_execution(tx, workflow.id, {"paper": "y"})
        for execution in (good, bad):
            executions.start(tx, execution.id, worker_id="w1")
    with db.transaction() as tx:
        done = service.finish_execution(tx, good.id, output={"summary": "short"})
        failed = service.finish_execution(
            tx, str(bad.id), error="the tool call timed out", audit=Audit(actor_id=None)
        )
    assert (done.status, done.output) == ("succeeded", {"summary": "short"})
    assert (failed.status, failed.error) == ("failed", "the tool call timed out")
    *_, note_good, note_bad, audit = enqueued(superuser)
    assert isinstance(note_good, NotificationSend) and isinstance(note_bad, NotificationSend)
    assert note_good.kind == "execution.succeeded" and note_good.text == "summary: short"
    assert note_good.subject == "Workflow 'Summarise' succeeded"
    assert note_good.recipient_id == workflow.owner_id and note_good.execution_id == good.id
    assert note_good.data == {"workflow_id": str(workflow.id), "attempt": 1}
    assert note_bad.kind == "execution.failed" and note_bad.text == "the tool call timed out"
    assert isinstance(audit, AuditLog) and audit.action == "execution.failed"
    before = len(enqueued(superuser))
    with pytest.raises(IllegalTransition), db.transaction() as tx:
        service.finish_execution(tx, good.id, output={})  # not running any more
    assert len(enqueued(superuser)) == before


def test_record_audit_event_appends_to_the_chain_and_enqueues_it(
    conn: Any, superuser: psycopg.Connection[Any]
) -> None:
    workflow = make_workflow(conn)
    event = service.record_audit_event(
        conn,
        {
            "actor_id": workflow.owner_id,
            "action": "workflow.viewed",
            "entity": "workflow",
            "entity_id": workflow.id,
            "details": {"via": "api"},
        },
    )
    [message] = enqueued(superuser)
    assert message == AuditLog(
        action="workflow.viewed",
        entity="workflow",
        entity_id=workflow.id,
        actor_id=workflow.owner_id,
        event_id=event.id,
        occurred_at=event.created_at,
        details={"via": "api"},
    )
    assert audit_events.get(conn, event.id).action == "workflow.viewed"
    with pytest.raises(InvalidInput):
        service.record_audit_event(conn, {"action": "NOPE", "entity": "workflow"})
    assert len(enqueued(superuser)) == 1


def test_sweep_expired_returns_executions_to_pending_with_a_new_message(
    db: Any, superuser: psycopg.Connection[Any]
) -> None:
    with db.transaction() as tx:
        workflow = make_workflow(tx)
        dead = executions.create(tx, {"workflow_id": workflow.id})
        alive = executions.create(tx, {"workflow_id": workflow.id})
        executions.start(tx, dead.id, worker_id="dead-worker", lease_seconds=60)
        executions.start(tx, alive.id, worker_id="live-worker", lease_seconds=60)
    superuser.execute(
        "UPDATE executions SET lease_expires_at = now() - interval '1 second' WHERE id = %s",
        (dead.id,),
    )
    [swept] = service.sweep_expired(raw(db))
    assert (swept.id, swept.status, swept.worker_id) == (dead.id, "pending", None)
    assert enqueued(superuser) == [
        WorkflowExecute(execution_id=dead.id, workflow_id=workflow.id, attempt=1)
    ]
    assert service.sweep_expired(raw(db)) == []
    with db.connection() as conn:
        assert executions.get(conn, alive.id).status == "running"


def test_workflow_handler_claims_acks_works_and_finishes_once(
    mode: Mode, db: Any, superuser: psycopg.Connection[Any]
) -> None:
    calls: list[Execution] = []

    def work(execution: Execution) -> Mapping[str, Any]:
        calls.append(execution)
        return {"summary": f"read {execution.input['paper']}"}

    with db.transaction() as tx:
        execution = executions.create(
            tx, {"workflow_id": make_workflow(tx).id, "input": {"paper": "x"}}
        )
    handler = service.workflow_handler(raw(db), work, worker_id="w1")
    acks: list[int] = []
    first = execute_delivery(execution, acks)
    mode.run(handler(first))
    assert acks == [1] and not first.duplicate
    assert [c.status for c in calls] == ["running"]
    with db.connection() as conn:
        done = executions.get(conn, execution.id)
    assert done.status == "succeeded" and done.output == {"summary": "read x"}
    [note] = enqueued(superuser)
    assert isinstance(note, NotificationSend) and note.kind == "execution.succeeded"
    again = execute_delivery(execution, acks)
    mode.run(handler(again))  # a duplicate: the execution is no longer pending
    assert again.duplicate and len(calls) == 1 and acks == [1]


def test_workflow_handler_fails_the_execution_when_the_work_raises(
    mode: Mode, db: Any, superuser: psycopg.Connection[Any]
) -> None:
    def broken(_execution: Execution) -> Mapping[str, Any]:
        raise RuntimeError("the model refused")

    with db.transaction() as tx:
        execution = executions.create(tx, {"workflow_id": make_workflow(tx).id})
    acks: list[int] = []
    mode.run(
        service.workflow_handler(raw(db), broken, worker_id="w1")(execute_delivery(execution, acks))
    )
    assert acks == [1]
    with db.connection() as conn:
        failed = executions.get(conn, execution.id)
    assert failed.status == "failed" and failed.error == "RuntimeError: the model refused"
    [note] = enqueued(superuser)
    assert isinstance(note, NotificationSend) and note.kind == "execution.failed"


def test_workflow_handler_renews_the_lease_while_long_work_runs(mode: Mode, db: Any) -> None:
    """Work three times longer than its lease, then a sweep: the renewed lease is still
    held (without renewals the sweep would take the execution back)."""
    swept: list[list[Execution]] = []

    def work(_execution: Execution) -> Mapping[str, Any]:
        time.sleep(1.2)
        swept.append(sservice.sweep_expired(db))
        return {"ok": True}

    async def awork(_execution: Execution) -> Mapping[str, Any]:
        await asyncio.sleep(1.2)
        swept.append(await aservice.sweep_expired(raw(db)))
        return {"ok": True}

    with db.transaction() as tx:
        execution = executions.create(tx, {"workflow_id": make_workflow(tx).id})
    handler = service.workflow_handler(
        raw(db),
        awork if mode.is_async else work,
        worker_id="w1",
        lease_seconds=0.4,
        renew_every=0.1,
    )
    mode.run(handler(execute_delivery(execution, [])))
    assert swept == [[]]
    with db.connection() as conn:
        done = executions.get(conn, execution.id)
    assert done.status == "succeeded" and done.attempt == 1
