"""Workflows (queries in ``sql/workflows.sql``).

Status: draft -> published -> archived; a draft may be archived directly.
``version`` is both the workflow's version number and its optimistic lock:
every change bumps it.
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
    parse_id,
    transition,
)
from toolkit.db.bind import Returning, Scalar
from toolkit.records import Workflow, WorkflowCreate, WorkflowDefinition, WorkflowFilter

ENTITY = "workflow"
_PATCHABLE = ("agent_id", "name", "description", "definition")

_publish = Returning("workflows.publish", Workflow, ("id",))
_archive = Returning("workflows.archive", Workflow, ("id",))
_current_status = Scalar("workflows.current_status", str, ("id",))
_entity: Entity[Workflow, WorkflowFilter] = Entity(
    "workflows",
    Workflow,
    WorkflowFilter,
    entity=ENTITY,
    create=WorkflowCreate,
    json_columns=("definition",),
    audit_fields=("name",),
    search=True,
    patchable=_PATCHABLE,
)

create = _entity.create
get = _entity.get
list = _entity.list
count = _entity.count
search = _entity.search
delete = _entity.delete


async def update(
    conn: AsyncConnection,
    workflow_id: UUID | str,
    *,
    expected_version: int,
    agent_id: UUID | Unset | None = UNSET,
    name: str | Unset = UNSET,
    description: str | Unset | None = UNSET,
    definition: WorkflowDefinition | Mapping[str, Any] | Unset = UNSET,
    audit: Audit | None = None,
) -> Workflow:
    """Change the given fields; StaleVersion or NotFound when the guard fails."""
    return await _entity.update(
        conn,
        workflow_id,
        expected_version=expected_version,
        changes={
            "agent_id": agent_id,
            "name": name,
            "description": description,
            "definition": definition,
        },
        audit=audit,
    )


async def publish(
    conn: AsyncConnection, workflow_id: UUID | str, *, audit: Audit | None = None
) -> Workflow:
    """Publish a draft; IllegalTransition from any other status."""
    key = parse_id(workflow_id)
    return await transition(
        conn, _publish, _current_status, entity=ENTITY, key=key, target="published", audit=audit
    )


async def archive(
    conn: AsyncConnection, workflow_id: UUID | str, *, audit: Audit | None = None
) -> Workflow:
    """Archive a draft or published workflow; IllegalTransition if already archived."""
    key = parse_id(workflow_id)
    return await transition(
        conn, _archive, _current_status, entity=ENTITY, key=key, target="archived", audit=audit
    )
