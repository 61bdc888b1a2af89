"""A test's database is as fresh as a new copy of the template, even when it is a
used copy brought back (tests/support/database_copies.py): nothing one test
writes reaches another."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.conftest import server_url
from tests.support.database_copies import DatabaseCopies

_TABLE_ROWS = """
SELECT pg_catalog.format('%I.%I', n.nspname, c.relname)
FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname IN ('public', 'toolkit_partitions')
ORDER BY 1
"""


def observable_state(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """What a test could see of its database, beyond its catalogs' oids."""
    state: dict[str, Any] = {}
    for (table,) in conn.execute(_TABLE_ROWS).fetchall():
        state[table] = conn.execute(
            sql.SQL("SELECT count(*), coalesce(sum(hashtext(t::text)), 0) FROM {} AS t").format(
                sql.SQL(table)
            )
        ).fetchone()
    state["outbox_seq_seq"] = conn.execute(
        "SELECT last_value, is_called FROM outbox_seq_seq"
    ).fetchone()
    state["storage and planner counts"] = conn.execute(
        "SELECT array_agg((relname, pg_relation_size(oid), relpages, reltuples, relallvisible)"
        " ORDER BY relname) FROM pg_class"
        " WHERE relnamespace IN ('public'::regnamespace, 'toolkit_partitions'::regnamespace)"
        " AND relkind IN ('r', 'i', 'S')"
    ).fetchone()
    state["statistics"] = conn.execute(
        "SELECT count(*) FROM pg_statistic WHERE starelid >= 16384"
    ).fetchone()
    state["large objects"] = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
    state["tables"] = conn.execute(
        "SELECT array_agg(relname ORDER BY relname) FROM pg_class"
        " WHERE relnamespace = 'public'::regnamespace"
    ).fetchone()
    state["setting"] = conn.execute(
        "SELECT current_setting('toolkit_guard.marker', true)"
    ).fetchone()
    state["comment"] = conn.execute("SELECT obj_description('users'::regclass)").fetchone()
    state["public acl"] = conn.execute(
        "SELECT nspacl::text FROM pg_namespace WHERE nspname = 'public'"
    ).fetchone()
    return state


def write_rows(url: str) -> None:
    """What most tests do: rows in plain and seeded tables, a sequence, statistics."""
    with psycopg.connect(url, autocommit=True) as conn:
        (user_id,) = conn.execute(
            "SELECT id FROM create_user('guard@example.com', 'Guard', 'member', true, NULL)"
        ).fetchone()  # type: ignore[misc]
        conn.execute(
            "INSERT INTO agents (owner_id, name, type) VALUES (%s, 'guard', 'test')", (user_id,)
        )
        conn.execute("INSERT INTO tenants (name) VALUES ('guard tenant')")
        conn.execute(
            "INSERT INTO outbox (queue, message_type, body) VALUES ('guard', 'guard', '{}')"
        )
        conn.execute("UPDATE toolkit_partitions.policy SET premake = premake + 1")
        conn.execute("SELECT nextval('outbox_seq_seq')")
        conn.execute("ANALYZE")


def change_schema(url: str) -> None:
    """What some tests do: a table, a comment, a privilege, a setting, a large object."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE guard_leak (id int)")
        conn.execute("COMMENT ON TABLE users IS 'guard'")
        conn.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET toolkit_guard.marker = 'leaked'").format(
                sql.Identifier(conn.info.dbname)
            )
        )
        conn.execute("SELECT lo_create(0)")


def oid_of(name: str) -> int:
    with psycopg.connect(server_url()) as admin:
        row = admin.execute("SELECT oid FROM pg_database WHERE datname = %s", (name,)).fetchone()
    assert row is not None, name
    return int(row[0])


@pytest.fixture
def copies(pg_server: Any) -> Iterator[DatabaseCopies]:
    """Copies of the session's template of their own, so the order is known."""
    made = DatabaseCopies(pg_server.template_dbname, server_url, tag="guard")
    yield made
    made.close()


def later_copies(copies: DatabaseCopies, count: int) -> Iterator[tuple[str, int]]:
    """The next ``count`` copies with their oids (an oid survives a rename), each
    given back once looked at."""
    for _ in range(count):
        name = copies.take()
        try:
            yield name, oid_of(name)
        finally:
            copies.give_back(name)


def test_a_used_copy_comes_back_as_fresh_as_a_new_one(copies: DatabaseCopies) -> None:
    first = copies.take()  # the first one is always made by CREATE DATABASE
    first_oid = oid_of(first)
    with psycopg.connect(server_url(first)) as conn:
        fresh = observable_state(conn)
    write_rows(server_url(first))
    # A connection the test leaked, inside a transaction: it must not stop the reuse.
    leaked = psycopg.connect(server_url(first))
    leaked.execute("INSERT INTO tenants (name) VALUES ('left open')")
    copies.give_back(first)

    brought_back = None
    for name, oid in later_copies(copies, 3):
        with psycopg.connect(server_url(name)) as conn:
            assert observable_state(conn) == fresh
        if oid == first_oid:
            brought_back = name
    assert brought_back is not None and brought_back != first, copies.not_reused
    # The first name leads nowhere: what still holds it cannot write into a later test.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server_url(first), connect_timeout=3).close()
    with pytest.raises(psycopg.OperationalError):
        leaked.execute("SELECT 1")
    leaked.close()
    assert copies.reused >= 1 and not copies.not_reused


def test_a_copy_whose_schema_changed_is_dropped_not_reused(copies: DatabaseCopies) -> None:
    first = copies.take()
    first_oid = oid_of(first)
    write_rows(server_url(first))
    change_schema(server_url(first))
    copies.give_back(first)

    for name, oid in later_copies(copies, 3):
        assert oid != first_oid
        with psycopg.connect(server_url(name)) as conn:
            assert conn.execute("SELECT to_regclass('guard_leak')").fetchone() == (None,)
    assert copies.not_reused == {"its catalogs changed": 1}


@pytest.mark.parametrize("turn", range(4))
def test_no_rows_reach_the_next_test(turn: int, database_url: str) -> None:
    """Each turn finds an untouched database, then writes into it (in any order,
    the turns after the first two run on copies the earlier ones used)."""
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM agents").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
        assert conn.execute("SELECT name FROM tenants").fetchall() == [("default",)]
        assert conn.execute(
            "SELECT count(*) FROM pg_statistic WHERE starelid >= 16384"
        ).fetchone() == (0,)
        assert conn.execute("SELECT to_regclass('guard_leak')").fetchone() == (None,)
    write_rows(database_url)
    if turn == 3:
        change_schema(database_url)
