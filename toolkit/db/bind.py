"""Bindings: a named query tied to the record it returns and the parameters it takes.

Repository modules bind their queries at import time, and a driver runs them::

    _get = One("agents.get", Agent, ("id",), entity="agent")
    agent = run(conn, _get, agent_id, id=agent_id)           # toolkit.db.run
    agent = await run(aconn, _get, agent_id, id=agent_id)    # toolkit.aio.db.run

A binding is a value: its statement (rendered once per sort and
direction), its parameters, its result kind and its row factory, built
once. It does no I/O and imports no driver: :func:`toolkit.aio.db.drivers.run`
(and its generated sync twin :func:`toolkit.db.drivers.run`) runs it; each
kind's class says what to fetch and how to finish the result (PugSQL's one
small class per kind).

Binding checks that the query exists, has the expected result kind and uses
exactly the declared parameters, so a mismatch fails when the module is
imported, naming the SQL file and line. Every binding is kept in
:data:`BINDINGS` for ``toolkit verify``, which checks the query's result
columns against the record's fields on the real schema. Because verify
proves names, order and types agree, rows become records without
re-validation (see :func:`record_factory`); what it cannot prove, that a
non-Optional field's column holds no NULL where an outer join or an
expression is involved, is checked on every row and raises IntegrityError.
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from operator import is_, itemgetter
from typing import Any, Generic, NamedTuple, Never, NoReturn, TypeVar

import psycopg
from psycopg.rows import RowMaker
from pydantic import BaseModel, TypeAdapter, ValidationError

from toolkit.config import default_settings
from toolkit.db.registry import (
    CURSOR_PARAMS,
    Kind,
    NamedQuery,
    QueryRegistry,
    check_params,
)
from toolkit.db.results import Fetch
from toolkit.errors import IntegrityError, NotFound, QueryDefinitionError, bounded_repr
from toolkit.records import Record

R = TypeVar("R", bound=BaseModel)
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


@lru_cache(maxsize=1)
def registry() -> QueryRegistry:
    """Every named query, loaded once: the toolkit's ``sql/``, then ``TOOLKIT_SQL_PATH``'s."""
    return QueryRegistry.with_application(default_settings().sql_folders)


_TEXT_PLACEHOLDER = re.compile(r"(?<!%)((?:%%)*)%\((\w+)\)s")
"""A ``%(name)s`` placeholder: after an even number of ``%`` (literal ``%`` are doubled)."""
_BINARY_KEY: tuple[str | None, bool] = ("%b", True)
"""Where :meth:`Binding.binary_statement_text` caches its text (no sort column is named %b)."""

RUN_KEYWORDS = frozenset({"sort", "descending"})
"""The keywords ``run`` takes for itself: no query parameter may take these names."""


class Binding:
    """A named query with the parameters its caller passes; a value, run by a driver."""

    kind: Kind
    fetch: Fetch = Fetch.ALL
    """What the driver reads from the cursor for this kind."""

    def __init__(
        self,
        name: str,
        params: Sequence[str],
        record: type[Any] | None,
        *,
        prepare: bool | None = None,
    ) -> None:
        self.query: NamedQuery = registry()[name]
        if record is not None and not isinstance(record, type):
            raise QueryDefinitionError(
                f"{self.query.location}: {name} is bound to {bounded_repr(record, 60)}, "
                "which is not a class: bind a pydantic record, or a type such as str "
                "for a one-column query (Scalar for a single value)"
            )
        if self.query.kind is not self.kind:
            raise QueryDefinitionError(
                f"{self.query.location}: {name} is :{self.query.kind.value}, "
                f"but is bound as :{self.kind.value}"
            )
        reserved = sorted(RUN_KEYWORDS.intersection(params))
        if reserved:
            raise QueryDefinitionError(
                f"{self.query.location}: {name} takes parameter(s) {', '.join(reserved)}, "
                "which are run()'s own keywords (a Many's order): rename them in the query"
            )
        if self.query.sortable:
            params = (*params, *CURSOR_PARAMS)
        check_params(self.query, params)
        self.name = name
        self.params = tuple(params)
        self.param_set = frozenset(self.params)
        self.record = record
        # Read from a replica when the caller gives a commit position (-- route: replica).
        self.on_replica = self.query.route == "replica"
        self.row_factory: Any = (
            None
            if record is None
            else record_factory(record, self.query)
            if issubclass(record, BaseModel)
            else scalar_factory(record, self.query)
        )
        # A sortable query runs as the variant for the filters a call gives (see
        # NamedQuery.variant): plain SQL without null guards, so preparing it (the
        # binding's choice, psycopg's threshold by default) keeps each filter's index.
        # A guarded parameter used outside its guard leaves the text whole: planned
        # with its actual values on every call (prepare=False), as a generic plan
        # cannot drop an unused filter.
        self.variant_keys = self.query.variant_keys
        guarded = self.query.sortable and not self.query.optional_filters
        self.prepare = False if guarded and self.query.null_guards else prepare
        # Rendered once per (sort, direction, variant): composing costs more than the round trip.
        self._rendered: dict[tuple[str | None, bool], str] = {}
        self._variants: dict[tuple[str | None, bool, tuple[bool, ...]], str] = {}
        # A sync module and its async source bind the same queries: verify each once.
        signature = (name, record, self.params, self.kind)
        if signature not in _BOUND:
            _BOUND.add(signature)
            BINDINGS.append(self)

    def statement_text(self, sort: str | None = None, descending: bool = False) -> str:
        """The statement as sent, for a sort column from the whitelist (cached)."""
        key = (sort, descending)
        text = self._rendered.get(key)
        if text is None:
            text = self.query.statement(sort, descending).as_string(None)
            self._rendered[key] = text
        return text

    def binary_statement_text(self) -> str:
        """:meth:`statement_text` (unsorted) with every parameter sent in binary format.

        For bulk arrays (:func:`~toolkit.db.patterns.insert_rows`): psycopg
        dumps a list in text format element by element, quoting and escaping
        each (most of a large insert's client time, for JSON); in binary
        format it copies each element's bytes.
        """
        text = self._rendered.get(_BINARY_KEY)
        if text is None:
            # A placeholder's % is never doubled: "%%(" is a literal "%(".
            text = _TEXT_PLACEHOLDER.sub(r"\1%(\2)b", self.statement_text())
            self._rendered[_BINARY_KEY] = text
        return text

    def statement_for(
        self, values: Mapping[str, Any], sort: str | None = None, descending: bool = False
    ) -> str:
        """The statement a call with ``values`` sends: the variant for the optional
        filters (and cursor) it gives, for a sortable query; the whole text otherwise."""
        if not self.variant_keys:
            return self.statement_text(sort, descending)
        given = tuple([values[name] is not None for name in self.variant_keys])
        key = (sort, descending, given)
        text = self._variants.get(key)
        if text is None:
            present = [name for name, there in zip(self.variant_keys, given, strict=True) if there]
            text = self.query.statement(sort, descending, present).as_string(None)
            self._variants[key] = text
        return text

    def check_values(self, values: Mapping[str, Any]) -> None:
        """Refuse a call whose parameter names are not exactly the binding's.

        A misspelt or missing keyword at a call site fails on its first run
        (every public function runs in the test suite), naming the query and
        the names, before anything is sent.
        """
        if values.keys() != self.param_set:
            given = set(values)
            raise QueryDefinitionError(
                f"{self.query.location}: {self.name} called with "
                f"unknown {sorted(given - self.param_set)} and "
                f"missing {sorted(self.param_set - given)} parameter(s)"
            )

    def each_checked(self, values: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
        """``values``, each refused like :meth:`check_values`; taken one by one, so
        a generator's next mapping is built while the server runs the last."""
        for each in values:
            self.check_values(each)
            yield each

    def finish(self, fetched: Any, key: Any, values: Mapping[str, Any]) -> Any:
        """What the caller gets from what the driver fetched (the rows, by default)."""
        return fetched

    def __call__(self, *args: Never, **values: Never) -> NoReturn:
        """Refuse to be called: a binding is a value, which a driver runs.

        Bindings were once callable; a caller not yet changed gets this
        message, and mypy an error (no argument fits ``Never``).
        """
        raise QueryDefinitionError(
            f"{self.query.location}: {self.name} is a binding, a value: run it with "
            "toolkit.db.run(conn, binding, ...) or await toolkit.aio.db.run(conn, binding, ...)"
        )


BINDINGS: list[Binding] = []
"""Every distinct binding made so far, in import order (for ``toolkit verify``)."""
_BOUND: set[tuple[str, type[Any] | None, tuple[str, ...], Kind]] = set()


def _needs_validation(annotation: Any) -> bool:
    """Whether values of this annotation must be converted from what psycopg returns."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, tuple, typing.Annotated):
        return any(_needs_validation(arg) for arg in typing.get_args(annotation))
    return False


class _Converter(NamedTuple):
    """How one column that needs it becomes its field's value."""

    column: int
    """Its index in the row."""
    field: str
    convert: Callable[[Any], Any]
    """pydantic-core's own validator method (no Python wrapper frame per row), or json.loads."""
    json_type: str | None
    """The field's type name when the column is json, whose ValidationError means a stored
    value that does not fit (IntegrityError); None for a column validated from Python."""


def _converters(record: type[BaseModel], cursor: psycopg.Cursor[Any]) -> tuple[_Converter, ...]:
    """How each column that needs it becomes its field's value.

    json/jsonb arrive as bytes (see :mod:`toolkit.db.drivers`): typed fields
    are validated from JSON in one step by pydantic-core, plain ones parsed.
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
    found: list[_Converter] = []
    for index, (column, (name, info)) in enumerate(
        zip(description, record.model_fields.items(), strict=True)
    ):
        annotation: Any = info.annotation
        typed = _needs_validation(annotation)
        if column.type_code in json_oids:
            if typed:
                validator = TypeAdapter(annotation).validator
                found.append(_Converter(index, name, validator.validate_json, _name(annotation)))
            else:
                found.append(_Converter(index, name, json.loads, None))
        elif typed:
            validator = TypeAdapter(annotation).validator
            found.append(_Converter(index, name, validator.validate_python, None))
    return tuple(found)


def _name(annotation: Any) -> str:
    return str(getattr(annotation, "__name__", repr(annotation)))


def _stored_json_error(exc: ValidationError, type_name: str) -> IntegrityError:
    """A stored JSON value that does not fit its field's type (a row written outside the
    toolkit), as IntegrityError: the path and the reason, the value bounded."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "value"
    return IntegrityError(
        f"stored JSON does not fit {type_name}: {bounded_repr(where, 60)}: "
        f"{first['msg']} (got {bounded_repr(first.get('input'))}); "
        "was the row written outside the toolkit?"
    )


