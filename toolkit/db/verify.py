"""``toolkit verify``: every bound query checked against the live schema.

Each query is prepared on the server and described (psycopg's
``PGconn.prepare`` / ``describe_prepared``). Then, per binding:

* the result columns, in order, are the record's fields;
* each column's type fits the field's annotation (``timestamptz`` is a
  ``datetime``, ``jsonb`` a dict or a model, ...; a naive ``timestamp`` fits
  nothing);
* a column read straight from a nullable table column is Optional in the
  record, and so is one from a table that appears only on the nullable side
  of an outer join (``LEFT JOIN t``, either side of ``FULL JOIN``, the left
  of ``RIGHT JOIN``). That is a reading of the SQL's code, which misses
  joins inside subqueries and CTEs; the row factory checks every such
  column (and every expression's) on each row instead
  (:func:`toolkit.db.bind.record_factory`);
* the query's parameters are the ones its repository function passes;
* every query in the registry (the toolkit's and the application's) is
  bound by some function;
* a query that reads a tenant-owned table names its tenant, or declares
  itself cross-tenant (:func:`unscoped_query_problems`);
* a query routed to a replica (``-- route: replica``) neither writes nor
  locks rows (:func:`replica_route_problem`).

Nothing is executed: preparing a statement has no effect on data. The
caller passes the bindings (``toolkit.catalog.load_bindings`` imports every
binding module); this module imports nothing above ``db``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import re
import types
import typing
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.pq import ExecStatus, TransactionStatus
from pydantic import BaseModel

from toolkit.db.bind import Binding, Scalar, is_scalar_binding, registry
from toolkit.db.registry import Kind, NamedQuery, QueryRegistry, code_only

_TYPE_FITS: dict[str, tuple[type, ...]] = {
    "uuid": (uuid.UUID,),
    "text": (str,),
    "varchar": (str,),
    "bpchar": (str,),
    "name": (str,),
    "int2": (int,),
    "int4": (int,),
    "int8": (int,),
    "bool": (bool,),
    "timestamptz": (dt.datetime,),
    "date": (dt.date,),
    "interval": (dt.timedelta,),
    "jsonb": (dict, list, BaseModel),
    "json": (dict, list, BaseModel),
    "float4": (float,),
    "float8": (float,),
    "numeric": (decimal.Decimal, float),
    "bytea": (bytes,),
}


@dataclass(frozen=True)
class Problem:
    """One disagreement between a query and its binding."""

    location: str
    query: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.query}: {self.message}"


def _flatten(annotation: Any) -> tuple[list[Any], bool]:
    """The concrete types an annotation admits, and whether it admits None."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _flatten(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        found: list[Any] = []
        nullable = False
        for arg in typing.get_args(annotation):
            inner, inner_null = _flatten(arg)
            found.extend(inner)
            nullable = nullable or inner_null
        return found, nullable
    if annotation is type(None) or annotation is None:
        return [], True
    if origin is typing.Literal:
        return [type(value) for value in typing.get_args(annotation)], False
    if origin is not None:
        return [origin], False
    return [annotation], annotation is Any


