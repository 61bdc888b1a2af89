# Generated from toolkit/aio/repositories/workflows.py by tools/async_to_sync.py: do not edit.
# Edit the async source and run `tox -e generate`.
"""Workflows (queries in ``sql/workflows.sql``).

Status: draft -> published -> archived; a draft may be archived directly.
``version`` is both the workflow's version number and its optimistic lock:
every change bumps it.
"""

from __future__ import annotations

from typing import Unpack
from uuid import UUID

from toolkit.db.bind import Returning, Scalar
from toolkit.db.database import Connection
from toolkit.db.patterns import AuditWrite, Entity, parse_id, transition
from toolkit.repositories.records import Workflow, WorkflowCreate, WorkflowFilter, WorkflowUpdate

ENTITY = "workflow"

_publish = Returning("workflows.publish", Workflow, ("id",))
_archive = Returning("workflows.archive", Workflow, ("id",))
_current_status = Scalar("workflows.current_status", str, ("id",))
_entity = Entity(
    "workflows",
    Workflow,
    WorkflowFilter,
    WorkflowCreate,
    WorkflowUpdate,
    audit_fields=("name",),
    search=True,
)

create, get, list = _entity.create, _entity.get, _entity.list
count, search, delete = _entity.count, _entity.search, _entity.delete


def update(
    conn: Connection, workflow_id: UUID | str, **arguments: Unpack[WorkflowUpdate]
) -> Workflow:
    """Change the fields given in WorkflowUpdate at ``expected_version`` (see Entity.update)."""
    return _entity.update(conn, workflow_id, **arguments)


def publish(
    conn: Connection, workflow_id: UUID | str, *, audit: AuditWrite | None = None
) -> Workflow:
    """Publish a draft; IllegalTransition from any other status."""
    key = parse_id(workflow_id)
    return transition(
        conn, _publish, _current_status, entity=ENTITY, key=key, target="published", audit=audit
    )


def archive(
    conn: Connection, workflow_id: UUID | str, *, audit: AuditWrite | None = None
) -> Workflow:
    """Archive a draft or published workflow; IllegalTransition if already archived."""
    key = parse_id(workflow_id)
    return transition(
        conn, _archive, _current_status, entity=ENTITY, key=key, target="archived", audit=audit
    )
