"""Message models: one pydantic model per queue, each with a schema version.

A message travels as a JSON body (``content_type=application/json``) with
``message_id``, ``timestamp``, ``type`` (``<queue>.v<version>``) and
persistent delivery mode set by the publisher. The body carries
``schema_version``; a consumer decodes it with :func:`decode`, which
refuses bodies that are not JSON, not an object, of an unknown version, or
that fail the model.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from toolkit.records import JsonObject, Text

CONTENT_TYPE = "application/json"

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
