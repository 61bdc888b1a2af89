"""Message models: one pydantic model per queue, each with a schema version.

A message travels as a JSON body (``content_type=application/json``) with
``message_id``, ``timestamp``, ``type`` (``<queue>.v<version>``) and
persistent delivery mode set by the publisher. The body carries
``schema_version``; a consumer decodes it with :func:`decode`, which
refuses bodies that are not JSON, not an object, of an unknown version, or
that fail the model.

Every message names its tenant in the :data:`TENANT_HEADER` header, set by
the toolkit (:func:`stamped`): the relay writes the outbox row's
``tenant_id``, which row-level security gave the row, and a direct
publisher the ``tenant`` it was passed. A caller's header of that name is
refused (:func:`refuse_tenant_header`), and the body never says it. A
consumer reads it with :func:`tenant_of`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from toolkit.errors import InvalidInput
from toolkit.records import JsonObject, Text
from toolkit.tenants import tenant_id

CONTENT_TYPE = "application/json"

TENANT_HEADER = "x-tenant-id"
"""The header naming a message's tenant (the text of a UUID); only the toolkit sets it."""

Action = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")]
Entity = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class Message(BaseModel):
    """Base of every message model; ``queue`` names the logical queue it goes to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    queue: ClassVar[str]
    version: ClassVar[int] = 1

    @classmethod
    def type_name(cls) -> str:
        """The AMQP ``type`` property: ``<queue>.v<version>``."""
        return f"{cls.queue}.v{cls.version}"

    def body(self) -> bytes:
        """The JSON body, compact and UTF-8."""
        return self.model_dump_json().encode()


class WorkflowExecute(Message):
    """Run one execution of a workflow (``workflow.execute``)."""

    queue: ClassVar[str] = "workflow.execute"
    schema_version: Literal[1] = 1
    execution_id: UUID
    workflow_id: UUID
    attempt: int = Field(default=0, ge=0)
    """The execution's attempt count when enqueued (0 for a new one)."""


class NotificationSend(Message):
    """Tell someone something happened (``notification.send``)."""

    queue: ClassVar[str] = "notification.send"
    schema_version: Literal[1] = 1
    kind: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    subject: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    text: Annotated[Text, StringConstraints(max_length=10_000)] = ""
    recipient_id: UUID | None = None
    execution_id: UUID | None = None
    data: JsonObject = Field(default_factory=dict)


class AuditLog(Message):
    """An audit event for the audit sink (``audit.log``)."""

    queue: ClassVar[str] = "audit.log"
    schema_version: Literal[1] = 1
    action: Action
    entity: Entity
    entity_id: UUID | None = None
    actor_id: UUID | None = None
    event_id: UUID | None = None
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    details: JsonObject = Field(default_factory=dict)


MODELS: dict[str, type[Message]] = {
    model.queue: model for model in (WorkflowExecute, NotificationSend, AuditLog)
}
"""The model of each logical queue."""


class InvalidMessage(Exception):
    """A body that cannot become its queue's model; ``reason`` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode(queue: str, body: bytes, models: dict[str, type[Message]] | None = None) -> Message:
    """The message model for ``body`` arriving on logical queue ``queue``.

    Raises :class:`InvalidMessage` with reason ``invalid-json`` or
    ``invalid-message`` (model failure, unknown queue or schema version).
    """
    model = (models or MODELS).get(queue)
    if model is None:
        raise InvalidMessage("invalid-message", f"no message model for queue {queue!r}")
    try:
        data: Any = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidMessage("invalid-json", f"body is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidMessage("invalid-json", f"body is JSON {type(data).__name__}, not an object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or model.__name__
        raise InvalidMessage(
            "invalid-message", f"{model.__name__}.{where}: {first['msg']}"
        ) from None


def stamped(headers: Mapping[str, Any], tenant: UUID) -> dict[str, Any]:
    """``headers`` with :data:`TENANT_HEADER` set to ``tenant``, whatever they said of it."""
    return {**headers, TENANT_HEADER: str(tenant)}


def refuse_tenant_header(headers: Mapping[str, Any]) -> None:
    """InvalidInput if a caller's ``headers`` name the tenant: the toolkit sets it."""
    if TENANT_HEADER in headers:
        raise InvalidInput(
            f"header {TENANT_HEADER!r} is set by the toolkit from the tenant the message "
            "belongs to (the outbox row's, or a publisher's tenant=); leave it out",
            field="headers",
        )


def tenant_of(headers: Mapping[str, Any]) -> UUID:
    """The tenant a delivered message belongs to, from its :data:`TENANT_HEADER`.

    Raises :class:`InvalidMessage` with reason ``missing-tenant`` (no header)
    or ``invalid-tenant`` (not the text of a UUID); the value is not quoted.
    """
    if TENANT_HEADER not in headers:
        raise InvalidMessage(
            "missing-tenant", f"no {TENANT_HEADER} header: every message names its tenant"
        )
    try:
        return tenant_id(headers[TENANT_HEADER])
    except InvalidInput:
        raise InvalidMessage(
            "invalid-tenant", f"the {TENANT_HEADER} header is not the text of a UUID"
        ) from None
