"""Agents: AI agents owned by users (queries in ``sql/agents.sql``)."""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping
from typing import Any
from uuid import UUID

from toolkit.aio.db.database import AsyncConnection
from toolkit.aio.db.patterns import (
    DEFAULT_LIMIT,
    UNSET,
    Audit,
    Entity,
    Unset,
    validate,
)
from toolkit.db.bind import Copy
from toolkit.errors import InvalidInput, bounded_repr
from toolkit.records import Agent, AgentConfig, AgentCreate, AgentFilter

ENTITY = "agent"
_PATCHABLE = ("name", "type", "description", "config", "is_active")

_entity: Entity[Agent, AgentFilter] = Entity(
    "agents",
    Agent,
    AgentFilter,
    entity=ENTITY,
    create=AgentCreate,
    json_columns=("config",),
    audit_fields=("name",),
    search=True,
    patchable=_PATCHABLE,
)
_copy = Copy("agents.copy")

create = _entity.create
get = _entity.get
list = _entity.list
count = _entity.count
search = _entity.search
delete = _entity.delete


async def create_many(conn: AsyncConnection, agents: Iterable[AgentCreate]) -> int:
    """Bulk-create agents through COPY and return how many were written.

    Each input is an AgentCreate or a mapping like :func:`create` takes; all
    are validated before the COPY starts, so bad input writes nothing. An
    InvalidReference part-way leaves nothing behind either (one statement).
    """
    if not isinstance(agents, Iterable) or isinstance(agents, str | bytes | Mapping):
        raise InvalidInput(
            f"agents must be an iterable of agent inputs, got {bounded_repr(agents)}",
            field="agents",
            value=agents,
        )
    checked = [validate(AgentCreate, a) for a in agents]
    return await _copy.acall(
        conn,
        (
            (
                a.owner_id,
                a.name,
                a.type,
                a.description,
                a.config.model_dump_json(),
                a.is_active,
            )
            for a in checked
        ),
    )


async def by_type(
    conn: AsyncConnection, agent_type: str, *, limit: int = DEFAULT_LIMIT
) -> builtins.list[Agent]:
    """The first agents of a type, oldest first."""
    return (await _entity.list(conn, {"type": agent_type}, limit=limit)).items


async def active(conn: AsyncConnection, *, limit: int = DEFAULT_LIMIT) -> builtins.list[Agent]:
    """The first active agents, oldest first."""
    return (await _entity.list(conn, {"is_active": True}, limit=limit)).items


async def update(
    conn: AsyncConnection,
    agent_id: UUID | str,
    *,
    expected_version: int,
    name: str | Unset = UNSET,
    type: str | Unset = UNSET,
    description: str | Unset | None = UNSET,
    config: AgentConfig | Mapping[str, Any] | Unset = UNSET,
    is_active: bool | Unset = UNSET,
    audit: Audit | None = None,
) -> Agent:
    """Change the given fields (UNSET leaves one as is; None sets NULL).

    Raises StaleVersion if the agent is no longer at ``expected_version``,
    NotFound if it does not exist.
    """
    return await _entity.update(
        conn,
        agent_id,
        expected_version=expected_version,
        changes={
            "name": name,
            "type": type,
            "description": description,
            "config": config,
            "is_active": is_active,
        },
        audit=audit,
    )
