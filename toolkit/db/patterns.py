"""The public patterns repositories are made of: the toolkit's and an application's.

* Input: :func:`validate` (a pydantic model, errors as ``InvalidInput`` naming
  the field), :func:`validate_patch`, :func:`parse_id` / :func:`parse_ids`,
  :func:`check_limit`, :func:`check_count`, :func:`check_retention`,
  :func:`check_search_text`, :func:`jsonb`.
* Keyset paging: :func:`list_page` runs a ``:many`` binding whose SQL holds
  ``{keyset}`` and ``{order}`` (see :mod:`toolkit.db.registry`) and owns the
  cursor parameters ``after_value``/``after_id``; cursors are opaque tokens
  from :func:`encode_cursor`, checked by :func:`decode_cursor`.
* Writes: :func:`guarded_update` (optimistic, ``expected_version``, partial
  with :data:`UNSET`), :func:`transition` (a guarded status change),
  :func:`delete_row`, each with an optional :class:`Audit` event written in
  the same transaction (:func:`atomic`).

Every error is a toolkit error whose message shows the offending value
bounded (:func:`toolkit.errors.bounded_repr`).
"""

from __future__ import annotations

import base64
import binascii
import builtins
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from typing import Annotated, Any, Final, Generic, TypeVar
from uuid import UUID

from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb
from pydantic import BaseModel, TypeAdapter, ValidationError

from toolkit.db.bind import Exec, Many, One, Returning, Scalar
from toolkit.db.database import Connection
from toolkit.errors import IllegalTransition, InvalidInput, NotFound, StaleVersion, bounded_repr
from toolkit.records import AuditEvent, AuditEventCreate, Page

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
"""Default of every update argument: the field is not changed. ``None`` sets NULL."""


@dataclass(frozen=True)
class Audit:
    """Who made a change, for the audit event a repository write records with it."""

    actor_id: UUID | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


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


def check_limit(limit: Any) -> int:
    """A page size between 1 and MAX_LIMIT."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(
            f"limit must be an integer from 1 to {MAX_LIMIT}, got {bounded_repr(limit)}",
            field="limit",
            value=limit,
        )
    return limit


def check_count(value: Any, name: str, maximum: int) -> int:
    """A whole number from 1 to ``maximum`` (a batch size, a bound)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidInput(
            f"{name} must be an integer from 1 to {maximum}, got {bounded_repr(value)}",
            field=name,
            value=value,
        )
    return value


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


