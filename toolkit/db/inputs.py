"""Checks and conversions of what callers pass, shared by the sync and async patterns.

No I/O: :func:`validate` (a pydantic model, errors as ``InvalidInput``
naming the field), :func:`validate_patch`, :func:`parse_id` /
:func:`parse_ids`, :func:`check_int`, :func:`check_limit`, :func:`check_count`,
:func:`check_retention`, :func:`check_search_text`, :func:`jsonb`, the
keyset cursor tokens (:func:`encode_cursor`, :func:`decode_cursor`) and
partial updates (:data:`UNSET`, :func:`patch_params`, :class:`GuardedUpdate`),
and :class:`AuditWrite`, what ``audit=`` takes. Re-exported by
:mod:`toolkit.db.patterns` and :mod:`toolkit.aio.db.patterns`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from functools import cache
from typing import (
    Annotated,
    Any,
    Final,
    NamedTuple,
    NotRequired,
    Protocol,
    Required,
    TypedDict,
    TypeVar,
    runtime_checkable,
)
from uuid import UUID

from psycopg.types.json import Jsonb
from pydantic import BaseModel, TypeAdapter, ValidationError

from toolkit.db.bind import Exec, One
from toolkit.errors import InvalidInput, bounded_repr

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 1000
MAX_SEARCH_TEXT: Final = 200
MAX_PRUNE_BATCH: Final = 100_000


class Unset:
    """The type of :data:`UNSET`: "leave this field as it is" in an update."""

    _instance: Unset | None = None

    def __new__(cls) -> Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Final = Unset()
"""An update argument that leaves its field as it is, like leaving it out. ``None`` sets NULL."""


class AuditStatement(NamedTuple):
    """The statement that appends a change's audit event (a ``:one`` that returns
    it, or an ``:exec``), and its values."""

    binding: One[Any] | Exec
    values: Mapping[str, Any]


@runtime_checkable
class AuditWrite(Protocol):
    """What a write's ``audit=`` takes: the audit event it records with its change.

    This layer knows no audit log: :meth:`event` names the statement that
    appends the event, and the write runs it after the change, in the same
    transaction (:func:`toolkit.aio.db.patterns.atomic`).
    :class:`toolkit.repositories.Audit` is the toolkit's.
    """

    def event(
        self, action: str, entity_id: UUID | None, details: Mapping[str, Any]
    ) -> AuditStatement:
        """The statement recording ``action`` (``<entity>.<verb>``) on ``entity_id``."""
        ...


class GuardedUpdate(TypedDict):
    """The keywords of every optimistic ``update`` besides the fields it changes.

    An entity's update arguments extend it with those fields (``total=False``);
    :class:`~toolkit.aio.db.patterns.Entity` takes the added keys as its
    patchable columns.
    """

    expected_version: Required[int]
    audit: NotRequired[AuditWrite | None]


def _location(loc: tuple[int | str, ...], model: type[BaseModel]) -> str:
    """Where a validation error is, e.g. ``config.tools.0``; odd or long keys shown bounded."""
    parts = [
        str(part)
        if isinstance(part, int) or (part.isidentifier() and len(part) <= 64)
        else bounded_repr(part, 40)
        for part in loc
    ]
    return ".".join(parts) or model.__name__


def validate(model: type[M], data: Mapping[str, Any] | M | None) -> M:
    """``data`` as ``model``; a validation failure becomes InvalidInput naming the field."""
    if isinstance(data, model):
        return data
    try:
        return model.model_validate(data or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _location(first["loc"], model)
        raise InvalidInput(
            f"{model.__name__}: {where}: {first['msg']} (got {bounded_repr(first.get('input'))})",
            field=where,
            value=first.get("input"),
        ) from None


@cache
def _field_adapter(model: type[BaseModel], name: str) -> TypeAdapter[Any]:
    info = model.model_fields[name]
    annotation: Any = info.annotation
    if info.metadata:
        annotation = Annotated[annotation, *info.metadata]
    return TypeAdapter(annotation)


def validate_patch(model: type[BaseModel], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Validate each given field of an update like ``model`` (its create input) would."""
    checked = {}
    for name, value in changes.items():
        try:
            checked[name] = _field_adapter(model, name).validate_python(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join([name, *(str(part) for part in first["loc"])])
            shown = first.get("input")  # the part that failed, never the whole value
            raise InvalidInput(
                f"{where}: {first['msg']} (got {bounded_repr(shown)})", field=name, value=shown
            ) from None
    return checked


def parse_id(value: Any, name: str = "id") -> UUID:
    """``value`` as a UUID; anything else is InvalidInput."""
    if isinstance(value, UUID):
        return value
    if isinstance(value, str) and len(value) <= 64:
        try:
            return UUID(value)
        except ValueError:
            pass
    raise InvalidInput(f"{name} must be a UUID, got {bounded_repr(value)}", field=name, value=value)


def check_int(value: Any, name: str, minimum: int, maximum: int) -> int:
    """A whole number from ``minimum`` to ``maximum``; anything else is InvalidInput.

    The type is checked before any comparison: a bool is not a number here,
    and a float or Decimal (NaN and sNaN among them, whose comparisons raise)
    is refused without being compared or converted.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InvalidInput(
            f"{name} must be an integer from {minimum} to {maximum}, got {bounded_repr(value)}",
            field=name,
            value=value,
        )
    return value


def check_limit(limit: Any) -> int:
    """A page size between 1 and MAX_LIMIT."""
    return check_int(limit, "limit", 1, MAX_LIMIT)


def check_count(value: Any, name: str, maximum: int) -> int:
    """A whole number from 1 to ``maximum`` (a batch size, a bound)."""
    return check_int(value, name, 1, maximum)


def check_retention(value: Any, name: str = "retention") -> float:
    """A non-negative ``timedelta`` of at most ten years, as seconds."""
    if not isinstance(value, timedelta) or not timedelta(0) <= value <= timedelta(days=3660):
        raise InvalidInput(
            f"{name} must be a timedelta from 0 to 10 years, got {bounded_repr(value)}",
            field=name,
            value=value,
        )
    return value.total_seconds()


def parse_ids(values: Any, name: str = "ids", maximum: int = MAX_LIMIT) -> list[UUID]:
    """A list of at most ``maximum`` UUIDs from a list or tuple of ids."""
    if not isinstance(values, (list, tuple)) or len(values) > maximum:
        raise InvalidInput(
            f"{name} must be a list of at most {maximum} ids, got {bounded_repr(values)}",
            field=name,
            value=values,
        )
    return [parse_id(value, name) for value in values]


def check_search_text(text: Any) -> str:
    """Search text: 1 to MAX_SEARCH_TEXT characters of storable text."""
    if not isinstance(text, str) or not 1 <= len(text) <= MAX_SEARCH_TEXT:
        raise InvalidInput(
            f"search text must be 1 to {MAX_SEARCH_TEXT} characters, got {bounded_repr(text)}",
            field="text",
            value=text,
        )
    if "\x00" in text:
        raise InvalidInput("search text must not contain NUL", field="text", value=text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput("search text must be valid Unicode", field="text", value=text) from None
    return text


def jsonb(value: Any) -> Jsonb | None:
    """A parameter for a jsonb column: models dumped as JSON, None kept as NULL."""
    if value is None:
        return None
    if isinstance(value, BaseModel):
        return Jsonb(value.model_dump(mode="json"))
    return Jsonb(value)


# Keyset cursors: an opaque, URL-safe token holding the sort, direction,
# and the last row's sort value and id.


def encode_cursor(sort: str, descending: bool, value: Any, row_id: UUID) -> str:
    """The token that resumes a list after the row with ``value`` and ``row_id``."""
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    payload = json.dumps([sort, descending, text, str(row_id)], separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str, descending: bool) -> tuple[str, UUID]:
    """The (sort value, id) of ``cursor``; InvalidInput if malformed or for another sort."""
    bad = InvalidInput(f"malformed cursor {bounded_repr(cursor)}", field="cursor", value=cursor)
    if not isinstance(cursor, str) or len(cursor) > 2048:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
    except (binascii.Error, ValueError):
        raise bad from None
    if not (
        isinstance(payload, list)
        and len(payload) == 4
        and isinstance(payload[0], str)
        and isinstance(payload[1], bool)
        and isinstance(payload[2], str)
        and isinstance(payload[3], str)
    ):
        raise bad
    if payload[0] != sort or payload[1] != descending:
        raise InvalidInput(
            f"cursor belongs to sort {bounded_repr(payload[0])} (descending={payload[1]}), "
            f"not {sort!r} (descending={descending})",
            field="cursor",
            value=cursor,
        )
    if "\x00" in payload[2]:
        raise bad
    try:
        return payload[2], UUID(payload[3])
    except ValueError:
        raise bad from None


def patch_params(changes: Mapping[str, Any]) -> dict[str, Any]:
    """``name``/``set_name`` pairs for an update: set_name is False for UNSET fields."""
    params: dict[str, Any] = {}
    for name, value in changes.items():
        given = value is not UNSET
        params[f"set_{name}"] = given
        params[name] = value if given else None
    return params


def changed_fields(changes: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``changes`` that are not UNSET."""
    return {name: value for name, value in changes.items() if value is not UNSET}
