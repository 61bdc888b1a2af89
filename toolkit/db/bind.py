"""Bindings: a named query tied to the record it returns and the parameters it takes.

Repository modules bind their queries at import time::

    _get = bind.one("agents.get", Agent, params=("id",))
    agent = _get(conn, id=agent_id)

Binding checks that the query exists, has the expected result kind and uses
exactly the declared parameters, so a mismatch fails when the module is
imported, naming the SQL file and line. Every binding is kept in
:data:`BINDINGS` for ``toolkit verify``, which checks the query's result
columns against the record's fields on the real schema. Because verify
proves names, order and types agree, rows become records without
re-validation (see :func:`record_factory`).
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Generic, TypeVar

import psycopg
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg.rows import RowMaker
from pydantic import BaseModel, TypeAdapter

from toolkit.config import default_settings
from toolkit.db.database import Connection, raise_translated
from toolkit.db.registry import (
    CURSOR_PARAMS,
    Kind,
    NamedQuery,
    QueryRegistry,
    check_params,
)
from toolkit.errors import NotFound, QueryDefinitionError

R = TypeVar("R", bound=BaseModel)
T = TypeVar("T")


@lru_cache(maxsize=1)
def registry() -> QueryRegistry:
    """Every named query, loaded once: the toolkit's ``sql/``, then ``TOOLKIT_SQL_PATH``'s."""
    return QueryRegistry.with_application(default_settings().sql_folders)


class Binding:
    """A named query with the parameters its caller passes."""

    kind: Kind

    def __init__(self, name: str, params: Sequence[str], record: type[BaseModel] | None) -> None:
        self.query: NamedQuery = registry()[name]
        if self.query.kind is not self.kind:
            raise QueryDefinitionError(
                f"{self.query.location}: {name} is :{self.query.kind.value}, "
                f"but is bound as :{self.kind.value}"
            )
        if self.query.sortable:
            params = (*params, *CURSOR_PARAMS)
        check_params(self.query, params)
        self.name = name
        self.params = tuple(params)
        self.record = record
        # Rendered once per (sort, direction): composing costs more than the round trip.
        self._rendered: dict[tuple[str | None, bool], str] = {}
        BINDINGS.append(self)

    def statement_text(self, sort: str | None = None, descending: bool = False) -> str:
        """The statement as sent, for a sort column from the whitelist (cached)."""
        key = (sort, descending)
        text = self._rendered.get(key)
        if text is None:
            text = self.query.statement(sort, descending).as_string(None)
            self._rendered[key] = text
        return text

    def _execute(
        self,
        conn: Connection,
        values: Mapping[str, Any],
        row_factory: Any = None,
        sort: str | None = None,
        descending: bool = False,
    ) -> psycopg.Cursor[Any]:
        statement = self.statement_text(sort, descending)
        try:
            if row_factory is None:
                cursor = conn.cursor()
            else:
                cursor = conn.cursor(row_factory=row_factory)
                # The record factory parses json itself, straight into the field's type.
                cursor.adapters.register_loader("jsonb", _JsonBytes)
                cursor.adapters.register_loader("json", _JsonBytes)
            # Queries with optional filters are planned with their actual values
            # (prepare=False): a generic plan cannot drop the unused filters.
            return cursor.execute(statement, values, prepare=False if self.query.sortable else None)
        except psycopg.Error as exc:
            raise_translated(exc, self.name)


class _JsonBytes(Loader):
    """json/jsonb as the bytes the server sent, for the record factory to parse."""

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


BINDINGS: list[Binding] = []
"""Every binding made so far, in import order (for ``toolkit verify``)."""


def _needs_validation(annotation: Any) -> bool:
    """Whether values of this annotation must be converted from what psycopg returns."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, tuple, typing.Annotated):
        return any(_needs_validation(arg) for arg in typing.get_args(annotation))
    return False


def _converters(
    record: type[BaseModel], cursor: psycopg.Cursor[Any]
) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
    """How each column that needs it becomes its field's value.

    json/jsonb arrive as bytes on the toolkit's cursors (see ``_JsonBytes``):
    typed fields are validated from JSON in one step, plain ones parsed.
    """
    names = tuple(record.model_fields)
    description = cursor.description or ()
    columns = tuple(column.name for column in description)
    if columns != names:
        raise QueryDefinitionError(
            f"columns {columns} do not match {record.__name__} fields {names}"
        )
    registered = cursor.adapters.types
    json_oids = {t.oid for name in ("json", "jsonb") if (t := registered.get(name)) is not None}
    found: list[tuple[str, Callable[[Any], Any]]] = []
    for column, (name, info) in zip(description, record.model_fields.items(), strict=True):
        annotation: Any = info.annotation
        typed = _needs_validation(annotation)
        if column.type_code in json_oids:
            found.append((name, _from_json(TypeAdapter(annotation) if typed else None)))
        elif typed:
            found.append((name, TypeAdapter(annotation).validate_python))
    return tuple(found)


