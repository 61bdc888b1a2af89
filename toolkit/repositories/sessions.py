# Generated from toolkit/aio/repositories/sessions.py by tools/async_to_sync.py: do not edit.
# Edit the async source and run `tox -e generate`.
"""Sessions (queries in ``sql/sessions.sql``).

A session is a user's conversation with an agent: jsonb state and an expiry
that :func:`touch` extends. An ended or expired session refuses changes.
"""

from __future__ import annotations

from typing import Unpack
from uuid import UUID

from toolkit.db.bind import Exec, OneOrNone, Returning
from toolkit.db.database import Connection
from toolkit.db.drivers import run
from toolkit.db.patterns import (
    AuditWrite,
    Entity,
    atomic,
    check_limit,
    parse_id,
    record_audit,
    validate_patch,
)
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


def update(conn: Connection, session_id: UUID | str, **arguments: Unpack[SessionUpdate]) -> Session:
    """Change the title or state at ``expected_version`` (see Entity.update)."""
    return _entity.update(conn, session_id, **arguments)


def touch(conn: Connection, session_id: UUID | str, *, ttl_seconds: int = 86400) -> Session:
    """Extend a live session to expire ``ttl_seconds`` from now.

    IllegalTransition if it has ended or already expired.
    """
    key = parse_id(session_id)
    ttl = validate_patch(SessionCreate, {"ttl_seconds": ttl_seconds})["ttl_seconds"]
    touched = run(conn, _touch, id=key, ttl_seconds=ttl)
    if touched is None:
        _refuse(conn, key, "active")
    assert touched is not None
    return touched


def end(conn: Connection, session_id: UUID | str, *, audit: AuditWrite | None = None) -> Session:
    """End a session; IllegalTransition if it has already ended."""
    key = parse_id(session_id)
    with atomic(conn):
        ended = run(conn, _end, id=key)
        if ended is None:
            _refuse(conn, key, "ended")
        assert ended is not None
        record_audit(conn, audit, "session.ended", key)
    return ended


def purge_expired(conn: Connection, *, limit: int = 1000) -> int:
    """Delete up to ``limit`` expired sessions; returns how many went."""
    return run(conn, _purge_expired, limit=check_limit(limit))


def _refuse(conn: Connection, key: UUID, target: str) -> None:
    current = run(conn, _current_state, id=key)
    if current is None:
        raise NotFound(ENTITY, key)
    status = "ended" if current.ended_at is not None else "expired" if current.expired else "active"
    if status == target == "active":
        raise RetryableConflict(f"session {key} changed concurrently while it was updated; retry")
    raise IllegalTransition(ENTITY, key, status, target)