def list_page(
    query: Many[R],
    conn: Connection,
    filters: Mapping[str, Any],
    *,
    sort: str,
    descending: bool,
    limit: int,
    cursor: str | None,
) -> Page[R]:
    """One keyset page of ``query``: fetch one row more than asked to know if more follow."""
    column = query.query.sort_column(sort).column
    if not isinstance(descending, bool):
        raise InvalidInput(
            f"descending must be True or False, got {bounded_repr(descending)}",
            field="descending",
            value=descending,
        )
    limit = check_limit(limit)
    after_value: str | None = None
    after_id: UUID | None = None
    if cursor is not None:
        after_value, after_id = decode_cursor(cursor, column, descending)
    rows = query(
        conn,
        sort=column,
        descending=descending,
        limit=limit + 1,
        after_value=after_value,
        after_id=after_id,
        **filters,
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = encode_cursor(column, descending, getattr(last, column), last.id)  # type: ignore[attr-defined]
    # The rows are records already: no validation, and no generic class built per call.
    return Page.model_construct(items=rows, next_cursor=next_cursor)


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


@contextmanager
def atomic(conn: Connection) -> Iterator[Connection]:
    """Make a change and its audit event one unit.

    Inside the caller's transaction nothing more is needed; on a bare
    autocommit connection the two statements get a transaction of their own.
    """
    idle = conn.info.transaction_status == TransactionStatus.IDLE
    with conn.transaction() if idle else nullcontext():
        yield conn


def transition(
    conn: Connection,
    change: Returning[R],
    current_status: Scalar[str],
    *,
    entity: str,
    key: UUID,
    target: str,
    audit: Audit | None,
    params: Mapping[str, Any] | None = None,
) -> R:
    """Run a guarded status change; IllegalTransition or NotFound when it matches nothing."""
    with atomic(conn):
        changed = change(conn, id=key, **(params or {}))
        if changed is None:
            current = current_status(conn, id=key)
            if current is None:
                raise NotFound(entity, key)
            raise IllegalTransition(entity, key, current, target)
        record_audit(conn, audit, f"{entity}.{target}", key)
    return changed


def guarded_update(
    conn: Connection,
    update: Returning[R],
    current_version: Callable[[Connection, UUID], int | None],
    *,
    entity: str,
    key: UUID,
    expected_version: int,
    changes: Mapping[str, Any],
    columns: tuple[str, ...],
    audit: Audit | None,
) -> R:
    """Run an optimistic partial update of ``columns`` from already-validated ``changes``.

    Columns missing from ``changes`` keep their value. StaleVersion when the
    row moved on, NotFound when it is gone.
    """
    if (
        isinstance(expected_version, bool)
        or not isinstance(expected_version, int)
        or not 1 <= expected_version < 2**31
    ):
        raise InvalidInput(
            f"expected_version must be a positive integer, got {bounded_repr(expected_version)}",
            field="expected_version",
            value=expected_version,
        )
    params = patch_params({column: changes.get(column, UNSET) for column in columns})
    with atomic(conn):
        updated = update(conn, id=key, expected_version=expected_version, **params)
        if updated is None:
            current = current_version(conn, key)
            if current is None:
                raise NotFound(entity, key)
            raise StaleVersion(entity, key, expected_version, current)
        record_audit(conn, audit, f"{entity}.updated", key, {"fields": sorted(changes)})
    return updated


def delete_row(
    conn: Connection, delete: Exec, *, entity: str, key: UUID, audit: Audit | None
) -> None:
    """Delete one row by id (NotFound if there is none) with its audit event."""
    with atomic(conn):
        if delete(conn, id=key) == 0:
            raise NotFound(entity, key)
        record_audit(conn, audit, f"{entity}.deleted", key)


_record_event = One(
    "audit_events.record",
    AuditEvent,
    ("actor_id", "action", "entity", "entity_id", "details"),
    entity="audit event",
)


def insert_audit_event(conn: Connection, event: AuditEventCreate) -> AuditEvent:
    """Append one validated audit event (the trigger links it into the chain)."""
    return _record_event(
        conn,
        actor_id=event.actor_id,
        action=event.action,
        entity=event.entity,
        entity_id=event.entity_id,
        details=jsonb(event.details),
    )


def record_audit(
    conn: Connection,
    audit: Audit | None,
    action: str,
    entity_id: UUID | None,
    details: Mapping[str, Any] | None = None,
) -> AuditEvent | None:
    """Append the audit event of a change, when the caller asked for one.

    Called inside :func:`atomic` after the change, so a bad ``audit`` undoes it.
    """
    if audit is None:
        return None
    if not isinstance(audit, Audit) or not isinstance(audit.details, Mapping):
        raise InvalidInput(
            f"audit must be an Audit(actor_id, details mapping), got {bounded_repr(audit)}",
            field="audit",
            value=audit,
        )
    event = validate(
        AuditEventCreate,
        {
            "actor_id": audit.actor_id,
            "action": action,
            "entity": action.split(".", 1)[0],
            "entity_id": entity_id,
            "details": {**(details or {}), **audit.details},
        },
    )
    return insert_audit_event(conn, event)


F = TypeVar("F", bound=BaseModel)


class Entity(Generic[R, F]):
    """The plain operations of one entity, from its named queries, in one place.

    A repository module declares what differs (table, record, filter model,
    entity name, create model, jsonb columns, patchable columns, whether it
    has ``search`` and ``delete``) and exposes these methods as its functions
    (``get = _entity.get``); only real behaviour (leases, transitions,
    credentials, chains) is written by hand. The queries it binds are
    ``<table>.get``, ``.list`` (keyset, filtered by the filter model's
    fields), ``.count``, and as declared ``.create`` (parameters: the create
    model's fields), ``.search``, ``.update`` with ``.current_version``
    (``patchable``), and ``.delete``.
    """

    def __init__(
        self,
        table: str,
        record: type[R],
        filters: type[F],
        *,
        entity: str,
        create: type[BaseModel] | None = None,
        json_columns: tuple[str, ...] = (),
        audit_fields: tuple[str, ...] = (),
        search: bool = False,
        patchable: tuple[str, ...] = (),
        delete: bool = True,
    ) -> None:
        fields = tuple(filters.model_fields)
        self.entity = entity
        self.filters = filters
        self.create_model = create
        self.json_columns = json_columns
        self.audit_fields = audit_fields
        self.patchable = patchable
        self._get = One(f"{table}.get", record, ("id",), entity=entity)
        self._list = Many(f"{table}.list", record, (*fields, "limit"))
        self._count = Scalar(f"{table}.count", int, fields)
        self._create = (
            One(f"{table}.create", record, tuple(create.model_fields), entity=entity)
            if create is not None
            else None
        )
        self._delete = Exec(f"{table}.delete", ("id",)) if delete else None
        self._search = Many(f"{table}.search", record, ("text", "limit")) if search else None
        self._update: Returning[R] | None = None
        if patchable:
            flags = tuple(f"set_{column}" for column in patchable)
            self._update = Returning(
                f"{table}.update", record, ("id", "expected_version", *patchable, *flags)
            )
            self._current_version = Scalar(f"{table}.current_version", int, ("id",))

    def _stored(self, values: dict[str, Any]) -> dict[str, Any]:
        for column in self.json_columns:
            if column in values:
                values[column] = jsonb(values[column])
        return values

    def create(
        self, conn: Connection, data: BaseModel | Mapping[str, Any], *, audit: Audit | None = None
    ) -> R:
        """Validate ``data`` with the create model and insert it, with its audit event;
        InvalidReference when a foreign key points nowhere, Conflict on a unique rule."""
        if self.create_model is None or self._create is None:
            raise NotImplementedError(f"{self.entity} is not created this way")
        given = validate(self.create_model, data)
        values = self._stored({name: getattr(given, name) for name in type(given).model_fields})
        with atomic(conn):
            created = self._create(conn, **values)
            details = {name: getattr(created, name) for name in self.audit_fields}
            record_audit(conn, audit, f"{self.entity}.created", created.id, details)  # type: ignore[attr-defined]
        return created

    def get(self, conn: Connection, entity_id: UUID | str) -> R:
        """The row with this id, as its record; NotFound otherwise."""
        key = parse_id(entity_id)
        return self._get(conn, key, id=key)

    def list(
        self,
        conn: Connection,
        filters: F | Mapping[str, Any] | None = None,
        *,
        sort: str = "created_at",
        descending: bool = False,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> Page[R]:
        """A keyset page, filtered by the filter model's fields; sort from the query's
        ``-- sort:`` whitelist; pass the page's ``next_cursor`` for the next one."""
        where = validate(self.filters, filters)
        return list_page(
            self._list,
            conn,
            where.model_dump(),
            sort=sort,
            descending=descending,
            limit=limit,
            cursor=cursor,
        )

    def count(self, conn: Connection, filters: F | Mapping[str, Any] | None = None) -> int:
        """How many rows match the filters."""
        return self._count(conn, **validate(self.filters, filters).model_dump()) or 0

    def search(
        self, conn: Connection, text: str, *, limit: int = DEFAULT_LIMIT
    ) -> builtins.list[R]:
        """Rows whose name or title contains ``text``, case-insensitively; ``%`` and ``_``
        are literal."""
        if self._search is None:
            raise NotImplementedError(f"{self.entity} has no search")
        return self._search(conn, text=check_search_text(text), limit=check_limit(limit))

    def update(
        self,
        conn: Connection,
        entity_id: UUID | str,
        *,
        expected_version: int,
        changes: Mapping[str, Any],
        audit: Audit | None = None,
    ) -> R:
        """Change the given fields (UNSET ones keep their value; None sets NULL) at
        ``expected_version``; StaleVersion when the row moved on, NotFound when gone."""
        if self.create_model is None or self._update is None:
            raise NotImplementedError(f"{self.entity} has no update")
        key = parse_id(entity_id)
        values = self._stored(validate_patch(self.create_model, changed_fields(changes)))
        return guarded_update(
            conn,
            self._update,
            lambda c, k: self._current_version(c, id=k),
            entity=self.entity,
            key=key,
            expected_version=expected_version,
            changes=values,
            columns=self.patchable,
            audit=audit,
        )

    def delete(
        self, conn: Connection, entity_id: UUID | str, *, audit: Audit | None = None
    ) -> None:
        """Delete the row (and what cascades from it); NotFound if there is none."""
        if self._delete is None:
            raise NotImplementedError(f"{self.entity} rows are never deleted")
        delete_row(conn, self._delete, entity=self.entity, key=parse_id(entity_id), audit=audit)
