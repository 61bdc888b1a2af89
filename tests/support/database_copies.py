"""One fresh copy of the migrated template database per test, made cheaply.

``CREATE DATABASE ... TEMPLATE`` copies every block of the template (about
9 MB, mostly system catalogs) and ``DROP DATABASE`` checkpoints: together
about 0.35 s of the server's time per test. Most tests only write rows, so a
used copy is usually brought back to the template's exact state instead,
under a new name, and handed to a later test:

1. its sessions are ended and it is renamed, so nothing left running in the
   test that used it (a leaked connection, a thread reconnecting by name)
   can ever reach it again;
2. every catalog of the database (and its row in the shared catalogs) must
   hash exactly as a fresh copy's did: a test that changed the schema, a
   privilege, a role's setting, a comment, a large object... fails this and
   its copy is dropped, as before;
3. every table whose storage, planner statistics or indexes differ from a
   fresh copy's is truncated (triggers off, as a fresh copy never ran them),
   the template's own rows are put back with COPY, the sequences are set
   back, planner statistics and activity counters are cleared;
4. then everything is measured again (the storage size, pages, tuples and
   statistics of every relation, every sequence, the template's rows): the
   copy is handed out only if it is the same as a fresh copy in all of
   them; otherwise it is dropped.

So a test still starts from a database indistinguishable from a fresh copy,
by every measure above, and no test's rows reach another test.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

DROP_BATCH = 40
"""Copies that failed to come back (about 9 MB each) kept before they are dropped
together: PostgreSQL 15 checkpoints on every DROP DATABASE, and back-to-back
drops share the work of one checkpoint."""

FIRST_USER_OID = 16384
"""FirstNormalObjectId: every object with a smaller oid came with initdb."""

# Catalogs whose rows change without anyone changing the database's meaning
# (planner statistics, large object pages) are measured separately; pg_class
# is hashed without its storage and statistics columns, measured in _RELATIONS.
_NOT_HASHED = ("pg_class", "pg_statistic", "pg_statistic_ext_data", "pg_largeobject")
_CLASS_COLUMNS = (
    "oid, relname, relnamespace, reltype, reloftype, relowner, relam, reltablespace, "
    "reltoastrelid, relhasindex, relisshared, relpersistence, relkind, relnatts, relchecks, "
    "relhasrules, relhastriggers, relhassubclass, relrowsecurity, relforcerowsecurity, "
    "relispopulated, relreplident, relispartition, relrewrite, reloptions, relacl, relpartbound"
)
_LOCAL_CATALOGS = """
SELECT c.relname FROM pg_catalog.pg_class AS c
WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relkind = 'r' AND NOT c.relisshared
ORDER BY c.relname
"""
# The database's own rows in the shared catalogs (not its name, which changes,
# nor its oid and transaction horizons, which differ between copies).
_SHARED_ROWS = """
SELECT 'pg_database', (d.datdba, d.encoding, d.datlocprovider, d.datistemplate,
    d.datallowconn, d.datconnlimit, d.dattablespace, d.datcollate, d.datctype,
    d.daticulocale, d.datcollversion, d.datacl)::text
FROM pg_catalog.pg_database AS d WHERE d.datname = pg_catalog.current_database()
UNION ALL
SELECT 'pg_db_role_setting', (s.setrole, s.setconfig)::text
FROM pg_catalog.pg_db_role_setting AS s, pg_catalog.pg_database AS d
WHERE d.datname = pg_catalog.current_database() AND s.setdatabase = d.oid
UNION ALL
SELECT 'pg_shdepend', (s.classid, s.objid, s.objsubid, s.refclassid, s.refobjid, s.deptype)::text
FROM pg_catalog.pg_shdepend AS s, pg_catalog.pg_database AS d
WHERE d.datname = pg_catalog.current_database() AND s.dbid = d.oid
UNION ALL
SELECT 'pg_shdescription', (s.classoid, s.description)::text
FROM pg_catalog.pg_shdescription AS s, pg_catalog.pg_database AS d
WHERE d.datname = pg_catalog.current_database() AND s.objoid = d.oid
UNION ALL
SELECT 'pg_shseclabel', (s.classoid, s.provider, s.label)::text
FROM pg_catalog.pg_shseclabel AS s, pg_catalog.pg_database AS d
WHERE d.datname = pg_catalog.current_database() AND s.objoid = d.oid
UNION ALL
SELECT 'pg_subscription', s.oid::text
FROM pg_catalog.pg_subscription AS s, pg_catalog.pg_database AS d
WHERE d.datname = pg_catalog.current_database() AND s.subdbid = d.oid
UNION ALL
SELECT 'pg_replication_slots', s.slot_name::text
FROM pg_catalog.pg_replication_slots AS s
WHERE s.database = pg_catalog.current_database()
"""
# Every relation a test could have written to, with what a fresh copy's planner
# would see of it: its storage size, its pages, tuples and all-visible pages as
# pg_class records them, and its rows in pg_statistic.
_RELATIONS = """
SELECT c.oid::int8, c.relkind::text,
    CASE WHEN c.relkind IN ('r', 'i', 't', 'm', 'S') THEN pg_catalog.pg_relation_size(c.oid) END,
    c.relpages, c.reltuples::float8, c.relallvisible,
    (SELECT count(*) FROM pg_catalog.pg_statistic AS s WHERE s.starelid = c.oid),
    (SELECT count(*) FROM pg_catalog.pg_statistic_ext AS e
     JOIN pg_catalog.pg_statistic_ext_data AS x ON x.stxoid = e.oid WHERE e.stxrelid = c.oid)
