"""Sessions (queries in ``sql/sessions.sql``).

A session is a user's conversation with an agent: jsonb state and an expiry
that :func:`touch` extends. An ended or expired session refuses changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from toolkit.aio.db.database import AsyncConnection
from toolkit.aio.db.patterns import (
    UNSET,
    Audit,
    Entity,
    Unset,
    atomic,
    changed_fields,
    check_limit,
    guarded_update,
    jsonb,
    parse_id,
    record_audit,
    validate_patch,
)
from toolkit.db.bind import Exec, OneOrNone, Returning
from toolkit.errors import IllegalTransition, NotFound, RetryableConflict
from toolkit.records import Session, SessionCreate, SessionFilter, SessionState

ENTITY = "session"
_PATCHABLE = ("title", "state")

_update = Returning(
    "sessions.update",
    Session,
    ("id", "expected_version", *_PATCHABLE, *(f"set_{name}" for name in _PATCHABLE)),
)
_touch = Returning("sessions.touch", Session, ("id", "ttl_seconds"))
_end = Returning("sessions.end", Session, ("id",))
_current_state = OneOrNone("sessions.current_state", SessionState, ("id",))
_purge_expired = Exec("sessions.purge_expired", ("limit",))
_entity: Entity[Session, SessionFilter] = Entity(
    "sessions",
    Session,
    SessionFilter,
    entity=ENTITY,
    create=SessionCreate,
    json_columns=("state",),
    search=True,
)

create = _entity.create
get = _entity.get
list = _entity.list
count = _entity.count
search = _entity.search
delete = _entity.delete


async def update(
    conn: AsyncConnection,
    session_id: UUID | str,
    *,
    expected_version: int,
    title: str | Unset | None = UNSET,
    state: Mapping[str, Any] | Unset = UNSET,
    audit: Audit | None = None,
) -> Session:
    """Change the title or state; StaleVersion or NotFound when the guard fails."""
    key = parse_id(session_id)
    changes = changed_fields({"title": title, "state": state})
    values = validate_patch(SessionCreate, changes)
    if "state" in values:
        values["state"] = jsonb(values["state"])
    return await guarded_update(
        conn,
        _update,
        _current_version,
        entity=ENTITY,
        key=key,
        expected_version=expected_version,
        changes=values,
        columns=_PATCHABLE,
        audit=audit,
    )


async def touch(
    conn: AsyncConnection, session_id: UUID | str, *, ttl_seconds: int = 86400
) -> Session:
    """Extend a live session to expire ``ttl_seconds`` from now.

    IllegalTransition if it has ended or already expired.
    """
    key = parse_id(session_id)
    ttl = validate_patch(SessionCreate, {"ttl_seconds": ttl_seconds})["ttl_seconds"]
    touched = await _touch.acall(conn, id=key, ttl_seconds=ttl)
    if touched is None:
        await _refuse(conn, key, "active")
    assert touched is not None
    return touched


async def end(
    conn: AsyncConnection, session_id: UUID | str, *, audit: Audit | None = None
) -> Session:
    """End a session; IllegalTransition if it has already ended."""
    key = parse_id(session_id)
    async with atomic(conn):
        ended = await _end.acall(conn, id=key)
        if ended is None:
            await _refuse(conn, key, "ended")
        assert ended is not None
        await record_audit(conn, audit, "session.ended", key)
    return ended


async def purge_expired(conn: AsyncConnection, *, limit: int = 1000) -> int:
    """Delete up to ``limit`` expired sessions; returns how many went."""
    return await _purge_expired.acall(conn, limit=check_limit(limit))


async def _current_version(conn: AsyncConnection, key: UUID) -> int | None:
    current = await _current_state.acall(conn, id=key)
    return None if current is None else current.version


async def _refuse(conn: AsyncConnection, key: UUID, target: str) -> None:
    current = await _current_state.acall(conn, id=key)
    if current is None:
        raise NotFound(ENTITY, key)
    status = "ended" if current.ended_at is not None else "expired" if current.expired else "active"
    if status == target == "active":
        raise RetryableConflict(f"session {key} changed concurrently while it was updated; retry")
    raise IllegalTransition(ENTITY, key, status, target)
