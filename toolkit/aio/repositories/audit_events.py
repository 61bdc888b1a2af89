"""Audit events (queries in ``sql/audit_events.sql``).

The log is append-only (a trigger refuses UPDATE, DELETE and TRUNCATE) and
hash-chained: each row's hash covers the previous row's hash and its own
content. :func:`verify_chain` recomputes the chain and names the first
broken link. Repository writes record their event in the same transaction
when given ``audit=Audit(actor_id)`` (:mod:`toolkit.repositories.audit`);
:func:`record` is the direct call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from toolkit.aio.db.database import AsyncConnection
from toolkit.aio.db.drivers import run
from toolkit.aio.db.patterns import Entity, validate
from toolkit.db.bind import Many
from toolkit.repositories.audit import (
    APPEND,
    RETENTION_ANCHORS,
    append_values,
    dropped_by_retention,
    retention_anchors_by_seq,
)
from toolkit.repositories.records import (
    AuditEvent,
    AuditEventCreate,
    AuditFilter,
    ChainLink,
    ChainReport,
)

_CHAIN_BATCH = 1000

_chain = Many("audit_events.chain", ChainLink, ("after_seq", "limit"))
_entity = Entity("audit_events", AuditEvent, AuditFilter, delete=False)

get, list, count = _entity.get, _entity.list, _entity.count


async def record(conn: AsyncConnection, data: AuditEventCreate | Mapping[str, Any]) -> AuditEvent:
    """Append one event; call it inside the transaction of the change it records."""
    return await run(conn, APPEND, **append_values(validate(AuditEventCreate, data)))


async def verify_chain(conn: AsyncConnection) -> ChainReport:
    """Recompute the hash chain; the report names the first broken link, if any.

    A row edited in place fails its own hash; a deleted row leaves a gap in
    ``seq`` and a ``prev_hash`` that no longer matches. Rows that ``toolkit
    maintain`` dropped with their partition leave a gap a retention anchor
    bridges (:func:`~toolkit.repositories.audit.dropped_by_retention`); a
    retention anchor that disagrees with a row still there is reported.
    """
    retained = retention_anchors_by_seq(await run(conn, RETENTION_ANCHORS))
    checked = 0
    expected_seq = 1
    previous_hash = b""
    after = 0
    while True:
        links = await run(conn, _chain, after_seq=after, limit=_CHAIN_BATCH)
        for link in links:
            reason = None
            if link.seq != expected_seq and not (
                link.seq > expected_seq and dropped_by_retention(retained, link.seq, link.prev_hash)
            ):
                reason = f"row seq {expected_seq} is missing (next present is {link.seq})"
            elif link.seq == expected_seq and link.prev_hash != previous_hash:
                reason = "prev_hash does not match the previous row's hash"
            elif link.hash != link.expected_hash:
                reason = "row content does not match its hash (edited)"
            elif retained.get(link.seq, link.hash) != link.hash:
                reason = "a retention anchor records another hash for this row"
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
