"""Workflows (queries in ``sql/workflows.sql``).

Status: draft -> published -> archived; a draft may be archived directly.
``version`` is both the workflow's version number and its optimistic lock:
every change bumps it.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from toolkit.db.bind import Exec, Many, One, Returning, Scalar
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
    transition,
    validate,
    validate_patch,
)
from toolkit.records import Page, Workflow, WorkflowCreate, WorkflowDefinition, WorkflowFilter

ENTITY = "workflow"
_FILTERS = ("status", "owner_id")
_PATCHABLE = ("agent_id", "name", "description", "definition")

_create = One(
    "workflows.create",
    Workflow,
    ("owner_id", "agent_id", "name", "description", "definition"),
    entity=ENTITY,
)
_get = One("workflows.get", Workflow, ("id",), entity=ENTITY)
_list = Many("workflows.list", Workflow, (*_FILTERS, "limit"))
_count = Scalar("workflows.count", int, _FILTERS)
_search = Many("workflows.search", Workflow, ("text", "limit"))
_update = Returning(
    "workflows.update",
    Workflow,
    ("id", "expected_version", *_PATCHABLE, *(f"set_{name}" for name in _PATCHABLE)),
)
_publish = Returning("workflows.publish", Workflow, ("id",))
_archive = Returning("workflows.archive", Workflow, ("id",))
_current_version = Scalar("workflows.current_version", int, ("id",))
_current_status = Scalar("workflows.current_status", str, ("id",))
_delete = Exec("workflows.delete", ("id",))


def create(
    conn: Connection, data: WorkflowCreate | Mapping[str, Any], *, audit: Audit | None = None
) -> Workflow:
    """Create a draft workflow; InvalidReference if its owner or agent is missing."""
    workflow = validate(WorkflowCreate, data)
    with atomic(conn):
        created = _create(
            conn,
            owner_id=workflow.owner_id,
            agent_id=workflow.agent_id,
            name=workflow.name,
            description=workflow.description,
            definition=jsonb(workflow.definition),
        )
        record_audit(conn, audit, "workflow.created", created.id, {"name": created.name})
    return created


def get(conn: Connection, workflow_id: UUID | str) -> Workflow:
    """The workflow with this id; NotFound otherwise."""
    key = parse_id(workflow_id)
    return _get(conn, key, id=key)


def list(
    conn: Connection,
    filters: WorkflowFilter | Mapping[str, Any] | None = None,
    *,
    sort: str = "created_at",
    descending: bool = False,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page[Workflow]:
    """A keyset page of workflows; filter by ``status`` and ``owner_id``.

    Sort by ``created_at`` or ``name``.
    """
    where = validate(WorkflowFilter, filters)
    return list_page(
        _list,
        conn,
        where.model_dump(),
        sort=sort,
        descending=descending,
        limit=limit,
        cursor=cursor,
    )


def count(conn: Connection, filters: WorkflowFilter | Mapping[str, Any] | None = None) -> int:
    """How many workflows match the filters."""
    return _count(conn, **validate(WorkflowFilter, filters).model_dump()) or 0


def search(conn: Connection, text: str, *, limit: int = DEFAULT_LIMIT) -> builtins.list[Workflow]:
    """Workflows whose name contains ``text``, case-insensitively."""
    return _search(conn, text=check_search_text(text), limit=check_limit(limit))


def update(
    conn: Connection,
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
    key = parse_id(workflow_id)
    changes = changed_fields(
        {"agent_id": agent_id, "name": name, "description": description, "definition": definition}
    )
    values = validate_patch(WorkflowCreate, changes)
    if "definition" in values:
        values["definition"] = jsonb(values["definition"])
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


def publish(conn: Connection, workflow_id: UUID | str, *, audit: Audit | None = None) -> Workflow:
    """Publish a draft; IllegalTransition from any other status."""
    key = parse_id(workflow_id)
    return transition(
        conn, _publish, _current_status, entity=ENTITY, key=key, target="published", audit=audit
    )


def archive(conn: Connection, workflow_id: UUID | str, *, audit: Audit | None = None) -> Workflow:
    """Archive a draft or published workflow; IllegalTransition if already archived."""
    key = parse_id(workflow_id)
    return transition(
        conn, _archive, _current_status, entity=ENTITY, key=key, target="archived", audit=audit
    )


def delete(conn: Connection, workflow_id: UUID | str, *, audit: Audit | None = None) -> None:
    """Delete a workflow and its executions; NotFound if no such workflow."""
    delete_row(conn, _delete, entity=ENTITY, key=parse_id(workflow_id), audit=audit)
