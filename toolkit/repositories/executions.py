"""Executions (queries in ``sql/executions.sql``).

Status: pending -> running -> succeeded | failed | cancelled, and pending ->
cancelled. Every change is a guarded UPDATE; a step the state machine does
not allow raises IllegalTransition and changes nothing. A running execution
holds a lease that its worker renews; :func:`requeue_expired` returns the
executions of dead workers to pending.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Annotated, Any
from uuid import UUID

from pydantic import Field, StringConstraints

from toolkit.db.bind import Exec, Many, One, Returning, Scalar
from toolkit.db.database import Connection
from toolkit.db.patterns import (
    DEFAULT_LIMIT,
    Audit,
    atomic,
    check_limit,
    delete_row,
    jsonb,
    list_page,
    parse_id,
    record_audit,
    transition,
    validate,
)
from toolkit.records import Execution, ExecutionCreate, ExecutionFilter, Input, JsonObject, Page

ENTITY = "execution"
DEFAULT_LEASE_SECONDS = 60.0
_FILTERS = ("status", "workflow_id")
_LEASE = ("worker_id", "lease_seconds")


class _Lease(Input):
    worker_id: Annotated[
        str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]*$")
    ]
    lease_seconds: Annotated[float, Field(gt=0, le=86400)]


class _Outcome(Input):
    output: JsonObject | None = None
    error: Annotated[str, StringConstraints(max_length=10000, pattern=r"^[^\x00]*$")] | None = None


_create = One("executions.create", Execution, ("workflow_id", "input"), entity=ENTITY)
_get = One("executions.get", Execution, ("id",), entity=ENTITY)
_list = Many("executions.list", Execution, (*_FILTERS, "limit"))
_count = Scalar("executions.count", int, _FILTERS)
_start = Returning("executions.start", Execution, ("id", *_LEASE))
_claim_next = Returning("executions.claim_next", Execution, _LEASE)
_renew_lease = Returning("executions.renew_lease", Execution, ("id", *_LEASE))
_succeed = Returning("executions.succeed", Execution, ("id", "output"))
_fail = Returning("executions.fail", Execution, ("id", "error"))
_cancel = Returning("executions.cancel", Execution, ("id",))
_requeue_expired = Many("executions.requeue_expired", Execution, ("limit",))
_current_status = Scalar("executions.current_status", str, ("id",))
_delete = Exec("executions.delete", ("id",))


def create(
    conn: Connection, data: ExecutionCreate | Mapping[str, Any], *, audit: Audit | None = None
) -> Execution:
    """Create a pending execution; InvalidReference if the workflow is missing."""
    execution = validate(ExecutionCreate, data)
    with atomic(conn):
        created = _create(conn, workflow_id=execution.workflow_id, input=jsonb(execution.input))
        record_audit(conn, audit, "execution.created", created.id)
    return created


def get(conn: Connection, execution_id: UUID | str) -> Execution:
    """The execution with this id; NotFound otherwise."""
    key = parse_id(execution_id)
    return _get(conn, key, id=key)


def list(
    conn: Connection,
    filters: ExecutionFilter | Mapping[str, Any] | None = None,
    *,
    sort: str = "created_at",
    descending: bool = False,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page[Execution]:
    """A keyset page of executions; filter by ``status`` and ``workflow_id``."""
    where = validate(ExecutionFilter, filters)
    return list_page(
        _list,
        conn,
        where.model_dump(),
        sort=sort,
        descending=descending,
        limit=limit,
        cursor=cursor,
    )


def count(conn: Connection, filters: ExecutionFilter | Mapping[str, Any] | None = None) -> int:
    """How many executions match the filters."""
    return _count(conn, **validate(ExecutionFilter, filters).model_dump()) or 0


def start(
    conn: Connection,
    execution_id: UUID | str,
    *,
    worker_id: str,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    audit: Audit | None = None,
) -> Execution:
    """Move a pending execution to running under ``worker_id``'s lease."""
    lease = validate(_Lease, {"worker_id": worker_id, "lease_seconds": lease_seconds})
    return transition(
        conn,
        _start,
        _current_status,
        entity=ENTITY,
        key=parse_id(execution_id),
        target="running",
        audit=audit,
        params=lease.model_dump(),
    )


def claim_next(
    conn: Connection, *, worker_id: str, lease_seconds: float = DEFAULT_LEASE_SECONDS
) -> Execution | None:
    """Claim the oldest pending execution, or None when there is none.

    Concurrent claimers skip each other's locked rows, so each pending
    execution is claimed exactly once.
    """
    lease = validate(_Lease, {"worker_id": worker_id, "lease_seconds": lease_seconds})
    return _claim_next(conn, **lease.model_dump())


def renew_lease(
    conn: Connection,
    execution_id: UUID | str,
    *,
    worker_id: str,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
) -> Execution:
    """Extend the lease; IllegalTransition if the execution is not running under this worker."""
    lease = validate(_Lease, {"worker_id": worker_id, "lease_seconds": lease_seconds})
    return transition(
        conn,
        _renew_lease,
        _current_status,
        entity=ENTITY,
        key=parse_id(execution_id),
        target="running",
        audit=None,
        params=lease.model_dump(),
    )


def succeed(
    conn: Connection,
    execution_id: UUID | str,
    output: Mapping[str, Any] | None = None,
    *,
    audit: Audit | None = None,
) -> Execution:
    """Finish a running execution with its output."""
    outcome = validate(_Outcome, {"output": {} if output is None else output})
    return transition(
        conn,
        _succeed,
        _current_status,
        entity=ENTITY,
        key=parse_id(execution_id),
        target="succeeded",
        audit=audit,
        params={"output": jsonb(outcome.output)},
    )


def fail(
    conn: Connection, execution_id: UUID | str, error: str, *, audit: Audit | None = None
) -> Execution:
    """Finish a running execution as failed with its error."""
    outcome = validate(_Outcome, {"error": error})
    return transition(
        conn,
        _fail,
        _current_status,
        entity=ENTITY,
        key=parse_id(execution_id),
        target="failed",
        audit=audit,
        params={"error": outcome.error},
    )


def cancel(conn: Connection, execution_id: UUID | str, *, audit: Audit | None = None) -> Execution:
    """Cancel a pending or running execution."""
    return transition(
        conn,
        _cancel,
        _current_status,
        entity=ENTITY,
        key=parse_id(execution_id),
        target="cancelled",
        audit=audit,
    )


def requeue_expired(conn: Connection, *, limit: int = 100) -> builtins.list[Execution]:
    """Return up to ``limit`` running executions whose lease expired to pending."""
    return _requeue_expired(conn, limit=check_limit(limit))


def delete(conn: Connection, execution_id: UUID | str, *, audit: Audit | None = None) -> None:
    """Delete an execution and its checkpoints; NotFound if no such execution."""
    delete_row(conn, _delete, entity=ENTITY, key=parse_id(execution_id), audit=audit)