def _list_items(annotation: Any) -> list[Any] | None:
    """The item annotations of ``list[X]`` (or ``list[X] | None``), or None if it is not one."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _list_items(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        items = [_list_items(member) for member in members]
        if not members or any(item is None for item in items):
            return None
        return [found for item in items for found in item or ()]
    if origin is list:
        return list(typing.get_args(annotation)) or [Any]
    return None


def _fits(pg_type: str, annotation: Any) -> bool:
    concrete, _ = _flatten(annotation)
    if any(item is Any for item in concrete):
        return True
    if pg_type.startswith("_"):
        # An array (PostgreSQL names the array of t "_t"): list[...] of items that fit t.
        items = _list_items(annotation)
        return items is not None and all(_fits(pg_type[1:], item) for item in items)
    allowed = _TYPE_FITS.get(pg_type)
    if allowed is None:
        return False
    for item in concrete:
        if not isinstance(item, type):
            return False
        if issubclass(item, enum.Enum) and not issubclass(item, str):
            return False
        # bool is an int in Python; keep the two apart.
        if item is bool and bool not in allowed:
            return False
        if not issubclass(item, allowed):
            return False
    return True


def _native(statement: str) -> tuple[str, list[str]]:
    """psycopg's ``%(name)s`` style turned into PostgreSQL's ``$n``."""
    order: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        name = match.group(1)
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}"

    return re.sub(r"%\((\w+)\)s|%%", replace, statement), order


class _Catalog:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self._types: dict[int, str] = {}
        self._not_null: dict[tuple[int, int], bool] = {}

    def type_name(self, oid: int) -> str:
        if oid not in self._types:
            row = self.conn.execute("SELECT typname FROM pg_type WHERE oid = %s", [oid]).fetchone()
            self._types[oid] = row[0] if row else f"oid {oid}"
        return self._types[oid]

    def table_oid(self, table: str) -> int | None:
        """The oid of the table ``table`` names on the search path; None if none."""
        row = self.conn.execute("SELECT to_regclass(%s)::oid", [table]).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def not_null(self, table: int, column: int) -> bool | None:
        if table == 0 or column <= 0:
            return None  # an expression: nullability unknown
        key = (table, column)
        if key not in self._not_null:
            row = self.conn.execute(
                "SELECT attnotnull FROM pg_attribute WHERE attrelid = %s AND attnum = %s",
                [table, column],
            ).fetchone()
            self._not_null[key] = bool(row and row[0])
        return self._not_null[key]


_NAME_PATTERN = r"[a-z_][a-z0-9_$]*(?:\.[a-z_][a-z0-9_$]*)?"
_TABLE_REFERENCE = re.compile(
    rf"\b(?:(?P<outer>left|right|full)\s+(?:outer\s+)?)?(?P<word>from|join)\s+"
    rf"(?:only\s+|lateral\s+)?(?P<table>{_NAME_PATTERN}\b(?!\s*\())?",
    re.IGNORECASE,
)


def outer_join_nullable_tables(query: NamedQuery) -> list[str]:
    """Tables this query names only on the nullable side of an outer join.

    Read from the SQL's code (never literals or comments): ``LEFT JOIN t``
    makes ``t`` nullable, ``RIGHT JOIN t`` every table named before it, and
    ``FULL JOIN t`` both. A table also named on a preserved side (a self
    join, a second use) is left out: the result columns cannot tell the two
    apart. Subqueries and views hide their joins from this reading.
    """
    references: list[tuple[str | None, bool]] = []  # (table, on a nullable side)
    for match in _TABLE_REFERENCE.finditer(code_only(query.source)):
        outer = (match.group("outer") or "").lower()
        if outer in ("right", "full"):
            references = [(table, True) for table, _ in references]
        table = match.group("table")
        references.append((table.lower() if table else None, outer in ("left", "full")))
    nullable = {table for table, is_nullable in references if table and is_nullable}
    preserved = {table for table, is_nullable in references if table and not is_nullable}
    return sorted(nullable - preserved)


def _check_binding(binding: Binding, catalog: _Catalog) -> list[Problem]:
    query = binding.query
    problems: list[Problem] = []

    def problem(message: str) -> None:
        problems.append(Problem(query.location, query.name, message))

    if query.kind is Kind.COPY:
        return problems
    outer_nullable = {
        oid: table
        for table in outer_join_nullable_tables(query)
        if (oid := catalog.table_oid(table)) is not None
    }
    variants: list[str | None] = [c.column for c in query.sort_columns] or [None]
    pgconn = catalog.conn.pgconn
    for sort in variants:
        text = query.statement(sort).as_string(catalog.conn)
        native, order = _native(text)
        if sorted(order) != sorted(binding.params):
            problem(f"parameters {sorted(order)} differ from those passed {sorted(binding.params)}")
        prepared = pgconn.prepare(b"", native.encode())
        described = (
            pgconn.describe_prepared(b"") if prepared.status == ExecStatus.COMMAND_OK else prepared
        )
        if described.status != ExecStatus.COMMAND_OK:
            message = (described.error_message or b"").decode(errors="replace").strip()
            problem(f"does not prepare against the schema: {message}")
            return problems
        columns = [
            (
                (described.fname(i) or b"").decode(),
                catalog.type_name(described.ftype(i)),
                catalog.not_null(described.ftable(i), described.ftablecol(i)),
                outer_nullable.get(described.ftable(i)),
            )
            for i in range(described.nfields)
        ]
        if sort is None or sort == variants[0]:
            problems.extend(_check_columns(binding, columns, query.location))
    return problems


def _check_columns(
    binding: Binding, columns: list[tuple[str, str, bool | None, str | None]], location: str
) -> list[Problem]:
    """Problems of a binding's result columns: (name, type, NOT NULL in its table, the
    outer-joined table it comes from on the nullable side)."""
    query = binding.query
    found: list[Problem] = []

    def problem(message: str) -> None:
        found.append(Problem(location, query.name, message))

    if query.kind is Kind.EXEC:
        if columns:
            problem(f":exec returns columns {[c[0] for c in columns]}; use :returning")
        return found
    if isinstance(binding, Scalar):
        _check_scalar_query(binding, columns, problem)
        return found
    record = binding.record
    if record is None:
        problem(f"is bound as {type(binding).__name__} without a record to check its columns")
        return found
    if is_scalar_binding(binding):
        _check_scalar_column(record, columns, problem)
        return found
    fields = list(record.model_fields.items())
    names = [c[0] for c in columns]
    if names != [name for name, _ in fields]:
        problem(
            f"columns {names} do not match {record.__name__} fields "
            f"{[name for name, _ in fields]} (names and order must agree)"
        )
        return found
    for (name, pg_type, not_null, outer_table), (_, info) in zip(columns, fields, strict=True):
        if not _fits(pg_type, info.annotation):
            problem(
                f"column {name} is {pg_type}, which does not fit "
                f"{record.__name__}.{name}: {_show(info.annotation)}"
            )
        _, nullable = _flatten(info.annotation)
        if nullable:
            continue
        if not_null is False:
            problem(
                f"column {name} can be NULL, but {record.__name__}.{name} "
                f"is {_show(info.annotation)} (make it Optional)"
            )
        elif outer_table is not None:
            problem(
                f"column {name} comes from {outer_table} on the nullable side of an outer "
                f"join and can be NULL, but {record.__name__}.{name} is "
                f"{_show(info.annotation)} (make it Optional, or COALESCE it)"
            )
    return found


def _check_scalar_query(
    binding: Scalar[Any],
    columns: list[tuple[str, str, bool | None, str | None]],
    problem: typing.Callable[[str], None],
) -> None:
    """Report the problems of a ``:scalar`` query's one column."""
    if len(columns) != 1:
        problem(f":scalar must return one column, returns {[c[0] for c in columns]}")
    elif not _fits(columns[0][1], binding.result):
        problem(
            f"column {columns[0][0]} is {columns[0][1]}, which does not fit {_show(binding.result)}"
        )