def _from_json(adapter: TypeAdapter[Any] | None, annotation: Any) -> Callable[[Any], Any]:
    """A json column's converter for a one-column binding: the bytes the drivers fetch,
    parsed straight into the type (or plain JSON for dict and list).

    A stored value that does not fit the type raises IntegrityError, not a
    pydantic error (see :func:`_stored_json_error`).
    """
    if adapter is None:
        return json.loads
    validate = adapter.validator.validate_json
    type_name = _name(annotation)

    def convert(data: Any) -> Any:
        try:
            return validate(data)
        except ValidationError as exc:
            raise _stored_json_error(exc, type_name) from None

    return convert


def _admits_none(annotation: Any) -> bool:
    """Whether a field of this annotation may hold None (Optional, a union with None, Any)."""
    if annotation is None or annotation is type(None) or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _admits_none(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, typing.Literal):
        return any(_admits_none(arg) for arg in typing.get_args(annotation))
    return False


def _null_in_required(
    record: type[BaseModel], required: Sequence[int], values: Sequence[Any], query: str
) -> IntegrityError:
    """The error for a row with NULL in a non-Optional field's column (names, never values)."""
    names = tuple(record.model_fields)
    column = next(names[index] for index in required if values[index] is None)
    annotation = record.model_fields[column].annotation
    shown = (
        annotation.__name__
        if isinstance(annotation, type)
        else str(annotation).replace("typing.", "")
    )
    return IntegrityError(
        f"{query} returned NULL in column {column}, but {record.__name__}.{column} is "
        f"{shown} (not Optional); an outer join or an expression can be NULL where the "
        "table column is NOT NULL: make the field Optional or the column non-null (COALESCE)"
    )


