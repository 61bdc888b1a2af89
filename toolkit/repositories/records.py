"""The entities' records: what their queries return, and the inputs that
create, filter and change them.

Built from the building blocks of :mod:`toolkit.records` (Record, Input,
StoredJson, the checked text and JSON types). A record's fields are the
columns of its queries, in order; ``toolkit verify`` checks that against the
live schema. An entity's ``...Update`` (a TypedDict) is the one declaration
of what its ``update`` may change: the repository function's keywords are
typed from it (``**arguments: Unpack[AgentUpdate]``, so an unknown field is a
type error) and :class:`~toolkit.aio.db.patterns.Entity` takes its keys as
the patchable columns; values are checked like the create input's fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from toolkit.db.inputs import GuardedUpdate, Unset
from toolkit.records import (
    Email,
    Input,
    JsonObject,
    LongText,
    Name,
    Record,
    Slug,
    StoredJson,
    WrittenJson,
)

Role = Literal["admin", "member", "viewer"]
WorkflowStatus = Literal["draft", "published", "archived"]
ExecutionStatus = Literal["pending", "running", "succeeded", "failed", "cancelled"]


# Tenants (workspaces) and memberships


class Tenant(Record):
    """A workspace: the unit every tenant-owned row belongs to."""

    id: UUID
    name: str
    created_at: datetime


class TenantCreate(Input):
    """A new tenant. ``id`` None: the transaction's tenant (the only id its policy
    accepts), or a new id on a connection without one (an operator's)."""

    id: UUID | None = None
    name: Name


class TenantFilter(Input):
    """``tenants.list`` takes no filter: the policies already show a tenant only itself."""


class Membership(Record):
    """A user's place in a tenant: the tenant sees the user, and its rows may name them."""

    tenant_id: UUID
    user_id: UUID
    created_at: datetime


# Users


class User(Record):
    """A person who uses the platform. The password hash is never part of it."""

    id: UUID
    email: str
    display_name: str
    role: Role
    is_active: bool
    version: int
    created_at: datetime
    updated_at: datetime


class UserCredentials(Record):
    """What authentication needs, from the separate credentials query."""

    id: UUID
    email: str
    password_hash: str | None
    is_active: bool


class UserCreate(Input):
    email: Email
    display_name: Name
    role: Role = "member"
    is_active: bool = True
    password_hash: Annotated[str, StringConstraints(max_length=1024)] | None = None


class UserFilter(Input):
    role: Role | None = None
    is_active: bool | None = None


class UserUpdate(GuardedUpdate, total=False):
    """What ``users.update`` changes (each field checked like UserCreate's)."""

    email: str | Unset
    display_name: str | Unset
    role: str | Unset
    is_active: bool | Unset


# Agents


class AgentConfig(StoredJson):
    """How an agent calls its model (stored as jsonb)."""

    model: Annotated[str, StringConstraints(max_length=200)] | None = None
    system_prompt: Annotated[str, StringConstraints(max_length=100_000)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    tools: list[Annotated[str, StringConstraints(max_length=200)]] = Field(default_factory=list)


class Agent(Record):
    """An AI agent owned by a user."""

    id: UUID
    owner_id: UUID
    name: str
    type: str
    description: str | None
    config: AgentConfig
    is_active: bool
    version: int
    created_at: datetime
    updated_at: datetime


class AgentCreate(Input):
    owner_id: UUID
    name: Name
    type: Slug
    description: LongText | None = None
    config: WrittenJson[AgentConfig] = Field(default_factory=AgentConfig)
    is_active: bool = True


class AgentFilter(Input):
    type: Slug | None = None
    is_active: bool | None = None
    owner_id: UUID | None = None


class AgentUpdate(GuardedUpdate, total=False):
    """What ``agents.update`` changes (each field checked like AgentCreate's)."""

    name: str | Unset
    type: str | Unset
    description: str | Unset | None
    config: AgentConfig | Mapping[str, Any] | Unset
    is_active: bool | Unset


# Workflows


class WorkflowStep(StoredJson):
    """One step of a workflow definition."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    action: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    params: dict[str, Any] = Field(default_factory=dict)


class WorkflowDefinition(StoredJson):
    """The steps a workflow runs (stored as jsonb)."""

    steps: list[WorkflowStep] = Field(default_factory=list)


class Workflow(Record):
    """A workflow: a versioned definition that executions run."""

    id: UUID
    owner_id: UUID
    agent_id: UUID | None
    name: str
    description: str | None
    definition: WorkflowDefinition
    status: WorkflowStatus
    version: int
    created_at: datetime
    updated_at: datetime


class WorkflowCreate(Input):
    owner_id: UUID
    agent_id: UUID | None = None
    name: Name
    description: LongText | None = None
    definition: WrittenJson[WorkflowDefinition] = Field(default_factory=WorkflowDefinition)


class WorkflowFilter(Input):
    status: WorkflowStatus | None = None
    owner_id: UUID | None = None


class WorkflowUpdate(GuardedUpdate, total=False):
    """What ``workflows.update`` changes (each field checked like WorkflowCreate's)."""

    agent_id: UUID | Unset | None
    name: str | Unset
    description: str | Unset | None
    definition: WorkflowDefinition | Mapping[str, Any] | Unset


# Executions


class Execution(Record):
    """One run of a workflow."""

    id: UUID
    workflow_id: UUID
    status: ExecutionStatus
    input: dict[str, Any]
    output: dict[str, Any] | None
    error: str | None
    attempt: int
    worker_id: str | None
    lease_expires_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime


class RequeuedExecution(Execution):
    """An execution a sweep returned to pending, with the tenant it belongs to.

    A sweep by a role the policies do not bind covers every tenant; its
    ``workflow.execute`` message must be the execution's tenant's.
    """

    tenant_id: UUID


class ExecutionCreate(Input):
    workflow_id: UUID
    input: JsonObject = Field(default_factory=dict)


class ExecutionFilter(Input):
    status: ExecutionStatus | None = None
    workflow_id: UUID | None = None


# Checkpoints


class Checkpoint(Record):
    """An immutable snapshot of an execution's state."""

    id: UUID
    execution_id: UUID
    sequence: int
    parent_id: UUID | None
    state: dict[str, Any]
    metadata: dict[str, Any]
    created_at: datetime


class CheckpointCreate(Input):
    execution_id: UUID
    # strict: True, 1.0 or Decimal('1') is not a sequence number.
    sequence: Annotated[int, Field(strict=True, ge=0, le=2**31 - 1)]
    parent_id: UUID | None = None
    state: JsonObject
    metadata: JsonObject = Field(default_factory=dict)


# Sessions


class Session(Record):
    """A user's conversation with an agent."""

    id: UUID
    user_id: UUID
    agent_id: UUID
    title: str | None
    state: dict[str, Any]
    expires_at: datetime
    ended_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime


class SessionCreate(Input):
    user_id: UUID
    agent_id: UUID
    title: Name | None = None
    state: JsonObject = Field(default_factory=dict)
    ttl_seconds: Annotated[int, Field(strict=True, ge=1, le=366 * 86400)] = 86400


class SessionState(Record):
    """Why a session refused a change: its version, expiry and end."""

    id: UUID
    version: int
    expires_at: datetime
    ended_at: datetime | None
    expired: bool | None


class SessionFilter(Input):
    user_id: UUID | None = None
    agent_id: UUID | None = None


class SessionUpdate(GuardedUpdate, total=False):
    """What ``sessions.update`` changes (each field checked like SessionCreate's)."""

    title: str | Unset | None
    state: Mapping[str, Any] | Unset


# Audit events


class AuditEvent(Record):
    """One entry of the append-only audit log."""

    id: UUID
    seq: int
    actor_id: UUID | None
    action: str
    entity: str
    entity_id: UUID | None
    details: dict[str, Any]
    created_at: datetime


class AuditEventCreate(Input):
    actor_id: UUID | None = None
    action: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")]
    entity: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    entity_id: UUID | None = None
    details: JsonObject = Field(default_factory=dict)


class AuditFilter(Input):
    entity: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")] | None = None
    entity_id: UUID | None = None
    actor_id: UUID | None = None


class ChainLink(Record):
    """One row of the audit chain as the verifier sees it."""

    seq: int
    id: UUID
    prev_hash: bytes
    hash: bytes
    expected_hash: bytes


class RetentionAnchor(Record):
    """Where a tenant's audit chain goes on after a partition drop: a dropped row's
    sequence and hash (its successor links to it), its time and its partition."""

    seq: int
    hash: bytes
    created_at: datetime
    dropped_partition: str


class ChainReport(BaseModel):
    """The outcome of verifying the audit chain."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    checked: int
    first_broken_seq: int | None = None
    first_broken_id: UUID | None = None
    reason: str | None = None
