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

from toolkit.aio.db.database import AsyncConnection
from toolkit.aio.db.drivers import run
from toolkit.aio.db.patterns import (
    AuditWrite,
    Entity,
    check_limit,
    jsonb,
    parse_id,
    transition,
    validate,
)
from toolkit.db.bind import Many, Returning, Scalar
from toolkit.records import Input, JsonObject
from toolkit.repositories.records import (
    Execution,
    ExecutionCreate,
    ExecutionFilter,
    RequeuedExecution,
)

ENTITY = "execution"
DEFAULT_LEASE_SECONDS = 60.0
_LEASE = ("worker_id", "lease_seconds")


class _Lease(Input):
    worker_id: Annotated[
        str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]*$")
    ]
    # strict: a bool is not a number of seconds (an int or a float is).
    lease_seconds: Annotated[float, Field(strict=True, gt=0, le=86400)]


class _Outcome(Input):
    output: JsonObject | None = None
    error: Annotated[str, StringConstraints(max_length=10000, pattern=r"^[^\x00]*$")] | None = None


_start = Returning("executions.start", Execution, ("id", *_LEASE))
_claim_next = Returning("executions.claim_next", Execution, _LEASE)
_renew_lease = Returning("executions.renew_lease", Execution, ("id", *_LEASE))
_succeed = Returning("executions.succeed", Execution, ("id", "output"))
_fail = Returning("executions.fail", Execution, ("id", "error"))
_cancel = Returning("executions.cancel", Execution, ("id",))
_requeue_expired = Many("executions.requeue_expired", RequeuedExecution, ("limit",))
_current_status = Scalar("executions.current_status", str, ("id",))
_entity = Entity("executions", Execution, ExecutionFilter, ExecutionCreate)

create, get, list = _entity.create, _entity.get, _entity.list
count, delete = _entity.count, _entity.delete


async def start(
    conn: AsyncConnection,
    execution_id: UUID | str,
    *,
    worker_id: str,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    audit: AuditWrite | None = None,
) -> Execution:
    """Move a pending execution to running under ``worker_id``'s lease."""
    lease = validate(_Lease, {"worker_id": worker_id, "lease_seconds": lease_seconds})
    return await transition(
        conn,
        _start,
        _current_status,
        entity=ENTITY,
        key=parse_id(execution_id),
        target="running",
        audit=audit,
        params=lease.model_dump(),
    )


async def claim_next(
    conn: AsyncConnection, *, worker_id: str, lease_seconds: float = DEFAULT_LEASE_SECONDS
) -> Execution | None:
    """Claim the oldest pending execution, or None when there is none.

    Concurrent claimers skip each other's locked rows, so each pending
    execution is claimed exactly once.
    """
    lease = validate(_Lease, {"worker_id": worker_id, "lease_seconds": lease_seconds})
    return await run(conn, _claim_next, **lease.model_dump())


async def renew_lease(
    conn: AsyncConnection,
    execution_id: UUID | str,
    *,
    worker_id: str,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
) -> Execution:
    """Extend the lease; IllegalTransition if the execution is not running under this worker."""
    lease = validate(_Lease, {"worker_id": worker_id, "lease_seconds": lease_seconds})
    return await transition(
        conn,
        _renew_lease,
        _current_status,
        entity=ENTITY,
        key=parse_id(execution_id),
        target="running",
        audit=None,
        params=lease.model_dump(),
    )


async def succeed(
    conn: AsyncConnection,
    execution_id: UUID | str,
    output: Mapping[str, Any] | None = None,
    *,
    audit: AuditWrite | None = None,
) -> Execution:
    """Finish a running execution with its output."""
    outcome = validate(_Outcome, {"output": {} if output is None else output})
    return await transition(
        conn,
        _succeed,
        _current_status,
        entity=ENTITY,
        key=parse_id(execution_id),
        target="succeeded",
        audit=audit,
        params={"output": jsonb(outcome.output)},
    )


async def fail(
    conn: AsyncConnection, execution_id: UUID | str, error: str, *, audit: AuditWrite | None = None
) -> Execution:
    """Finish a running execution as failed with its error."""
    outcome = validate(_Outcome, {"error": error})
    return await transition(
        conn,
        _fail,
        _current_status,
        entity=ENTITY,
        key=parse_id(execution_id),
        target="failed",
        audit=audit,
        params={"error": outcome.error},
    )


async def cancel(
    conn: AsyncConnection, execution_id: UUID | str, *, audit: AuditWrite | None = None
) -> Execution:
    """Cancel a pending or running execution."""
    return await transition(
        conn,
        _cancel,
        _current_status,
        entity=ENTITY,
        key=parse_id(execution_id),
        target="cancelled",
        audit=audit,
    )


async def requeue_expired(
    conn: AsyncConnection, *, limit: int = 100
) -> builtins.list[RequeuedExecution]:
    """Return up to ``limit`` running executions whose lease expired to pending.

    Each names its tenant: a role the policies do not bind sweeps every tenant's.
    """
    return await run(conn, _requeue_expired, limit=check_limit(limit))