class _Plan(NamedTuple):
    """How a bound query's rows become records, worked out on its first result."""

    converters: tuple[_Converter, ...]
    """The columns that need converting."""
    null_checked: tuple[int, ...]
    """Columns of non-Optional fields whose NULL verify cannot rule out."""
    pick_checked: Callable[[Sequence[Any]], Sequence[Any]]
    nones: tuple[None, ...]


def _null_checked(
    record: type[BaseModel], query: NamedQuery, result: psycopg.pq.abc.PGresult
) -> tuple[int, ...]:
    """The columns of non-Optional fields that ``toolkit verify`` cannot prove NOT NULL.

    Verify proves a column read straight from a NOT NULL table column,
    unless the query has an outer join or grouping sets (see
    :attr:`NamedQuery.may_null_table_columns`); an expression (``ftable``
    0: a subquery, an aggregate, a CASE, a UNION) it cannot prove at all.
    """
    anywhere = query.may_null_table_columns
    return tuple(
        index
        for index, info in enumerate(record.model_fields.values())
        if not _admits_none(info.annotation) and (anywhere or result.ftable(index) == 0)
    )


def record_factory(
    record: type[R], query: NamedQuery
) -> Callable[[psycopg.Cursor[Any]], RowMaker[R]]:
    """A psycopg row factory that builds ``record`` instances without re-validation.

    The columns must carry the record's field names in order: ``toolkit
    verify`` proves it for every binding, and the first result is checked
    here too; later ones only by their column count, since reading
    ``cursor.description`` costs more than building the row. Only json
    fields are converted, by pydantic-core's validator itself. A
    :class:`~toolkit.records.Record` gets its set of set fields (every field)
    when first asked for, not per row; another model gets its own set per row.

    Verify judges nullability from the table column, which an outer join
    does not preserve and an expression does not have. So a column of a
    non-Optional field that verify cannot prove NOT NULL (every such column
    of a query with an outer join or grouping sets; an expression's in any
    query) is checked on every row: a NULL there raises IntegrityError
    naming the query, its ``file:line`` and the column, instead of a record
    with None in an ``int`` field failing far from its cause. A query
    without such columns (most) pays nothing; one with them pays an
    ``all(row)`` per row, and looks at those columns, by identity, only in
    a row holding a falsy value (``None in row`` would call UUID's Python
    ``__eq__`` on every uuid).
    """
    names = tuple(record.model_fields)
    width = len(names)
    fields_set = set(names)
    new = object.__new__
    # BaseModel's slots, set through their descriptors: one C call each, no name lookup.
    set_dict = object.__setattr__
    set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
    set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
    set_private = BaseModel.__dict__["__pydantic_private__"].__set__
    # A Record makes its set of set fields when first asked (Record.__getattr__).
    lazy_fields_set = issubclass(record, Record)
    planned: list[_Plan] = []
    where = f"{query.location}: {query.name}"

    def factory(cursor: psycopg.Cursor[Any]) -> RowMaker[R]:
        result = cursor.pgresult
        if result is None or result.nfields == 0:
            return lambda values: None  # type: ignore[return-value]
        if not planned or result.nfields != width:
            # _converters checks the columns' names and order against the fields.
            converters = _converters(record, cursor)
            checked = _null_checked(record, query, result)
            planned[:] = [
                _Plan(
                    converters,
                    checked,
                    # itemgetter of one index returns the bare value: repeat one, keep a tuple.
                    itemgetter(*checked, *checked[:1]) if checked else tuple,
                    (None,) * (len(checked) + 1),
                )
            ]
        by_index, checked, pick_checked, nones = planned[0]

        def make(values: Sequence[Any]) -> R:
            # A falsy value (None, 0, False, ""): is it a None in a checked column?
            if checked and not all(values) and any(map(is_, pick_checked(values), nones)):
                raise _null_in_required(record, checked, values, where)
            data = dict(zip(names, values, strict=False))  # same width: checked when planned
            for index, field_name, convert, json_type in by_index:
                value = values[index]
                if value is not None:
                    try:
                        data[field_name] = convert(value)
                    except ValidationError as exc:
                        if json_type is None:
                            raise
                        raise _stored_json_error(exc, json_type) from None
            # What model_construct leaves, without its Python per field (and no validation).
            instance = new(record)
            set_dict(instance, "__dict__", data)
            if not lazy_fields_set:
                set_fields_set(instance, fields_set.copy())
            set_extra(instance, None)
            set_private(instance, None)
            return instance

        return make

    return factory


