"""Sessions (queries in ``sql/sessions.sql``).

A session is a user's conversation with an agent: jsonb state and an expiry
that :func:`touch` extends. An ended or expired session refuses changes.
"""

from __future__ import annotations

from typing import Unpack
from uuid import UUID

from toolkit.aio.db.database import AsyncConnection
from toolkit.aio.db.drivers import run
from toolkit.aio.db.patterns import (
    AuditWrite,
    Entity,
    atomic,
    check_limit,
    parse_id,
    record_audit,
    validate_patch,
)
from toolkit.db.bind import Exec, OneOrNone, Returning
from toolkit.errors import IllegalTransition, NotFound, RetryableConflict
from toolkit.repositories.records import (
    Session,
    SessionCreate,
    SessionFilter,
    SessionState,
    SessionUpdate,
)

ENTITY = "session"

_touch = Returning("sessions.touch", Session, ("id", "ttl_seconds"))
_end = Returning("sessions.end", Session, ("id",))
_current_state = OneOrNone("sessions.current_state", SessionState, ("id",))
_purge_expired = Exec("sessions.purge_expired", ("limit",))
_entity = Entity("sessions", Session, SessionFilter, SessionCreate, SessionUpdate, search=True)

create, get, list = _entity.create, _entity.get, _entity.list
count, search, delete = _entity.count, _entity.search, _entity.delete


async def update(
    conn: AsyncConnection, session_id: UUID | str, **arguments: Unpack[SessionUpdate]
) -> Session:
    """Change the title or state at ``expected_version`` (see Entity.update)."""
    return await _entity.update(conn, session_id, **arguments)


async def touch(
    conn: AsyncConnection, session_id: UUID | str, *, ttl_seconds: int = 86400
) -> Session:
    """Extend a live session to expire ``ttl_seconds`` from now.

    IllegalTransition if it has ended or already expired.
    """
    key = parse_id(session_id)
    ttl = validate_patch(SessionCreate, {"ttl_seconds": ttl_seconds})["ttl_seconds"]
    touched = await run(conn, _touch, id=key, ttl_seconds=ttl)
    if touched is None:
        await _refuse(conn, key, "active")
    assert touched is not None
    return touched


async def end(
    conn: AsyncConnection, session_id: UUID | str, *, audit: AuditWrite | None = None
) -> Session:
    """End a session; IllegalTransition if it has already ended."""
    key = parse_id(session_id)
    async with atomic(conn):
        ended = await run(conn, _end, id=key)
        if ended is None:
            await _refuse(conn, key, "ended")
        assert ended is not None
        await record_audit(conn, audit, "session.ended", key)
    return ended


async def purge_expired(conn: AsyncConnection, *, limit: int = 1000) -> int:
    """Delete up to ``limit`` expired sessions; returns how many went."""
    return await run(conn, _purge_expired, limit=check_limit(limit))


async def _refuse(conn: AsyncConnection, key: UUID, target: str) -> None:
    current = await run(conn, _current_state, id=key)
    if current is None:
        raise NotFound(ENTITY, key)
    status = "ended" if current.ended_at is not None else "expired" if current.expired else "active"
    if status == target == "active":
        raise RetryableConflict(f"session {key} changed concurrently while it was updated; retry")
    raise IllegalTransition(ENTITY, key, status, target)
