"""The two drivers: run a bound query on a psycopg ``Connection`` or ``AsyncConnection``.

A binding (:mod:`toolkit.db.bind`) is a value: its statement per sort, its
parameters, its result kind and its row factory, and no I/O. These
functions are the only places a named query is executed, so every
repository, the LangGraph saver and an application's own queries run the
same way, sync or async:

1. the statement (rendered once per sort and direction) is sent with bound
   parameters, results in binary format, prepared as the binding says;
2. the rows are fetched as the result kind needs (:class:`Fetch`);
3. the binding's ``finish`` turns them into what the caller gets (a record
   or NotFound, a list, a scalar, a row count).

json and jsonb results arrive as the bytes the server sent (the record
factory parses them straight into their field's type): the loaders are
registered once per connection, for binary results only, so text-format
queries of the caller's own on the same connection are unaffected.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg.pq import Format

from toolkit.db.errors import raise_translated

if TYPE_CHECKING:
    from toolkit.db.bind import Binding, Copy


class Fetch(enum.Enum):
    """What a result kind reads from the cursor."""

    ONE = "one"
    ALL = "all"
    ROWCOUNT = "rowcount"


class _JsonBinaryBytes(Loader):
    """json in binary format: its text, as bytes."""

    format = Format.BINARY

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


class _JsonbBinaryBytes(Loader):
    """jsonb in binary format: a version byte, then its text, as bytes."""

    format = Format.BINARY

    def load(self, data: Buffer) -> bytes:
        return bytes(data[1:])


def _json_as_bytes(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """Register the bytes loaders on ``conn`` unless done already (once per connection)."""
    adapters = conn.adapters
    jsonb = adapters.types.get("jsonb")
    if jsonb is None or adapters.get_loader(jsonb.oid, Format.BINARY) is _JsonbBinaryBytes:
        return
    adapters.register_loader("jsonb", _JsonbBinaryBytes)
    adapters.register_loader("json", _JsonBinaryBytes)


def run(
    conn: psycopg.Connection[Any],
    query: Binding,
    values: Mapping[str, Any],
    *,
    key: Any = None,
    sort: str | None = None,
    descending: bool = False,
) -> Any:
    """Run ``query`` with ``values`` on a sync connection; the kind's result."""
    query.check_values(values)
    _json_as_bytes(conn)
    statement = query.statement_text(sort, descending)
    try:
        cursor = conn.cursor(row_factory=query.row_factory)
        cursor.execute(statement, values, prepare=query.prepare, binary=True)
        if query.fetch is Fetch.ALL:
            fetched: Any = cursor.fetchall()
        elif query.fetch is Fetch.ONE:
            fetched = cursor.fetchone()
        else:
            fetched = cursor.rowcount
    except psycopg.Error as exc:
        raise_translated(exc, query.name)
    return query.finish(fetched, key, values)


async def arun(
    conn: psycopg.AsyncConnection[Any],
    query: Binding,
    values: Mapping[str, Any],
    *,
    key: Any = None,
    sort: str | None = None,
    descending: bool = False,
) -> Any:
    """Run ``query`` with ``values`` on an async connection; the kind's result."""
    query.check_values(values)
    _json_as_bytes(conn)
    statement = query.statement_text(sort, descending)
    try:
        cursor = conn.cursor(row_factory=query.row_factory)
        await cursor.execute(statement, values, prepare=query.prepare, binary=True)
        if query.fetch is Fetch.ALL:
            fetched: Any = await cursor.fetchall()
        elif query.fetch is Fetch.ONE:
            fetched = await cursor.fetchone()
        else:
            fetched = cursor.rowcount
    except psycopg.Error as exc:
        raise_translated(exc, query.name)
    return query.finish(fetched, key, values)


def copy(conn: psycopg.Connection[Any], query: Copy, rows: Iterable[Sequence[Any]]) -> int:
    """Feed ``rows`` to a ``:copy`` statement on a sync connection; how many were sent."""
    count = 0
    try:
        with conn.cursor() as cursor, cursor.copy(query.statement_text()) as feed:
            for row in rows:
                feed.write_row(row)
                count += 1
    except psycopg.Error as exc:
        raise_translated(exc, query.name)
    return count


async def acopy(
    conn: psycopg.AsyncConnection[Any], query: Copy, rows: Iterable[Sequence[Any]]
) -> int:
    """Feed ``rows`` to a ``:copy`` statement on an async connection; how many were sent."""
    count = 0
    try:
        async with conn.cursor() as cursor, cursor.copy(query.statement_text()) as feed:
            for row in rows:
                await feed.write_row(row)
                count += 1
    except psycopg.Error as exc:
        raise_translated(exc, query.name)
    return count