def is_scalar_binding(binding: Binding) -> bool:
    """Whether rows of this binding become one column's value rather than records."""
    record = binding.record
    return record is not None and not issubclass(record, BaseModel)


def scalar_factory(
    result: type[T], query: NamedQuery
) -> Callable[[psycopg.Cursor[Any]], RowMaker[T]]:
    """A psycopg row factory for a one-column query bound to a plain type (``Many("q", str)``).

    Each row becomes its column's value. ``toolkit verify`` checks the
    column's type against ``result``; the first result is checked to have
    one column. json columns are parsed into ``result``. A NULL raises
    IntegrityError naming the query: ``result`` is a type, never Optional,
    and a None row would read as "no row" to ``One`` and ``OneOrNone``.
    """
    where = f"{query.location}: {query.name}"
    type_name = getattr(result, "__name__", repr(result))
    from_json: list[Callable[[Any], Any]] = []  # built on the first json result

    def factory(cursor: psycopg.Cursor[Any]) -> RowMaker[T]:
        description = cursor.description
        if not description:
            return lambda values: None  # type: ignore[return-value]
        if len(description) != 1:
            raise QueryDefinitionError(
                f"{where} returns columns {tuple(column.name for column in description)}, "
                f"but is bound to {type_name}, which takes one column: bind a record"
            )
        registered = cursor.adapters.types
        json_oids = {t.oid for n in ("json", "jsonb") if (t := registered.get(n)) is not None}
        convert: Callable[[Any], Any] = _identity
        if description[0].type_code in json_oids:
            if not from_json:
                adapter = None if result in (dict, list) else TypeAdapter(result)
                from_json.append(_from_json(adapter, result))
            convert = from_json[0]
        column = description[0].name

        def make(values: Sequence[Any]) -> T:
            value = values[0]
            if value is None:
                raise IntegrityError(
                    f"{where} returned NULL in column {column}, but it is bound to "
                    f"{type_name}: bind a record with an Optional field, or make the "
                    "column non-null (COALESCE)"
                )
            return typing.cast(T, convert(value))

        return make

    return factory


