"""Agents: list with a cursor, get, create, update with ``If-Match``, delete.

The agent's ``version`` is its entity tag: ``GET`` and every write return
``ETag: "<version>"``; ``PATCH`` must send it back as ``If-Match`` and is
refused with 412 if the agent changed meanwhile (the toolkit's
``expected_version``), with 428 if it was not sent at all.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict

from agents_api.deps import Connection, services_of
from agents_api.errors import SERVICE_ERRORS, problem, problem_responses
from agents_api.http import etag, expected_version, matches, record_response
from toolkit.aio.repositories import agents
from toolkit.db.inputs import DEFAULT_LIMIT
from toolkit.records import LongText, Name, Page, Slug
from toolkit.repositories.records import Agent, AgentConfig, AgentCreate

router = APIRouter(prefix="/agents", tags=["agents"], responses=SERVICE_ERRORS)


class AgentPatch(BaseModel):
    """The fields of an agent to change; those left out keep their value.

    ``description: null`` clears the description. The toolkit checks each
    given field as it checks a new agent's.
    """

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    type: Slug | None = None
    description: LongText | None = None
    config: AgentConfig | None = None
    is_active: bool | None = None


class AgentQuery(BaseModel):
    """The query string of ``GET /agents``: paging, and the toolkit's agent filters."""

    model_config = ConfigDict(extra="forbid")

    cursor: str | None = None
    """The ``next_cursor`` of the previous page."""
    limit: int = DEFAULT_LIMIT
    type: str | None = None
    owner_id: UUID | None = None
    is_active: bool | None = None


@router.get("", response_model=Page[Agent])
async def list_agents(conn: Connection, query: Annotated[AgentQuery, Query()]) -> Response:
    """A page of agents, oldest first; pass ``next_cursor`` back as ``cursor`` for the next."""
    page = await agents.list(
        conn,
        query.model_dump(include={"type", "owner_id", "is_active"}),
        limit=query.limit,
        cursor=query.cursor,
    )
    return record_response(page)


@router.get(
    "/{agent_id}",
    response_model=Agent,
    responses={304: {"description": "Not Modified"}, **problem_responses(404)},
)
async def get_agent(
    agent_id: UUID,
    request: Request,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """One agent, with its version as ``ETag`` (304 if ``If-None-Match`` has it)."""
    # The hottest route takes its connection itself, for the same span as the
    # Connection dependency (given back before the response is sent): FastAPI's
    # machinery for a generator dependency costs more CPU than the query does.
    async with services_of(request).db.connection() as conn:
        agent = await agents.get(conn, agent_id)
    tag = etag(agent.version)
    if matches(if_none_match, tag):
        return Response(status_code=304, headers={"ETag": tag})
    return record_response(agent, headers={"ETag": tag})


@router.post("", status_code=201, response_model=Agent)
async def create_agent(body: AgentCreate, conn: Connection) -> Response:
    """Create an agent: 201 with ``Location`` and ``ETag``."""
    agent = await agents.create(conn, body)
    headers = {"Location": f"/agents/{agent.id}", "ETag": etag(agent.version)}
    return record_response(agent, status_code=201, headers=headers)


@router.patch(
    "/{agent_id}",
    response_model=Agent,
    responses=problem_responses(404, 412, 428),
)
async def update_agent(
    agent_id: UUID,
    body: AgentPatch,
    conn: Connection,
    if_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Change the given fields of the agent at the version ``If-Match`` names."""
    if if_match is None:
        return problem(
            428, "send If-Match with the agent's ETag: updates are made against a version"
        )
    changes: dict[str, Any] = body.model_dump(exclude_unset=True)
    agent = await agents.update(
        conn, agent_id, expected_version=expected_version(if_match), **changes
    )
    return record_response(agent, headers={"ETag": etag(agent.version)})


@router.delete("/{agent_id}", status_code=204, responses=problem_responses(404))
async def delete_agent(agent_id: UUID, conn: Connection) -> Response:
    """Delete the agent (and its sessions); 404 if there is none."""
    await agents.delete(conn, agent_id)
    return Response(status_code=204)
