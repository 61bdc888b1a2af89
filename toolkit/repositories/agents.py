# Generated from toolkit/aio/repositories/agents.py by tools/async_to_sync.py: do not edit.
# Edit the async source and run `tox -e generate`.
"""Agents: AI agents owned by users (queries in ``sql/agents.sql``)."""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping
from typing import Any, Unpack
from uuid import UUID

from toolkit.db.bind import Exec
from toolkit.db.database import Connection
from toolkit.db.patterns import DEFAULT_LIMIT, Entity, insert_columns, validate
from toolkit.errors import InvalidInput, bounded_repr
from toolkit.repositories.records import Agent, AgentCreate, AgentFilter, AgentUpdate

_entity = Entity(
    "agents", Agent, AgentFilter, AgentCreate, AgentUpdate, audit_fields=("name",), search=True
)
_create_many = Exec(
    "agents.create_many",
    ("owner_ids", "names", "types", "descriptions", "configs", "is_active"),
)

create, get, list = _entity.create, _entity.get, _entity.list
count, search, delete = _entity.count, _entity.search, _entity.delete


def create_many(conn: Connection, agents: Iterable[AgentCreate]) -> int:
    """Bulk-create agents in the connection's tenant and return how many were written.

    Each input is an AgentCreate or a mapping like :func:`create` takes; all
    are validated before anything is written, so bad input writes nothing.
    An InvalidReference part-way (an owner that is not a user of this
    tenant) leaves nothing behind either (see :func:`insert_columns`).
    """
    if not isinstance(agents, Iterable) or isinstance(agents, str | bytes | Mapping):
        raise InvalidInput(
            f"agents must be an iterable of agent inputs, got {bounded_repr(agents)}",
            field="agents",
            value=agents,
        )
    checked = [validate(AgentCreate, a) for a in agents]

    def arrays(start: int, stop: int) -> dict[str, builtins.list[Any]]:
        batch = checked[start:stop]
        return {
            "owner_ids": [a.owner_id for a in batch],
            "names": [a.name for a in batch],
            "types": [a.type for a in batch],
            "descriptions": [a.description for a in batch],
            "configs": [a.config.model_dump_json() for a in batch],
            "is_active": [a.is_active for a in batch],
        }

    return insert_columns(conn, _create_many, len(checked), arrays)


def by_type(
    conn: Connection, agent_type: str, *, limit: int = DEFAULT_LIMIT
) -> builtins.list[Agent]:
    """The first agents of a type, oldest first."""
    return (_entity.list(conn, {"type": agent_type}, limit=limit)).items


def active(conn: Connection, *, limit: int = DEFAULT_LIMIT) -> builtins.list[Agent]:
    """The first active agents, oldest first."""
    return (_entity.list(conn, {"is_active": True}, limit=limit)).items


def update(conn: Connection, agent_id: UUID | str, **arguments: Unpack[AgentUpdate]) -> Agent:
    """Change the fields given in AgentUpdate at ``expected_version`` (see Entity.update)."""
    return _entity.update(conn, agent_id, **arguments)