def _identity(value: Any) -> Any:
    return value


class One(Binding, Generic[T_co]):
    """A ``:one`` query: exactly one record (or value, bound to a plain type), or NotFound."""

    kind = Kind.ONE
    fetch = Fetch.ONE

    def __init__(
        self,
        name: str,
        record: type[T_co],
        params: Sequence[str],
        entity: str,
        *,
        prepare: bool | None = None,
    ) -> None:
        super().__init__(name, params, record, prepare=prepare)
        self.entity = entity

    def finish(self, fetched: Any, key: Any, values: Mapping[str, Any]) -> T_co:
        if fetched is None:
            raise NotFound(self.entity, key if key is not None else dict(values))
        return typing.cast(T_co, fetched)


class OneOrNone(Binding, Generic[T_co]):
    """An ``:optional`` query: one record (or value, bound to a plain type) or None."""

    kind = Kind.OPTIONAL
    fetch = Fetch.ONE

    def __init__(
        self, name: str, record: type[T_co], params: Sequence[str], *, prepare: bool | None = None
    ) -> None:
        super().__init__(name, params, record, prepare=prepare)


class Returning(OneOrNone[T_co]):
    """A ``:returning`` write: the row it changed, or None when its guard failed."""

    kind = Kind.RETURNING


class Many(Binding, Generic[T_co]):
    """A ``:many`` query: a list of records, optionally sorted from a whitelist.

    Bound to a plain type (``Many("q", str, ())``), a one-column query's
    rows are that column's values.
    """

    kind = Kind.MANY

    def __init__(
        self, name: str, record: type[T_co], params: Sequence[str], *, prepare: bool | None = None
    ) -> None:
        super().__init__(name, params, record, prepare=prepare)


class Scalar(Binding, Generic[T_co]):
    """A ``:scalar`` query: the first column of the first row (None without rows)."""

    kind = Kind.SCALAR
    fetch = Fetch.ONE

    def __init__(
        self, name: str, result: type[T_co], params: Sequence[str], *, prepare: bool | None = None
    ) -> None:
        super().__init__(name, params, None, prepare=prepare)
        self.result = result

    def finish(self, fetched: Any, key: Any, values: Mapping[str, Any]) -> T_co | None:
        return None if fetched is None else typing.cast(T_co, fetched[0])


class Exec(Binding):
    """An ``:exec`` statement: the number of rows it affected."""

    kind = Kind.EXEC
    fetch = Fetch.ROWCOUNT

    def __init__(self, name: str, params: Sequence[str], *, prepare: bool | None = None) -> None:
        super().__init__(name, params, None, prepare=prepare)


class Copy(Binding):
    """A ``:copy`` statement (``COPY ... FROM STDIN``) fed rows in bulk."""

    kind = Kind.COPY

    def __init__(self, name: str) -> None:
        super().__init__(name, (), None)


Runnable = One[Any] | OneOrNone[Any] | Many[Any] | Scalar[Any] | Exec
"""What the drivers' ``run`` takes: a binding of any kind but :class:`Copy` (fed by ``copy``)."""
