"""Agents: AI agents owned by users (queries in ``sql/agents.sql``)."""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping
from typing import Any
from uuid import UUID

from toolkit.db.bind import Copy, Exec, Many, One, Returning, Scalar
from toolkit.db.database import Connection
from toolkit.db.patterns import (
    DEFAULT_LIMIT,
    UNSET,
    Audit,
    Unset,
    atomic,
    changed_fields,
    check_limit,
    check_search_text,
    delete_row,
    guarded_update,
    jsonb,
    list_page,
    parse_id,
    record_audit,
    validate,
    validate_patch,
)
from toolkit.errors import InvalidInput, bounded_repr
from toolkit.records import Agent, AgentConfig, AgentCreate, AgentFilter, Page

ENTITY = "agent"
_COLUMNS = ("owner_id", "name", "type", "description", "config", "is_active")
_FILTERS = ("type", "is_active", "owner_id")
_PATCHABLE = ("name", "type", "description", "config", "is_active")

_create = One("agents.create", Agent, _COLUMNS, entity=ENTITY)
_copy = Copy("agents.copy")
_get = One("agents.get", Agent, ("id",), entity=ENTITY)
_list = Many("agents.list", Agent, (*_FILTERS, "limit"))
_count = Scalar("agents.count", int, _FILTERS)
_search = Many("agents.search", Agent, ("text", "limit"))
_update = Returning(
    "agents.update",
    Agent,
    ("id", "expected_version", *_PATCHABLE, *(f"set_{name}" for name in _PATCHABLE)),
)
_current_version = Scalar("agents.current_version", int, ("id",))
_delete = Exec("agents.delete", ("id",))


def create(
    conn: Connection, data: AgentCreate | Mapping[str, Any], *, audit: Audit | None = None
) -> Agent:
    """Create an agent; InvalidReference if its owner does not exist."""
    agent = validate(AgentCreate, data)
    with atomic(conn):
        created = _create(
            conn,
            owner_id=agent.owner_id,
            name=agent.name,
            type=agent.type,
            description=agent.description,
            config=jsonb(agent.config),
            is_active=agent.is_active,
        )
        record_audit(conn, audit, "agent.created", created.id, {"name": created.name})
    return created


def create_many(conn: Connection, agents: Iterable[AgentCreate]) -> int:
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
    return _copy(
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


def get(conn: Connection, agent_id: UUID | str) -> Agent:
    """The agent with this id; NotFound otherwise."""
    key = parse_id(agent_id)
    return _get(conn, key, id=key)


def list(
    conn: Connection,
    filters: AgentFilter | Mapping[str, Any] | None = None,
    *,
    sort: str = "created_at",
    descending: bool = False,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page[Agent]:
    """A keyset page of agents; filter by ``type``, ``is_active``, ``owner_id``.

    Sort by ``created_at`` or ``name``; pass the page's ``next_cursor`` to
    get the next one.
    """
    where = validate(AgentFilter, filters)
    return list_page(
        _list,
        conn,
        where.model_dump(),
        sort=sort,
        descending=descending,
        limit=limit,
        cursor=cursor,
    )


def count(conn: Connection, filters: AgentFilter | Mapping[str, Any] | None = None) -> int:
    """How many agents match the filters."""
    where = validate(AgentFilter, filters)
    return _count(conn, **where.model_dump()) or 0


def by_type(
    conn: Connection, agent_type: str, *, limit: int = DEFAULT_LIMIT
) -> builtins.list[Agent]:
    """The first agents of a type, oldest first."""
    return list(conn, {"type": agent_type}, limit=limit).items


def active(conn: Connection, *, limit: int = DEFAULT_LIMIT) -> builtins.list[Agent]:
    """The first active agents, oldest first."""
    return list(conn, {"is_active": True}, limit=limit).items


def search(conn: Connection, text: str, *, limit: int = DEFAULT_LIMIT) -> builtins.list[Agent]:
    """Agents whose name contains ``text``, case-insensitively; ``%`` and ``_`` are literal."""
    return _search(conn, text=check_search_text(text), limit=check_limit(limit))


def update(
    conn: Connection,
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
    key = parse_id(agent_id)
    changes = changed_fields(
        {
            "name": name,
            "type": type,
            "description": description,
            "config": config,
            "is_active": is_active,
        }
    )
    values = validate_patch(AgentCreate, changes)
    if "config" in values:
        values["config"] = jsonb(values["config"])
    return guarded_update(
        conn,
        _update,
        lambda c, k: _current_version(c, id=k),
        entity=ENTITY,
        key=key,
        expected_version=expected_version,
        changes=values,
        columns=_PATCHABLE,
        audit=audit,
    )


def delete(conn: Connection, agent_id: UUID | str, *, audit: Audit | None = None) -> None:
    """Delete an agent; NotFound if it does not exist."""
    delete_row(conn, _delete, entity=ENTITY, key=parse_id(agent_id), audit=audit)
