"""Audit events (queries in ``sql/audit_events.sql``).

The log is append-only (a trigger refuses UPDATE, DELETE and TRUNCATE) and
hash-chained: each row's hash covers the previous row's hash and its own
content. :func:`verify_chain` recomputes the chain and names the first
broken link. Repository writes record their event in the same transaction
when given ``audit=Audit(actor_id)``; :func:`record` is the direct call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from toolkit.db.bind import Many, One, Scalar
from toolkit.db.database import Connection
from toolkit.db.patterns import (
    DEFAULT_LIMIT,
    insert_audit_event,
    list_page,
    parse_id,
    validate,
)
from toolkit.records import AuditEvent, AuditEventCreate, AuditFilter, ChainLink, ChainReport, Page

ENTITY = "audit event"
_FILTERS = ("entity", "entity_id", "actor_id")
_CHAIN_BATCH = 1000

_get = One("audit_events.get", AuditEvent, ("id",), entity=ENTITY)
_list = Many("audit_events.list", AuditEvent, (*_FILTERS, "limit"))
_count = Scalar("audit_events.count", int, _FILTERS)
_chain = Many("audit_events.chain", ChainLink, ("after_seq", "limit"))


def record(conn: Connection, data: AuditEventCreate | Mapping[str, Any]) -> AuditEvent:
    """Append one event; call it inside the transaction of the change it records."""
    return insert_audit_event(conn, validate(AuditEventCreate, data))


def get(conn: Connection, event_id: UUID | str) -> AuditEvent:
    """The audit event with this id; NotFound otherwise."""
    key = parse_id(event_id)
    return _get(conn, key, id=key)


def list(
    conn: Connection,
    filters: AuditFilter | Mapping[str, Any] | None = None,
    *,
    sort: str = "created_at",
    descending: bool = False,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page[AuditEvent]:
    """A keyset page of events; filter by ``entity``, ``entity_id``, ``actor_id``."""
    where = validate(AuditFilter, filters)
    return list_page(
        _list,
        conn,
        where.model_dump(),
        sort=sort,
        descending=descending,
        limit=limit,
        cursor=cursor,
    )


def count(conn: Connection, filters: AuditFilter | Mapping[str, Any] | None = None) -> int:
    """How many events match the filters."""
    return _count(conn, **validate(AuditFilter, filters).model_dump()) or 0


def verify_chain(conn: Connection) -> ChainReport:
    """Recompute the hash chain; the report names the first broken link, if any.

    A row edited in place fails its own hash; a deleted row leaves a gap in
    ``seq`` and a ``prev_hash`` that no longer matches.
    """
    checked = 0
    expected_seq = 1
    previous_hash = b""
    after = 0
    while True:
        links = _chain(conn, after_seq=after, limit=_CHAIN_BATCH)
        for link in links:
            reason = None
            if link.seq != expected_seq:
                reason = f"row seq {expected_seq} is missing (next present is {link.seq})"
            elif link.prev_hash != previous_hash:
                reason = "prev_hash does not match the previous row's hash"
            elif link.hash != link.expected_hash:
                reason = "row content does not match its hash (edited)"
            if reason:
                return ChainReport(
                    ok=False,
                    checked=checked,
                    first_broken_seq=link.seq,
                    first_broken_id=link.id,
                    reason=reason,
                )
            checked += 1
            expected_seq = link.seq + 1
            previous_hash = link.hash
        if len(links) < _CHAIN_BATCH:
            return ChainReport(ok=True, checked=checked)
        after = links[-1].seq