def _check_scalar_column(
    result: type[Any],
    columns: list[tuple[str, str, bool | None, str | None]],
    problem: typing.Callable[[str], None],
) -> None:
    """Report the problems of a one-column query bound to a plain type (``Many("q", str)``)."""
    shown = _show(result)
    if len(columns) != 1:
        problem(
            f"returns columns {[c[0] for c in columns]}, but is bound to {shown}, "
            "which takes one column: bind a record whose fields are the columns"
        )
        return
    name, pg_type, not_null, outer_table = columns[0]
    if not _fits(pg_type, result):
        problem(f"column {name} is {pg_type}, which does not fit {shown}")
    if not_null is False:
        problem(
            f"column {name} can be NULL, but the query is bound to {shown}: "
            "bind a record with an Optional field, or COALESCE it"
        )
    elif outer_table is not None:
        problem(
            f"column {name} comes from {outer_table} on the nullable side of an outer join "
            f"and can be NULL, but the query is bound to {shown}: COALESCE it"
        )


def _show(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def verify(
    conn: psycopg.Connection[Any],
    bindings: Iterable[Binding],
    queries: QueryRegistry | None = None,
) -> list[Problem]:
    """Check ``bindings`` against the schema ``conn`` sees, and that every query is bound."""
    chosen = list(bindings)
    catalog = _Catalog(conn)
    problems: list[Problem] = []
    for binding in chosen:
        problems.extend(_check_binding(binding, catalog))
    bound = {binding.name for binding in chosen}
    for query in queries if queries is not None else registry():
        refused = replica_route_problem(query)
        if refused:
            problems.append(Problem(query.location, query.name, refused))
    for query in queries if queries is not None else registry():
        if query.name not in bound:
            problems.append(Problem(query.location, query.name, "no function binds it"))
    problems.extend(tenancy_problems(conn))
    problems.extend(unscoped_query_problems(conn, [binding.query for binding in chosen]))
    return problems


_WRITES_OR_LOCKS = re.compile(
    r"\b(?P<verb>insert|update|delete|merge|truncate|copy|nextval|setval|set_config)\b"
    r"|\bfor\s+(?:no\s+key\s+update|update|key\s+share|share)\b",
    re.IGNORECASE,
)
_WRITING_KINDS = (Kind.EXEC, Kind.RETURNING, Kind.COPY)


def replica_route_problem(query: NamedQuery) -> str | None:
    """Why ``query`` may not run on a replica although its header routes it there; None if fine.

    A standby refuses writes and row locks (the caller would get an error
    where the primary would have served it), and a write's result must come
    from the primary. Read from the SQL's code, never its literals or
    comments: a writing statement (``INSERT`` ... ``MERGE``, also inside a
    CTE), a locking clause (``FOR UPDATE``, ``FOR SHARE``, ...), a sequence or
    setting change, or a writing result kind. A function that writes inside
    its body is not seen (the standby refuses it when it runs).
    """
    if query.route != "replica":
        return None
    if query.kind in _WRITING_KINDS:
        return f"is routed to a replica but is :{query.kind.value}, a write"
    found = _WRITES_OR_LOCKS.search(code_only(query.source))
    if found:
        what = " ".join(found.group(0).upper().split())
        does = "locks rows" if what.startswith("FOR") else "writes"
        return (
            f"is routed to a replica but {does} ({what}), which only the primary may do: "
            "remove '-- route: replica'"
        )
    return None


_TENANT_OWNED = """
SELECT
    c.oid::regclass::text,
    c.relrowsecurity,
    c.relforcerowsecurity,
    array(
        SELECT p.polcmd::text FROM pg_policy AS p WHERE p.polrelid = c.oid ORDER BY 1
    )
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
WHERE
    c.relkind IN ('r', 'p')
    AND n.nspname NOT IN ('pg_catalog', 'information_schema')
    AND n.nspname NOT LIKE 'pg\\_%'
    AND NOT c.relispartition
ORDER BY 1
"""

_VIEWS_OVER_TENANT_TABLES = """
SELECT DISTINCT v.oid::regclass::text, t.oid::regclass::text
FROM pg_class AS v
JOIN pg_rewrite AS r ON r.ev_class = v.oid
JOIN pg_depend AS d ON d.objid = r.oid AND d.classid = 'pg_rewrite'::regclass
JOIN pg_class AS t ON t.oid = d.refobjid AND t.oid <> v.oid
JOIN pg_attribute AS a ON a.attrelid = t.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
WHERE
    v.relkind IN ('v', 'm')
    AND (v.relkind = 'm' OR NOT coalesce(v.reloptions, '{}') @> '{security_invoker=true}')
ORDER BY 1, 2
"""

_VERBS = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE"}
"""pg_policy.polcmd: the verb a policy covers (``*`` covers all four)."""


def tenancy_problems(conn: psycopg.Connection[Any]) -> list[Problem]:
    """Tenant-owned tables the database does not fully guard, and views that bypass them.

    A table is tenant-owned when it has a ``tenant_id`` column. Each must
    have row level security enabled and forced (else its owner reads every
    tenant's rows) and a policy for each of SELECT, INSERT, UPDATE and
    DELETE (a verb without one is refused silently: no rows, or an error
    that names no tenant). A view or materialized view reading one runs with
    its owner's rights, bypassing the policies, unless it is a view with
    ``security_invoker``; a materialized view always does. The toolkit's own
    tables and those ``toolkit_make_tenant_owned()`` made pass.
    """
    problems: list[Problem] = []
    for table, enabled, forced, commands in conn.execute(_TENANT_OWNED).fetchall():
        where = f"table {table}"
        if not enabled:
            problems.append(
                Problem(where, "tenancy", "has tenant_id but row level security is off")
            )
        elif not forced:
            problems.append(
                Problem(where, "tenancy", "row level security is not FORCEd: its owner bypasses it")
            )
        covered = set(_VERBS.values()) if "*" in commands else {_VERBS[c] for c in commands}
        missing = [verb for verb in _VERBS.values() if verb not in covered]
        if missing:
            problems.append(Problem(where, "tenancy", f"no policy for {', '.join(missing)}"))
    for view, table in conn.execute(_VIEWS_OVER_TENANT_TABLES).fetchall():
        problems.append(
            Problem(
                f"view {view}",
                "tenancy",
                f"reads tenant-owned {table} with its owner's rights, bypassing the "
                "policies: ALTER VIEW ... SET (security_invoker = true)",
            )
        )
    return problems


_TENANT_SCOPED = re.compile(r"\btoolkit_tenant(?:_or_default)?\s*\(", re.IGNORECASE)
"""A call of either tenant function in a query's code: the query names its tenant."""

_TENANT_TABLES = """
SELECT
    c.oid,
    coalesce(pg_partition_root(c.oid), c.oid)::regclass::text,
    EXISTS (
        SELECT FROM pg_attribute AS a
        WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
    ),
    array(
        SELECT DISTINCT d.refobjid
        FROM pg_policy AS p
        JOIN pg_depend AS d
            ON d.classid = 'pg_policy'::regclass AND d.objid = p.oid
            AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> p.polrelid
        WHERE p.polrelid = c.oid
    )
FROM unnest(%s::text[], %s::text[]) AS r (schema_name, relation_name)
JOIN pg_namespace AS n ON n.nspname = r.schema_name
JOIN pg_class AS c ON c.relnamespace = n.oid AND c.relname = r.relation_name
"""
"""For each relation a plan reads: its oid, the name of the table it belongs to (a
partition's root), whether it has tenant_id, and the tables its policies read (users'
read memberships). By name, never a regclass cast: that needs USAGE on the schema."""

_BOUND_BY_POLICIES = """
SELECT NOT (r.rolsuper OR r.rolbypassrls) FROM pg_roles AS r WHERE r.rolname = current_user
"""


def _planned_relations(plan: Any) -> set[tuple[str, str]]:
    """The relations an EXPLAIN (FORMAT JSON, VERBOSE) plan scans: (schema, name).

    A ModifyTable node's own relation is left out: an INSERT's target is
    written, not read (its tenant comes from the column's default, and the
    INSERT policy checks it); an UPDATE's or DELETE's is also a scan below it.
    """
    found: set[tuple[str, str]] = set()
    stack = [plan]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            name, schema = node.get("Relation Name"), node.get("Schema")
            if name and schema and node.get("Node Type") != "ModifyTable":
                found.add((schema, name))
            stack.extend(value for value in node.values() if isinstance(value, (list, dict)))
    return found


def _plan(conn: psycopg.Connection[Any], query: NamedQuery) -> set[tuple[str, str]] | None:
    """The relations ``query``'s generic plan reads, or None if it cannot be planned.

    The query is prepared (SQL PREPARE) and explained with NULL for every
    parameter under ``plan_cache_mode = force_generic_plan``, so no parameter
    value folds a table out of the plan. Nothing is executed. It all happens
    in one transaction (the caller's, else one begun and rolled back here, so
    a transaction-mode pooler keeps it on one server connection), inside a
    savepoint that undoes the setting and any error; the statement is
    deallocated before the transaction ends.
    """
    pgconn = conn.pgconn
    sort = query.sort_columns[0].column if query.sortable else None
    native, _ = _native(query.statement(sort).as_string(conn))
    own_transaction = pgconn.transaction_status == TransactionStatus.IDLE
    if own_transaction:
        pgconn.exec_(b"BEGIN")
    pgconn.exec_(b"SAVEPOINT toolkit_verify_tenancy")
    prepared = pgconn.exec_(f"PREPARE toolkit_verify_tenancy AS {native}".encode())
    try:
        if prepared.status != ExecStatus.COMMAND_OK:
            return None
        counted = pgconn.exec_(
            b"SELECT pg_catalog.cardinality(parameter_types) FROM pg_catalog.pg_prepared_statements"
            b" WHERE name = 'toolkit_verify_tenancy'"
        )
        nparams = int(counted.get_value(0, 0) or b"0")
        arguments = f"({', '.join(['NULL'] * nparams)})" if nparams else ""
        pgconn.exec_(b"SET LOCAL plan_cache_mode = force_generic_plan")
        explained = pgconn.exec_(
            f"EXPLAIN (VERBOSE, FORMAT JSON) EXECUTE toolkit_verify_tenancy{arguments}".encode()
        )
        if explained.status != ExecStatus.TUPLES_OK:
            return None
        return _planned_relations(json.loads((explained.get_value(0, 0) or b"[]").decode()))
    finally:
        pgconn.exec_(b"ROLLBACK TO SAVEPOINT toolkit_verify_tenancy")
        pgconn.exec_(b"RELEASE SAVEPOINT toolkit_verify_tenancy")
        if prepared.status == ExecStatus.COMMAND_OK:
            pgconn.exec_(b"DEALLOCATE toolkit_verify_tenancy")
        if own_transaction:
            pgconn.exec_(b"ROLLBACK")


def unscoped_query_problems(
    conn: psycopg.Connection[Any], queries: Iterable[NamedQuery]
) -> list[Problem]:
    """Queries that read a tenant-owned table without naming their tenant.

    A query names its tenant when its code calls ``toolkit_tenant()`` or
    ``toolkit_tenant_or_default()`` (as in ``WHERE tenant_id = (SELECT
    toolkit_tenant_or_default())``); one that is deliberately cross-tenant (a
    sweep, the outbox relay: run by a role the policies do not bind) says so
    with a ``-- tenant: all`` header line. Any other query is planned (never
    executed) and reported if its plan reads a table with a ``tenant_id``
    column (or a partition of one), the same tables :func:`tenancy_problems`
    judges: it relies on the policies alone, so it reads every tenant's rows
    wherever they do not bind (the table's owner without FORCE, a superuser,
    BYPASSRLS). Limits: an INSERT's target is not read, so a plain INSERT
    passes (the column default names the tenant, the INSERT policy checks
    it); tables read inside a function's body are not seen; and when the
    connection's role is bound by the policies, a tenant-owned table that
    only a read table's policy reads (users' read memberships) is left out,
    so such a table named by the query itself is left out too. COPY
    statements are not planned.
    """
    problems: list[Problem] = []
    bound_row = conn.execute(_BOUND_BY_POLICIES).fetchone()
    bound = bool(bound_row and bound_row[0])
    seen: set[str] = set()
    for query in queries:
        if query.name in seen or query.kind is Kind.COPY or query.all_tenants:
            continue
        seen.add(query.name)
        if _TENANT_SCOPED.search(code_only(query.source)):
            continue
        relations = _plan(conn, query)
        if not relations:  # None: it does not prepare, which the binding check reports
            continue
        schemas, names = zip(*sorted(relations), strict=True)
        rows = conn.execute(_TENANT_TABLES, [list(schemas), list(names)]).fetchall()
        read_by_policies = {oid for *_, refs in rows for oid in refs} if bound else set()
        owned = sorted(
            {table for oid, table, tenant, _ in rows if tenant and oid not in read_by_policies}
        )
        if owned:
            problems.append(
                Problem(
                    query.location,
                    query.name,
                    f"reads tenant-owned {', '.join(owned)} but names no tenant: filter by "
                    "tenant_id = (SELECT toolkit_tenant_or_default()), or declare a "
                    "deliberately cross-tenant query with '-- tenant: all'",
                )
            )
    return problems
