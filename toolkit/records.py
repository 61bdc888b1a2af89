"""Pydantic records, one per entity, and the inputs that create and change them.

A record's fields are the columns of its queries, in order; ``toolkit
verify`` checks that against the live schema. Records are frozen: a change
goes through a repository function and comes back as a new record.

jsonb columns held as models (an agent's ``config``, a workflow's
``definition``) are read tolerantly and written strictly. Reading, keys the
model does not know, e.g. written by another service or a newer release,
are kept: they are in the record's ``model_extra`` and in ``model_dump()``,
so one odd row never breaks a ``get`` or a whole page of ``list``. A stored
value that does not fit a known key's type cannot be held by the record and
raises :class:`~toolkit.errors.IntegrityError` naming it (never a pydantic
error). Writing (create and update), unknown keys are rejected with
:class:`~toolkit.errors.InvalidInput`, as are JSON too deep, too large or
holding what PostgreSQL cannot store; so a record read with unknown keys
must have them removed before it is written back.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

from toolkit.errors import bounded_repr

MAX_JSON_DEPTH = 32
MAX_JSON_BYTES = 1 << 20


def _clean_text(value: str) -> str:
    """Reject what PostgreSQL text cannot hold: NUL bytes and lone surrogates."""
    if "\x00" in value:
        raise ValueError("text must not contain NUL (0x00) characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return value


def _depth(value: Any, limit: int) -> int:
    depth = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > limit:
            return level
        depth = max(depth, level)
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((v, level + 1) for v in item)
    return depth


def _within_depth(value: Any) -> Any:
    """Reject JSON nested deeper than MAX_JSON_DEPTH, without recursing."""
    if _depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _clean_json(value: Any) -> Any:
    """Reject JSON too deep, too large, or holding text PostgreSQL cannot store."""
    _within_depth(value)
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not JSON-serialisable: {exc}") from None
    _clean_text(encoded.replace("\\u0000", "\x00"))
    if len(encoded.encode("utf-8")) > MAX_JSON_BYTES:
        raise ValueError(f"JSON larger than {MAX_JSON_BYTES} bytes")
    return value


Text = Annotated[str, AfterValidator(_clean_text)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_clean_text)]
LongText = Annotated[str, StringConstraints(max_length=4000), AfterValidator(_clean_text)]
Email = Annotated[
    str,
    StringConstraints(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
    AfterValidator(_clean_text),
]
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
JsonObject = Annotated[dict[str, Any], AfterValidator(_clean_json)]

Role = Literal["admin", "member", "viewer"]
WorkflowStatus = Literal["draft", "published", "archived"]
ExecutionStatus = Literal["pending", "running", "succeeded", "failed", "cancelled"]


class Record(BaseModel):
    """Base of every record: frozen, and strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Input(BaseModel):
    """Base of every input model: unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class StoredJson(BaseModel):
    """Base of a model stored in a jsonb column: read tolerantly, written strictly.

    Unknown keys are kept on read (``model_extra``); :data:`WrittenJson`
    rejects them on write. Read from a row, a value that does not fit raises
    IntegrityError (see :func:`toolkit.db.bind.record_factory`).
    """

    model_config = ConfigDict(frozen=True, extra="allow")


def _unknown_keys(value: BaseModel, path: str = "") -> list[str]:
    """The paths of every key a model (and the models inside it) does not know."""
    found = [f"{path}{key}" for key in value.model_extra or {}]
    for name in type(value).model_fields:
        item = getattr(value, name)
        elements = enumerate(item) if isinstance(item, list) else [(None, item)]
        for index, element in elements:
            if isinstance(element, BaseModel):
                where = f"{path}{name}." if index is None else f"{path}{name}.{index}."
                found.extend(_unknown_keys(element, where))
    return found


StoredT = TypeVar("StoredT", bound=StoredJson)


def _written_strictly(value: StoredT) -> StoredT:
    unknown = _unknown_keys(value)
    if unknown:
        raise ValueError(
            f"unknown key {bounded_repr(unknown[0], 60)}"
            + (f" and {len(unknown) - 1} more" if len(unknown) > 1 else "")
            + f"; {type(value).__name__} takes {', '.join(type(value).model_fields)}"
        )
    _clean_json(value.model_dump())  # python mode: NaN is refused here, not turned into null
    return value


WrittenJson = Annotated[StoredT, BeforeValidator(_within_depth), AfterValidator(_written_strictly)]
"""A :class:`StoredJson` model as an input: no unknown keys, and storable JSON."""


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


class ChainReport(BaseModel):
    """The outcome of verifying the audit chain."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    checked: int
    first_broken_seq: int | None = None
    first_broken_id: UUID | None = None
    reason: str | None = None


RecordT = TypeVar("RecordT", bound=BaseModel)


class Page(BaseModel, Generic[RecordT]):
    """One page of a list, with the cursor of the next page (None at the end)."""

    model_config = ConfigDict(frozen=True)

    items: list[RecordT]
    next_cursor: str | None