FROM pg_catalog.pg_class AS c
WHERE c.oid >= %s AND c.relkind IN ('r', 'i', 't', 'm', 'p', 'I', 'S')
ORDER BY c.oid
"""
_TABLES = """
SELECT c.oid::int8, pg_catalog.format('%%I.%%I', n.nspname, c.relname),
    c.reltoastrelid::int8,
    coalesce(array_agg(i.indexrelid::int8) FILTER (WHERE i.indexrelid IS NOT NULL), '{}'),
    coalesce((SELECT array_agg(pg_catalog.quote_ident(a.attname) ORDER BY a.attnum)
              FROM pg_catalog.pg_attribute AS a
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                AND a.attgenerated = ''), '{}')
FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_index AS i ON i.indrelid = c.oid
WHERE c.oid >= %s AND c.relkind = 'r' AND c.relpersistence <> 't'
GROUP BY c.oid, n.nspname, c.relname, c.reltoastrelid
ORDER BY c.oid
"""
_TOAST_INDEXES = """
SELECT c.reltoastrelid::int8, i.indexrelid::int8
FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_index AS i ON i.indrelid = c.reltoastrelid
WHERE c.oid >= %s AND c.reltoastrelid <> 0
"""
_FOREIGN_KEYS = """
SELECT DISTINCT pg_catalog.format('%%I.%%I', fn.nspname, f.relname),
    pg_catalog.format('%%I.%%I', n.nspname, c.relname)
FROM pg_catalog.pg_constraint AS k
JOIN pg_catalog.pg_class AS c ON c.oid = k.conrelid
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_class AS f ON f.oid = k.confrelid
JOIN pg_catalog.pg_namespace AS fn ON fn.oid = f.relnamespace
WHERE k.contype = 'f' AND k.conrelid >= %s
"""
_PARTITIONS = """
SELECT pg_catalog.format('%%I.%%I', n.nspname, c.relname),
    array_agg(pg_catalog.format('%%I.%%I', ln.nspname, l.relname) ORDER BY l.oid)
FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
CROSS JOIN LATERAL pg_catalog.pg_partition_tree(c.oid) AS t
JOIN pg_catalog.pg_class AS l ON l.oid = t.relid
JOIN pg_catalog.pg_namespace AS ln ON ln.oid = l.relnamespace
WHERE c.oid >= %s AND c.relkind = 'p' AND t.isleaf
GROUP BY n.nspname, c.relname
"""
_SEQUENCES = """
SELECT pg_catalog.format('%%I.%%I', n.nspname, c.relname)
FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.oid >= %s AND c.relkind = 'S' AND c.relpersistence <> 't' ORDER BY c.oid
"""


@dataclass(frozen=True)
class _Table:
    oid: int
    name: str
    columns: tuple[str, ...]
    storage: tuple[int, ...]
    """The table's own oid, its indexes', its TOAST table's and that one's index."""


@dataclass
class FreshState:
    """Everything measured of a fresh copy, against which a used one is judged."""

    catalogs: dict[str, tuple[int, int]]
    relations: dict[int, tuple[Any, ...]]
    sequences: dict[str, tuple[int, bool]]
    seed_rows: dict[str, tuple[int, int]]
    seeds: dict[str, bytes]
    referenced_by: dict[str, list[str]]
    partitions: dict[str, list[str]]
    tables: list[_Table] = field(repr=False)
    catalog_query: sql.Composable = field(repr=False)
    sequence_query: sql.Composable | None = field(repr=False)
    seed_query: sql.Composable | None = field(repr=False)

    @classmethod
    def measure(cls, conn: psycopg.Connection[Any]) -> FreshState:
        """Measure a copy nobody has used: called once per session."""
        catalogs = [row[0] for row in conn.execute(_LOCAL_CATALOGS)]
        # pg_class by its content (vacuum and CREATE INDEX update it in place);
        # every other catalog by where and by which transaction each row was
        # written: any change to a row writes a new version of it, and one
        # removed changes the count. A copy's rows keep the template's.
        catalog_query = sql.SQL(" UNION ALL ").join(
            [
                sql.SQL(
                    "SELECT 'pg_class', count(*), "
                    "coalesce(sum(pg_catalog.hashtextextended(({})::text, 0)), 0) "
                    "FROM pg_catalog.pg_class"
                ).format(sql.SQL(_CLASS_COLUMNS))
            ]
            + [
                sql.SQL(
                    "SELECT {}, count(*), coalesce(sum(pg_catalog.hashtextextended("
                    "xmin::text || ctid::text, 0)), 0) FROM pg_catalog.{}"
                ).format(sql.Literal(name), sql.Identifier(name))
                for name in catalogs
                if name not in _NOT_HASHED
            ]
            + [
                sql.SQL(
                    "SELECT 'shared:' || k, count(*), "
                    "coalesce(sum(pg_catalog.hashtextextended(v, 0)), 0) "
                    "FROM ({}) AS s (k, v) GROUP BY k"
                ).format(sql.SQL(_SHARED_ROWS))
            ]
        )
        toast_indexes: dict[int, list[int]] = {}
        for toast, index in conn.execute(_TOAST_INDEXES, (FIRST_USER_OID,)):
            toast_indexes.setdefault(toast, []).append(index)
        tables = [
            _Table(
                oid=oid,
                name=name,
                columns=tuple(columns),
                storage=(oid, *indexes, *([toast, *toast_indexes.get(toast, [])] if toast else [])),
            )
            for oid, name, toast, indexes, columns in conn.execute(_TABLES, (FIRST_USER_OID,))
        ]
        sequences = [row[0] for row in conn.execute(_SEQUENCES, (FIRST_USER_OID,))]
        sequence_query = (
            sql.SQL(" UNION ALL ").join(
                sql.SQL("SELECT {}, last_value, is_called FROM {}").format(
                    sql.Literal(name), sql.SQL(name)
                )
                for name in sequences
            )
            if sequences
            else None
        )
        # The tables the template itself holds rows in (the migration history,
        # the default tenant...): put back as they were after every truncate.
        # ... and the ones whose storage is not empty (rows written and removed
        # by a migration): a row written into their pages changes no size, so
        # their rows are compared instead.
        sizes = dict(
            conn.execute(
                "SELECT c.oid::int8, pg_catalog.pg_relation_size(c.oid)"
                " FROM pg_catalog.pg_class AS c"
                " WHERE c.oid >= %s AND c.relkind = 'r'",
                (FIRST_USER_OID,),
            ).fetchall()
        )
        seeded = [
            table
            for table in tables
            if sizes[table.oid]
            or conn.execute(
                sql.SQL("SELECT EXISTS (SELECT FROM {})").format(sql.SQL(table.name))
            ).fetchone()[0]  # type: ignore[index]
        ]
        seed_query = (
            sql.SQL(" UNION ALL ").join(
                sql.SQL(
                    "SELECT {}, count(*), "
                    "coalesce(sum(pg_catalog.hashtextextended(t::text, 0)), 0) FROM {} AS t"
                ).format(sql.Literal(table.name), sql.SQL(table.name))
                for table in seeded
            )
            if seeded
            else None
        )
        seeds = {}
        for table in seeded:
            copy_out = sql.SQL("COPY {} ({}) TO STDOUT (FORMAT binary)").format(
                sql.SQL(table.name), sql.SQL(", ").join(map(sql.SQL, table.columns))
            )
            with conn.cursor().copy(copy_out) as copy:
                seeds[table.name] = b"".join(bytes(block) for block in copy)
        referenced_by: dict[str, list[str]] = {}
        for referenced, referencing in conn.execute(_FOREIGN_KEYS, (FIRST_USER_OID,)):
            referenced_by.setdefault(referenced, []).append(referencing)
        partitions = {
            parent: list(leaves) for parent, leaves in conn.execute(_PARTITIONS, (FIRST_USER_OID,))
        }
        state = cls(
            referenced_by=referenced_by,
            partitions=partitions,
            catalogs={},
            relations={},
            sequences={},
            seed_rows={},
            seeds=seeds,
            tables=tables,
            catalog_query=catalog_query,
            sequence_query=sequence_query,
            seed_query=seed_query,
        )
        state.catalogs = state.read_catalogs(conn)
        state.relations, state.sequences, state.seed_rows = state.read_contents(conn)
        conn.rollback()
        return state

    def read_catalogs(self, conn: psycopg.Connection[Any]) -> dict[str, tuple[int, int]]:
        return {name: (count, digest) for name, count, digest in conn.execute(self.catalog_query)}

    def read_contents(
        self, conn: psycopg.Connection[Any]
    ) -> tuple[dict[int, tuple[Any, ...]], dict[str, tuple[int, bool]], dict[str, tuple[int, int]]]:
        relations = {row[0]: tuple(row[1:]) for row in conn.execute(_RELATIONS, (FIRST_USER_OID,))}
        sequences = (
            {name: (value, called) for name, value, called in conn.execute(self.sequence_query)}
            if self.sequence_query is not None
            else {}
        )
        seed_rows = (
            {name: (count, digest) for name, count, digest in conn.execute(self.seed_query)}
            if self.seed_query is not None
            else {}
        )
        return relations, sequences, seed_rows

    def restore(self, conn: psycopg.Connection[Any]) -> str | None:
        """Bring a used copy back to this state: None once it measures the same,
        else why it cannot be (then it must be dropped)."""
        if self.read_catalogs(conn) != self.catalogs:
            return "its catalogs changed"
        relations, sequences, seed_rows = self.read_contents(conn)
        # Dirty: a table whose rows, or whose storage's size, differ from a fresh
        # copy's. One that differs only in what ANALYZE or VACUUM counted has
        # its counts set back below, not its rows truncated.
        dirty = {
            table.name
            for table in self.tables
            if seed_rows.get(table.name) != self.seed_rows.get(table.name)
            or any(relations.get(oid, ())[:2] != self.relations[oid][:2] for oid in table.storage)
        }
        # A table referencing a dirty one is truncated with it (TRUNCATE needs
        # both), as CASCADE would, but known here; a partitioned table with
        # every one of its partitions.
        pending = list(dirty)
        while pending:
            for referencing in self.referenced_by.get(pending.pop(), ()):
                if referencing not in dirty:
                    dirty.add(referencing)
                    pending.append(referencing)
        leaves = {leaf for name in dirty for leaf in self.partitions.get(name, (name,))}
        conn.execute("SET LOCAL session_replication_role = replica")
        truncated = [table for table in self.tables if table.name in leaves]
        if truncated:
            conn.execute(
                sql.SQL("TRUNCATE {}").format(
                    sql.SQL(", ").join(sql.SQL(name) for name in sorted(dirty | leaves))
                )
            )
            for table in truncated:
                if table.name in self.seeds:
                    copy_in = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
                        sql.SQL(table.name), sql.SQL(", ").join(map(sql.SQL, table.columns))
                    )
                    with conn.cursor().copy(copy_in) as copy:
                        copy.write(self.seeds[table.name])
        # What the planner reads of every relation, as a fresh copy has it:
        # TRUNCATE leaves relations "never vacuumed" (-1 tuples) where CREATE
        # INDEX counted a fresh copy's indexes, and ANALYZE counts them all.
        fresh = list(self.relations.items())
        conn.execute(
            "UPDATE pg_catalog.pg_class AS c"
            " SET relpages = f.pages, reltuples = f.tuples, relallvisible = f.visible"
            " FROM unnest(%s::oid[], %s::int4[], %s::float4[], %s::int4[])"
            " AS f (oid, pages, tuples, visible)"
            " WHERE c.oid = f.oid AND (c.relpages, c.reltuples, c.relallvisible)"
            " IS DISTINCT FROM (f.pages, f.tuples, f.visible)",
            (
                [oid for oid, _ in fresh],
                [counts[2] for _, counts in fresh],
                [counts[3] for _, counts in fresh],
                [counts[4] for _, counts in fresh],
            ),
        )
        for name, (value, called) in self.sequences.items():
            if sequences.get(name) != (value, called):
                conn.execute("SELECT pg_catalog.setval(%s, %s, %s)", (name, value, called))
        conn.execute("DELETE FROM pg_catalog.pg_statistic WHERE starelid >= %s", (FIRST_USER_OID,))
        conn.execute("SELECT pg_catalog.pg_stat_reset()")
        conn.commit()
        if self.read_contents(conn) != (self.relations, self.sequences, self.seed_rows):
            return "it still differs after the reset"
        return None


class DatabaseCopies:
    """Copies of a migrated template, named ``<template>_<n>``, one per test.

    One thread of its own makes the next copy while a test runs, from a copy a
    finished test gave back when that one can be brought back to a fresh copy's
    state (see the module's docstring), else with ``CREATE DATABASE ... TEMPLATE``;
    copies that cannot come back are dropped in batches. ``reuse=False`` makes
    and drops every copy, as before.
    """

    def __init__(
        self,
        template: str,
        server_url: Callable[[str], str],
        *,
        reuse: bool = True,
        tag: str = "",
    ) -> None:
        self._template = template
        self._tag = tag
        self._server_url = server_url
        self._reuse = reuse
        self._numbers = itertools.count()
        self._admin = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-databases")
        self._dropper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-database-drops")
        self._next: Future[str] | None = None
        self._returned: deque[str] = deque()
        self._unusable: list[str] = []
        self._fresh: FreshState | None = None
        self.created = 0
        self.reused = 0
        self.dropped = 0
        self.not_reused: dict[str, int] = {}
        """Why used copies were dropped rather than brought back, with how many."""

    def _run(self, statement: sql.Composable, params: Sequence[Any] = ()) -> None:
        with psycopg.connect(self._server_url("postgres"), autocommit=True) as admin:
            admin.execute(statement, params)

    def _new_name(self) -> str:
        return f"{self._template}_{self._tag}{next(self._numbers)}"

    def _create(self) -> str:
        name = self._new_name()
        self._run(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(self._template)
            )
        )
        self.created += 1
        if self._reuse and self._fresh is None:
            with psycopg.connect(self._server_url(name)) as conn:
                self._fresh = FreshState.measure(conn)
        return name

    def _recycle(self, used: str) -> str | None:
        """``used`` under a new name, in a fresh copy's state; None if it cannot be."""
        name = self._new_name()
        try:
            # Renaming waits (5 s at most) for the ended sessions to leave and
            # fails if any is still there: then the copy is dropped.
            self._run(
                sql.SQL(
                    "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_catalog.pg_backend_pid()"
                ),
                (used,),
            )
            self._run(
                sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(used), sql.Identifier(name)
                )
            )
        except psycopg.Error:
            why_not = "a session would not leave it"
            self.not_reused[why_not] = self.not_reused.get(why_not, 0) + 1
            self._unusable.append(used)
            return None
        assert self._fresh is not None
        try:
            with psycopg.connect(self._server_url(name)) as conn:
                why_not = self._fresh.restore(conn)
        except psycopg.Error as exc:
            why_not = f"the reset failed ({type(exc).__name__})"
        if why_not is not None:
            self.not_reused[why_not] = self.not_reused.get(why_not, 0) + 1
            self._unusable.append(name)
            return None
        self.reused += 1
        return name

    def _make_next(self) -> str:
        while self._reuse and self._fresh is not None and self._returned:
            name = self._recycle(self._returned.popleft())
            if name is not None:
                self._drop_unusable(DROP_BATCH)
                return name
        name = self._create()
        self._drop_unusable(DROP_BATCH)
        return name

    def _drop_unusable(self, at_least: int) -> None:
        # On a thread of their own: a batch of drops, a checkpoint each, takes
        # minutes on a loaded machine, and no test waits behind it.
        if len(self._unusable) >= at_least:
            batch, self._unusable = self._unusable, []
            self._dropper.submit(self._drop_all, batch)

    def _drop_all(self, names: list[str]) -> None:
        for name in names:
            # FORCE: a test that leaked a connection must not keep its database alive.
            self._run(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            self.dropped += 1

    def take(self) -> str:
        """A fresh copy for one test; starts making the one after it."""
        ready = self._next or self._admin.submit(self._make_next)
        self._next = self._admin.submit(self._make_next)
        return ready.result()

    def give_back(self, name: str) -> None:
        """A test is done with its copy: the thread brings it back or drops it."""
        if self._reuse:
            self._returned.append(name)
        else:
            self._admin.submit(self._unusable.append, name)
            self._admin.submit(self._drop_unusable, DROP_BATCH)

    def close(self) -> None:
        """Drop every copy, wait for every drop."""
        if self._next is not None:
            with contextlib.suppress(psycopg.Error):
                self._returned.append(self._next.result())

        def drop_all() -> None:
            self._unusable.extend(self._returned)
            self._returned.clear()
            self._drop_unusable(0)

        self._admin.submit(drop_all)
        self._admin.shutdown(wait=True)
        self._dropper.shutdown(wait=True)
