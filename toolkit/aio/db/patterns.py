"""The public patterns repositories are made of: the toolkit's and an application's.

* Input checks (no I/O, from :mod:`toolkit.db.inputs`, re-exported here):
  :func:`validate`, :func:`validate_patch`, :func:`parse_id` /
  :func:`parse_ids`, :func:`check_int`, :func:`check_limit`, :func:`check_count`,
  :func:`check_retention`, :func:`check_search_text`, :func:`jsonb`.
* Keyset paging: :func:`list_page` runs a ``:many`` binding whose SQL holds
  ``{keyset}`` and ``{order}`` (see :mod:`toolkit.db.registry`) and owns the
  cursor parameters ``after_value``/``after_id``; cursors are opaque tokens
  from :func:`encode_cursor`, checked by :func:`decode_cursor`.
* Writes: :func:`guarded_update` (optimistic, ``expected_version``, partial
  with :data:`UNSET`), :func:`transition` (a guarded status change),
  :func:`delete_row`, each with an optional audit event written in the same
  transaction (:func:`atomic`): ``audit=`` takes an :class:`AuditWrite`,
  which names the statement; this layer knows no audit log.
* Bulk writes: :func:`insert_rows` runs an ``INSERT ... SELECT FROM unnest(...)``
  binding over many rows, arrays in binary, statements pipelined (COPY is
  refused under row level security); :func:`insert_columns` does the same
  from a function building each statement's column arrays from the inputs.
* :class:`Entity`: create/get/list/count/search/update/delete of one table.

Every error is a toolkit error whose message shows the offending value
bounded (:func:`toolkit.errors.bounded_repr`).
"""

from __future__ import annotations

import builtins
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, nullcontext
from typing import Any, Generic, TypeVar
from uuid import UUID

from psycopg.pq import TransactionStatus
from pydantic import BaseModel

from toolkit.aio.db.database import AsyncConnection, transaction_on
from toolkit.aio.db.drivers import run, run_many
from toolkit.db.bind import Exec, Many, One, Returning, Scalar
from toolkit.db.inputs import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_PRUNE_BATCH,
    MAX_SEARCH_TEXT,
    UNSET,
    AuditWrite,
    GuardedUpdate,
    Unset,
    changed_fields,
    check_count,
    check_int,
    check_limit,
    check_retention,
    check_search_text,
    decode_cursor,
    encode_cursor,
    jsonb,
    parse_id,
    parse_ids,
    patch_params,
    validate,
    validate_patch,
)
from toolkit.errors import IllegalTransition, InvalidInput, NotFound, StaleVersion, bounded_repr
from toolkit.records import Page

__all__ = [
    "DEFAULT_LIMIT",
    "INSERT_ROWS_PER_STATEMENT",
    "MAX_LIMIT",
    "MAX_PRUNE_BATCH",
    "MAX_SEARCH_TEXT",
    "UNSET",
    "AuditWrite",
    "Entity",
    "GuardedUpdate",
    "Unset",
    "atomic",
    "changed_fields",
    "check_count",
    "check_int",
    "check_limit",
    "check_retention",
    "check_search_text",
    "decode_cursor",
    "delete_row",
    "encode_cursor",
    "guarded_update",
    "insert_columns",
    "insert_rows",
    "jsonb",
    "list_page",
    "parse_id",
    "parse_ids",
    "patch_params",
    "record_audit",
    "transition",
    "validate",
    "validate_patch",
]

R = TypeVar("R", bound=BaseModel)


