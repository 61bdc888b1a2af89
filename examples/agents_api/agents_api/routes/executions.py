"""Executions: start one through the outbox, read it back.

``POST /executions`` runs :func:`toolkit.aio.workflows.service.start_execution`
in the route's transaction: the pending execution and its
``workflow.execute`` message commit together, or neither does. The response
is 202: the work happens later, in a worker, once the relay has published
the message (``toolkit relay``, ``toolkit worker``); poll ``Location``.
"""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Response

from agents_api.deps import Connection, Transaction
from agents_api.errors import SERVICE_ERRORS, problem_responses
from agents_api.http import etag, record_response
from toolkit.aio.repositories import executions
from toolkit.aio.workflows.service import start_execution
from toolkit.repositories.records import Execution, ExecutionCreate

router = APIRouter(prefix="/executions", tags=["executions"], responses=SERVICE_ERRORS)


@router.post("", status_code=202, response_model=Execution)
async def start(body: ExecutionCreate, tx: Transaction) -> Response:
    """Start the workflow: 202 with the pending execution and its ``Location``."""
    execution = await start_execution(tx, body.workflow_id, body.input)
    headers = {"Location": f"/executions/{execution.id}", "ETag": etag(execution.version)}
    return record_response(execution, status_code=202, headers=headers)


@router.get("/{execution_id}", response_model=Execution, responses=problem_responses(404))
async def get_execution(execution_id: UUID, conn: Connection) -> Response:
    """One execution, as it stands (pending, running, succeeded, failed or cancelled)."""
    execution = await executions.get(conn, execution_id)
    return record_response(execution, headers={"ETag": etag(execution.version)})
