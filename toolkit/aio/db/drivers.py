"""The driver: run a bound query on a psycopg connection.

A binding (:mod:`toolkit.db.bind`) is a value: its statement per sort, its
parameters, its result kind and its row factory, and no I/O; it imports no
driver, the drivers import it. ``run(conn, binding, ...)`` (typed per kind)
``run_many(conn, binding, values)`` (an ``:exec`` statement once per
mapping, pipelined, parameters in binary) and ``copy(conn, binding, rows)``, written once in
``toolkit/aio/db/drivers.py`` (async) and generated from it as
``toolkit/db/drivers.py`` (sync), are the only places a named query is
executed, so every repository, the LangGraph saver and an application's own
queries run the same way, sync or async:

1. the statement (rendered once per sort, direction and, for a list query,
   the variant for the filters given) is sent with bound parameters,
   results in binary format, prepared as the binding says;
2. the rows are fetched as the result kind needs (:class:`Fetch`);
3. the binding's ``finish`` turns them into what the caller gets (a record
   or NotFound, a list, a scalar, a row count).

json and jsonb results arrive as the bytes the server sent (see
:mod:`toolkit.db.results`).

:func:`drive` runs a sans-IO operation (a generator of ``(binding,
values)`` calls, as the LangGraph saver's are) on one connection: the one
drive loop per mode.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping, Sequence
from typing import Any, TypeVar, overload

import psycopg

from toolkit.aio.db.database import AsyncConnection, ReadRoute, read_route
from toolkit.db.bind import Binding, Copy, Exec, Many, One, OneOrNone, Runnable, Scalar
from toolkit.db.errors import raise_translated
from toolkit.db.results import Fetch, json_as_bytes
from toolkit.errors import ToolkitError

T = TypeVar("T")


@overload
async def run(conn: AsyncConnection, query: One[T], key: Any = None, /, **values: Any) -> T: ...
@overload
async def run(conn: AsyncConnection, query: OneOrNone[T], /, **values: Any) -> T | None: ...
@overload
async def run(conn: AsyncConnection, query: Scalar[T], /, **values: Any) -> T | None: ...
@overload
async def run(
    conn: AsyncConnection,
    query: Many[T],
    /,
    *,
    sort: str | None = None,
    descending: bool = False,
    **values: Any,
) -> list[T]: ...
@overload
async def run(conn: AsyncConnection, query: Exec, /, **values: Any) -> int: ...
async def run(
    conn: AsyncConnection,
    query: Binding,
    key: Any = None,
    /,
    *,
    sort: str | None = None,
    descending: bool = False,
    **values: Any,
) -> Any:
    """Run ``query`` on ``conn`` with ``values`` (its parameters, by name); the kind's result.

    * :class:`~toolkit.db.bind.One`: the record, or NotFound naming ``key``
      (the values when ``key`` is None);
    * :class:`~toolkit.db.bind.OneOrNone` and :class:`~toolkit.db.bind.Returning`:
      the record or None; :class:`~toolkit.db.bind.Scalar`: the value or None;
    * :class:`~toolkit.db.bind.Many`: the list, ordered by ``sort`` (a column
      of the query's ``-- sort:`` whitelist), ``descending`` if asked;
    * :class:`~toolkit.db.bind.Exec`: the number of rows affected.

    Values whose names are not exactly the binding's parameters are refused
    (QueryDefinitionError) before anything is sent.

    On a connection from ``Database.connection(read_after=...)``, a binding
    whose query is marked ``-- route: replica`` may run on a replica instead
    (see :meth:`~toolkit.aio.db.database.AsyncDatabase.connection`).
    """
    # Every repository call's hot path: one Python call from the caller, no per-kind wrapper.
    query.check_values(values)
    statement = query.statement_for(values, sort, descending)
    try:
        route = read_route(conn)
        if route is None:
            fetched = await _fetch(conn, query, statement, values)
        else:
            fetched = await _routed(conn, route, query, statement, values)
    except psycopg.Error as exc:
        raise_translated(exc, query.name)
    return query.finish(fetched, key, values)


async def _fetch(
    conn: AsyncConnection, query: Binding, statement: str, values: Mapping[str, Any]
) -> Any:
    """Send ``statement`` on ``conn`` and read what ``query``'s kind needs; psycopg errors."""
    json_as_bytes(conn)
    cursor = conn.cursor(row_factory=query.row_factory)
    await cursor.execute(statement, values, prepare=query.prepare, binary=True)
    if query.fetch is Fetch.ALL:
        return await cursor.fetchall()
    if query.fetch is Fetch.ONE:
        return await cursor.fetchone()
    return cursor.rowcount


async def _routed(
    conn: AsyncConnection,
    route: ReadRoute,
    query: Binding,
    statement: str,
    values: Mapping[str, Any],
) -> Any:
    """Run ``query`` on a replica that has replayed past the route's position, else on ``conn``."""
    if not query.on_replica:
        route.pinned = True  # it may write: the block's later reads must see it
        return await _fetch(conn, query, statement, values)
    async with route.database.replica_for(route) as replica:
        if replica is not None:
            return await _fetch(replica, query, statement, values)
    # No replica had replayed past the position, or the one asked failed meanwhile.
    return await _fetch(conn, query, statement, values)


async def run_many(conn: AsyncConnection, query: Exec, values: Iterable[Mapping[str, Any]]) -> int:
    """Run ``query`` once per mapping of ``values``, pipelined; the rows affected in all.

    For bulk statements (:func:`~toolkit.aio.db.patterns.insert_rows`): the
    parameters go in binary format (see
    :meth:`~toolkit.db.bind.Binding.binary_statement_text`), and psycopg's
    pipeline sends each statement while the server still runs the one
    before, so the client's work overlaps the server's. Not atomic by
    itself: run it in a transaction when a failure part-way must write
    nothing. On a ``read_after`` connection it runs on the primary.
    """
    route = read_route(conn)
    if route is not None:
        route.pinned = True  # it writes: the block's later reads must see it
    try:
        async with conn.cursor() as cursor:
            await cursor.executemany(query.binary_statement_text(), query.each_checked(values))
            return cursor.rowcount
    except psycopg.Error as exc:
        raise_translated(exc, query.name)


async def copy(conn: AsyncConnection, query: Copy, rows: Iterable[Sequence[Any]]) -> int:
    """Feed ``rows`` to a ``:copy`` statement on ``conn``; how many were sent."""
    count = 0
    try:
        async with conn.cursor() as cursor, cursor.copy(query.statement_text()) as feed:
            for row in rows:
                await feed.write_row(row)
                count += 1
    except psycopg.Error as exc:
        raise_translated(exc, query.name)
    return count


async def drive(
    conn: AsyncConnection, op: Generator[tuple[Runnable, Mapping[str, Any]], Any, T]
) -> T:
    """Run a sans-IO operation on ``conn``; what it returns.

    ``op`` yields ``(binding, values)`` calls and is sent each one's result;
    a call's toolkit error is thrown into it, to handle (retry another way)
    or let out.
    """
    result: Any = None
    error: ToolkitError | None = None
    while True:
        try:
            binding, values = op.throw(error) if error is not None else op.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        error = None
        try:
            result = await run(conn, binding, **values)
        except ToolkitError as exc:
            error = exc