async def list_page(
    query: Many[R],
    conn: AsyncConnection,
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
    rows = await run(
        conn,
        query,
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


@asynccontextmanager
async def atomic(conn: AsyncConnection) -> AsyncIterator[AsyncConnection]:
    """Make a change and its audit event one unit.

    Inside the caller's transaction nothing more is needed; on a bare
    autocommit connection the two statements get a transaction of their own,
    through the one door (:func:`~toolkit.aio.db.database.transaction_on`): a
    lost COMMIT is looked up like one of ``Database.transaction()``.
    """
    # A connection not in autocommit is inside its owner's (implicit) transaction.
    bare = conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE
    async with transaction_on(conn) if bare else nullcontext():
        yield conn


INSERT_ROWS_PER_STATEMENT = 10_000
"""Rows :func:`insert_rows` sends in one statement: client and server each hold
a statement's arrays whole, so a larger input goes in several statements."""


async def insert_rows(conn: AsyncConnection, query: Exec, rows: Sequence[Sequence[Any]]) -> int:
    """Write ``rows`` with ``query``, an ``INSERT ... SELECT FROM unnest(...)``; how many it wrote.

    ``query`` takes one array per column, its parameters in the rows' column
    order; the arrays go in binary format (psycopg's text format quotes and
    escapes every element). Not COPY, which row level security refuses for
    a role the policies bind. Up to :data:`INSERT_ROWS_PER_STATEMENT` rows
    go in one statement; more go in several, as :func:`insert_columns` sends them.
    """

    def arrays(start: int, stop: int) -> dict[str, builtins.list[Any]]:
        columns = map(builtins.list, zip(*rows[start:stop], strict=True))
        return dict(zip(query.params, columns, strict=True))

    return await insert_columns(conn, query, len(rows), arrays)


async def insert_columns(
    conn: AsyncConnection,
    query: Exec,
    count: int,
    arrays: Callable[[int, int], Mapping[str, Sequence[Any]]],
) -> int:
    """Write ``count`` rows with ``query`` (as :func:`insert_rows`); how many it wrote.

    ``arrays(start, stop)`` gives the parameters of the statement writing rows
    ``start`` to ``stop``: one array per column, by parameter name. It is
    called as the pipeline asks for the next statement (:func:`run_many`:
    the client builds it while the server inserts the last), so the server
    starts on the first statement before the later ones are built, and no
    object per row is made (building the column lists straight from the
    inputs spares the tuples and the garbage collections they draw). Inside
    the caller's transaction or (on a bare connection, for more than one
    statement) one of their own (:func:`atomic`), so a failure part-way
    writes nothing either way: check every input before calling it.
    """
    if count <= 0:
        return 0
    size = INSERT_ROWS_PER_STATEMENT
    statements = (arrays(start, min(start + size, count)) for start in range(0, count, size))
    async with atomic(conn) if count > size else nullcontext():
        return await run_many(conn, query, statements)


async def transition(
    conn: AsyncConnection,
    change: Returning[R],
    current_status: Scalar[str],
    *,
    entity: str,
    key: UUID,
    target: str,
    audit: AuditWrite | None,
    params: Mapping[str, Any] | None = None,
) -> R:
    """Run a guarded status change; IllegalTransition or NotFound when it matches nothing."""
    async with atomic(conn):
        changed = await run(conn, change, id=key, **(params or {}))
        if changed is None:
            current = await run(conn, current_status, id=key)
            if current is None:
                raise NotFound(entity, key)
            raise IllegalTransition(entity, key, current, target)
        await record_audit(conn, audit, f"{entity}.{target}", key)
    return changed


async def guarded_update(
    conn: AsyncConnection,
    update: Returning[R],
    current_version: Callable[[AsyncConnection, UUID], Awaitable[int | None]],
    *,
    entity: str,
    key: UUID,
    expected_version: int,
    changes: Mapping[str, Any],
    columns: tuple[str, ...],
    audit: AuditWrite | None,
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
    async with atomic(conn):
        updated = await run(conn, update, id=key, expected_version=expected_version, **params)
        if updated is None:
            current = await current_version(conn, key)
            if current is None:
                raise NotFound(entity, key)
            raise StaleVersion(entity, key, expected_version, current)
        await record_audit(conn, audit, f"{entity}.updated", key, {"fields": sorted(changes)})
    return updated


async def delete_row(
    conn: AsyncConnection, delete: Exec, *, entity: str, key: UUID, audit: AuditWrite | None
) -> None:
    """Delete one row by id (NotFound if there is none) with its audit event."""
    async with atomic(conn):
        if await run(conn, delete, id=key) == 0:
            raise NotFound(entity, key)
        await record_audit(conn, audit, f"{entity}.deleted", key)


async def record_audit(
    conn: AsyncConnection,
    audit: AuditWrite | None,
    action: str,
    entity_id: UUID | None,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Append the audit event of a change, when the caller asked for one.

    Called inside :func:`atomic` after the change, so a bad ``audit`` undoes
    it; ``audit`` names the statement (:class:`AuditWrite`), run on ``conn``.
    """
    if audit is None:
        return
    if not isinstance(audit, AuditWrite):
        raise InvalidInput(
            "audit must be an AuditWrite such as toolkit.repositories.Audit(actor_id), "
            f"got {bounded_repr(audit)}",
            field="audit",
            value=audit,
        )
    statement = audit.event(action, entity_id, details or {})
    await run(conn, statement.binding, **statement.values)


F = TypeVar("F", bound=BaseModel)

_WORD_START = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
"""Where a record's class name starts a word: ``AuditEvent`` is the entity "audit event"."""


class Entity(Generic[R, F]):
    """The plain operations of one entity, from its named queries, in one place.

    A repository module declares what differs (table, record, filter model,
    create model, update arguments, whether it has ``search`` and ``delete``)
    and exposes these methods as its functions (``get = _entity.get``); only
    real behaviour (leases, transitions, credentials, chains) is written by
    hand. The entity's name in errors and audit actions is its record's
    (``AuditEvent``: "audit event") unless ``entity`` says otherwise; a dict
    or model value is written as jsonb. The queries it binds are
    ``<table>.get``, ``.list`` (keyset, filtered by the filter model's
    fields), ``.count``, and as declared ``.create`` (parameters: the create
    model's fields), ``.search``, ``.update`` with ``.current_version``, and
    ``.delete``.

    ``update`` is the entity's update arguments, a :class:`GuardedUpdate`
    TypedDict: its own keys are the patchable columns, and a module types its
    ``update`` function with it (``**arguments: Unpack[AgentUpdate]``), since
    a TypedDict cannot be a type parameter of this class.
    """

    def __init__(
        self,
        table: str,
        record: type[R],
        filters: type[F],
        create: type[BaseModel] | None = None,
        update: type[Mapping[str, Any]] | None = None,
        *,
        audit_fields: tuple[str, ...] = (),
        search: bool = False,
        delete: bool = True,
        entity: str | None = None,
    ) -> None:
        fields = tuple(filters.model_fields)
        entity = entity or _WORD_START.sub(" ", record.__name__).lower()
        self.entity = entity
        self.filters = filters
        self.create_model = create
        self.audit_fields = audit_fields
        guard = GuardedUpdate.__annotations__
        self.patchable = tuple(
            name for name in (update.__annotations__ if update else ()) if name not in guard
        )
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
        if self.patchable:
            flags = tuple(f"set_{column}" for column in self.patchable)
            self._update = Returning(
                f"{table}.update", record, ("id", "expected_version", *self.patchable, *flags)
            )
            self._current_version = Scalar(f"{table}.current_version", int, ("id",))

    @staticmethod
    def _stored(values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` as parameters: a dict or a model (a validated JSON field) as jsonb."""
        return {
            name: jsonb(value) if isinstance(value, dict | BaseModel) else value
            for name, value in values.items()
        }

    async def create(
        self,
        conn: AsyncConnection,
        data: BaseModel | Mapping[str, Any],
        *,
        audit: AuditWrite | None = None,
    ) -> R:
        """Validate ``data`` with the create model and insert it, with its audit event;
        InvalidReference when a foreign key points nowhere, Conflict on a unique rule."""
        if self.create_model is None or self._create is None:
            raise NotImplementedError(f"{self.entity} is not created this way")
        given = validate(self.create_model, data)
        values = self._stored({name: getattr(given, name) for name in type(given).model_fields})
        async with atomic(conn):
            created = await run(conn, self._create, **values)
            details = {name: getattr(created, name) for name in self.audit_fields}
            await record_audit(conn, audit, f"{self.entity}.created", created.id, details)  # type: ignore[attr-defined]
        return created

    async def get(self, conn: AsyncConnection, entity_id: UUID | str) -> R:
        """The row with this id, as its record; NotFound otherwise."""
        key = parse_id(entity_id)
        return await run(conn, self._get, key, id=key)

    async def list(
        self,
        conn: AsyncConnection,
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
        return await list_page(
            self._list,
            conn,
            where.model_dump(),
            sort=sort,
            descending=descending,
            limit=limit,
            cursor=cursor,
        )

    async def count(
        self, conn: AsyncConnection, filters: F | Mapping[str, Any] | None = None
    ) -> int:
        """How many rows match the filters."""
        return await run(conn, self._count, **validate(self.filters, filters).model_dump()) or 0

    async def search(
        self, conn: AsyncConnection, text: str, *, limit: int = DEFAULT_LIMIT
    ) -> builtins.list[R]:
        """Rows whose name or title contains ``text``, case-insensitively; ``%`` and ``_``
        are literal."""
        if self._search is None:
            raise NotImplementedError(f"{self.entity} has no search")
        return await run(conn, self._search, text=check_search_text(text), limit=check_limit(limit))

    async def update(
        self,
        conn: AsyncConnection,
        entity_id: UUID | str,
        *,
        expected_version: int,
        audit: AuditWrite | None = None,
        **changes: Any,
    ) -> R:
        """Change the given fields (UNSET ones keep their value; None sets NULL) at
        ``expected_version``; StaleVersion when the row moved on, NotFound when gone,
        InvalidInput for a field that is not patchable."""
        if self.create_model is None or self._update is None:
            raise NotImplementedError(f"{self.entity} has no update")
        unknown = sorted(set(changes).difference(self.patchable))
        if unknown:
            raise InvalidInput(
                f"{self.entity} has no field {bounded_repr(unknown[0], 60)} to update; "
                f"it updates {', '.join(self.patchable)}",
                field=unknown[0][:64],
            )
        key = parse_id(entity_id)
        values = self._stored(validate_patch(self.create_model, changed_fields(changes)))
        return await guarded_update(
            conn,
            self._update,
            lambda c, k: run(c, self._current_version, id=k),
            entity=self.entity,
            key=key,
            expected_version=expected_version,
            changes=values,
            columns=self.patchable,
            audit=audit,
        )

    async def delete(
        self, conn: AsyncConnection, entity_id: UUID | str, *, audit: AuditWrite | None = None
    ) -> None:
        """Delete the row (and what cascades from it); NotFound if there is none."""
        if self._delete is None:
            raise NotImplementedError(f"{self.entity} rows are never deleted")
        await delete_row(
            conn, self._delete, entity=self.entity, key=parse_id(entity_id), audit=audit
        )