def _from_json(adapter: TypeAdapter[Any] | None) -> Callable[[Any], Any]:
    """A json column's converter: bytes from ``_JsonBytes`` are parsed straight into
    the field's type; values another cursor already parsed are validated as they are."""
    if adapter is None:
        return lambda value: json.loads(value) if isinstance(value, bytes) else value
    from_json = adapter.validate_json
    from_python = adapter.validate_python
    return lambda value: from_json(value) if isinstance(value, bytes) else from_python(value)


def record_factory(record: type[R]) -> Callable[[psycopg.Cursor[Any]], RowMaker[R]]:
    """A psycopg row factory that builds ``record`` instances without re-validation.

    The columns must carry the record's field names in order: ``toolkit
    verify`` proves it for every binding, and the first result is checked
    here too; later ones only by their column count, since reading
    ``cursor.description`` costs more than building the row. Only json
    fields are converted.
    """
    names = tuple(record.model_fields)
    fields_set = frozenset(names)
    new = object.__new__
    setattr_ = object.__setattr__
    planned: list[tuple[tuple[str, Callable[[Any], Any]], ...]] = []

    def factory(cursor: psycopg.Cursor[Any]) -> RowMaker[R]:
        result = cursor.pgresult
        if result is None or result.nfields == 0:
            return lambda values: None  # type: ignore[return-value]
        if not planned or result.nfields != len(names):
            planned[:] = [_converters(record, cursor)]
        converters = planned[0]

        def make(values: Sequence[Any]) -> R:
            data = dict(zip(names, values, strict=True))
            for field_name, convert in converters:
                value = data[field_name]
                if value is not None:
                    data[field_name] = convert(value)
            instance = new(record)
            setattr_(instance, "__dict__", data)
            setattr_(instance, "__pydantic_fields_set__", set(fields_set))
            setattr_(instance, "__pydantic_extra__", None)
            setattr_(instance, "__pydantic_private__", None)
            return instance

        return make

    return factory


class One(Binding, Generic[R]):
    """A ``:one`` query: exactly one record, or NotFound."""

    kind = Kind.ONE

    def __init__(self, name: str, record: type[R], params: Sequence[str], entity: str) -> None:
        super().__init__(name, params, record)
        self.entity = entity
        self._factory = record_factory(record)

    def __call__(self, conn: Connection, key: Any = None, /, **values: Any) -> R:
        row: R | None = self._execute(conn, values, self._factory).fetchone()
        if row is None:
            raise NotFound(self.entity, key if key is not None else values)
        return row


class OneOrNone(Binding, Generic[R]):
    """An ``:optional`` query: one record or None."""

    kind = Kind.OPTIONAL

    def __init__(self, name: str, record: type[R], params: Sequence[str]) -> None:
        super().__init__(name, params, record)
        self._factory = record_factory(record)

    def __call__(self, conn: Connection, /, **values: Any) -> R | None:
        row: R | None = self._execute(conn, values, self._factory).fetchone()
        return row


class Returning(OneOrNone[R]):
    """A ``:returning`` write: the row it changed, or None when its guard failed."""

    kind = Kind.RETURNING


class Many(Binding, Generic[R]):
    """A ``:many`` query: a list of records, optionally sorted from a whitelist."""

    kind = Kind.MANY

    def __init__(self, name: str, record: type[R], params: Sequence[str]) -> None:
        super().__init__(name, params, record)
        self._factory = record_factory(record)

    def __call__(
        self,
        conn: Connection,
        /,
        *,
        sort: str | None = None,
        descending: bool = False,
        **values: Any,
    ) -> list[R]:
        rows: list[R] = self._execute(conn, values, self._factory, sort, descending).fetchall()
        return rows


class Scalar(Binding, Generic[T]):
    """A ``:scalar`` query: the first column of the first row (None without rows)."""

    kind = Kind.SCALAR

    def __init__(self, name: str, result: type[T], params: Sequence[str]) -> None:
        super().__init__(name, params, None)
        self.result = result

    def __call__(self, conn: Connection, /, **values: Any) -> T | None:
        row = self._execute(conn, values).fetchone()
        return None if row is None else typing.cast(T, row[0])


class Exec(Binding):
    """An ``:exec`` statement: the number of rows it affected."""

    kind = Kind.EXEC

    def __init__(self, name: str, params: Sequence[str]) -> None:
        super().__init__(name, params, None)

    def __call__(self, conn: Connection, /, **values: Any) -> int:
        return self._execute(conn, values).rowcount


class Copy(Binding):
    """A ``:copy`` statement (``COPY ... FROM STDIN``) fed rows in bulk."""

    kind = Kind.COPY

    def __init__(self, name: str) -> None:
        super().__init__(name, (), None)

    def __call__(self, conn: Connection, rows: Iterable[Sequence[Any]], /) -> int:
        count = 0
        try:
            with conn.cursor() as cursor, cursor.copy(self.query.statement()) as copy:
                for row in rows:
                    copy.write_row(row)
                    count += 1
        except psycopg.Error as exc:
            raise_translated(exc, self.name)
        return count
