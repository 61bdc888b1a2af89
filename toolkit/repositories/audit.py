"""Audit: who made a change, and the one statement that appends its audit event.

A write given ``audit=Audit(actor_id)`` (a repository's, or a file's in
:mod:`toolkit.storage`) records an audit event in the change's own
transaction: it asks :meth:`Audit.event` for the statement and runs it after
the change. The db layer knows only the
:class:`~toolkit.db.inputs.AuditWrite` protocol; the audit log is this
layer's entity. No I/O here, so the sync and async repositories share it
(``audit_events.record`` runs :data:`APPEND` too). Hand-written: there is no
async source of this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from toolkit.db.bind import Many, One
from toolkit.db.inputs import AuditStatement, jsonb, validate
from toolkit.errors import InvalidInput, bounded_repr
from toolkit.repositories.records import AuditEvent, AuditEventCreate, RetentionAnchor

APPEND = One(
    "audit_events.record",
    AuditEvent,
    ("actor_id", "action", "entity", "entity_id", "details"),
    entity="audit event",
)
"""Append one event (the trigger links it into the chain) and return it."""

RETENTION_ANCHORS = Many("audit_events.retention_anchors", RetentionAnchor, ())
"""The transaction's tenant's retention anchors (migration 0013), by sequence."""


def retention_anchors_by_seq(anchors: Iterable[RetentionAnchor]) -> dict[int, bytes]:
    """Each retention anchor's hash by its sequence, for :func:`dropped_by_retention`."""
    return {anchor.seq: bytes(anchor.hash) for anchor in anchors}


def dropped_by_retention(anchors: Mapping[int, bytes], seq: int, prev_hash: bytes) -> bool:
    """Whether the rows missing right before row ``seq`` went with a partition that
    ``toolkit maintain`` dropped: a retention anchor records row ``seq - 1`` with the
    very hash row ``seq`` links to. (A chain whose oldest rows were dropped starts so.)"""
    return anchors.get(seq - 1) == bytes(prev_hash)


def append_values(event: AuditEventCreate) -> dict[str, Any]:
    """The values :data:`APPEND` takes for a validated event."""
    return {
        "actor_id": event.actor_id,
        "action": event.action,
        "entity": event.entity,
        "entity_id": event.entity_id,
        "details": jsonb(event.details),
    }


@dataclass(frozen=True)
class Audit:
    """Who made a change, for the audit event a write records with it.

    ``details`` are added to the event's own (and win over them).
    """

    actor_id: UUID | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def event(
        self, action: str, entity_id: UUID | None, details: Mapping[str, Any]
    ) -> AuditStatement:
        """The statement appending the event of ``action`` (``<entity>.<verb>``) on
        ``entity_id``; InvalidInput when the actor, the action or the details do not fit."""
        if not isinstance(self.details, Mapping):
            raise InvalidInput(
                f"audit details must be a mapping, got {bounded_repr(self.details)}",
                field="audit",
                value=self.details,
            )
        event = validate(
            AuditEventCreate,
            {
                "actor_id": self.actor_id,
                "action": action,
                "entity": action.split(".", 1)[0],
                "entity_id": entity_id,
                "details": {**details, **self.details},
            },
        )
        return AuditStatement(APPEND, append_values(event))
