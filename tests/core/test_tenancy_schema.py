"""Tenancy in the schema (migration 0009): the database keeps tenants apart.

Every check runs raw SQL through psycopg (BEGIN, then
``set_config('toolkit.tenant_id', ..., true)``), as a LOGIN member of
toolkit_app, against every tenant-owned table: the tables are enumerated from
``pg_class`` (row level security on), so a table added later is checked too,
and fails until it is seeded here. Another tenant's rows are never shown,
changed or deleted; an insert naming another tenant, or referencing another
tenant's row through any foreign key, is refused; without a tenant every verb
raises TN001 (never an empty answer), for the application role and for a
non-superuser owner under FORCE alike. Then the plans (the tenant check is one
InitPlan, the indexes still serve), the per-tenant audit chains, the shared
users, the relay's role, and the conversion of an existing database and back.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb
from yoyo import get_backend, read_migrations

from tests.conftest import server_url
from tests.core.test_query_plans import SEED, empty_partitions, list_query_problems, plan_nodes
from toolkit.audit_anchors import verify, write_anchor
from toolkit.catalog import load_bindings
from toolkit.db.bind import One
from toolkit.db.migrations import _yoyo_url, migrate, rollback, status
from toolkit.db.registry import package_directory
from toolkit.errors import DatabaseError, NotFound
from toolkit.repositories import audit_events, users
from toolkit.storage import LocalStorage

DEFAULT = UUID(int=0)
TENANT_A = UUID("aaaaaaaa-0000-4000-8000-00000000000a")
TENANT_B = UUID("bbbbbbbb-0000-4000-8000-00000000000b")
APP_LOGIN = f"toolkit_tenancy_app_{os.getpid()}"
TENANT_REQUIRED = "TN001"

TENANT_OWNED = {
    "memberships",
    "agents",
    "workflows",
    "executions",
    "checkpoints",
    "sessions",
    "audit_events",
    "files",
    "outbox",
    "inbox",
    "lg_checkpoints",
    "lg_blobs",
    "lg_writes",
    "audit_retention_anchors",
    "audit_chain_heads",
}
"""What seed_tenant() writes rows into: every table with a tenant_id, so far."""

UNCHANGEABLE_BY_APP = {"audit_events", "audit_retention_anchors", "audit_chain_heads"}
"""Tenant-owned tables whose rows the application role may not update or delete."""
READ_ONLY_FOR_APP = {"audit_retention_anchors", "audit_chain_heads"}
"""... nor insert: only maintain (the owner) writes retention anchors, only the chain trigger
(SECURITY DEFINER) the chain heads."""


# -- fixtures and helpers -----------------------------------------------------------


def login_url(database_url: str, superuser: psycopg.Connection[Any], role: str, grant: str) -> str:
    """A URL of this test's database as ``role``, a LOGIN role made here (``grant``: its rights)."""
    superuser.execute(
        sql.SQL(
            "DO $$ BEGIN CREATE ROLE {} LOGIN " + grant + "; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        ).format(sql.Identifier(role))
    )
    return make_conninfo(**(conninfo_to_dict(database_url) | {"user": role}))


@pytest.fixture
def app(database_url: str, superuser: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection as a LOGIN member of toolkit_app (not an owner, no BYPASSRLS)."""
    url = login_url(database_url, superuser, APP_LOGIN, "IN ROLE toolkit_app")
    with psycopg.connect(url, autocommit=True) as connection:
        yield connection


@contextmanager
def tenant_tx(
    conn: psycopg.Connection[Any], tenant: UUID | None, *, commit: bool = False
) -> Iterator[psycopg.Connection[Any]]:
    """BEGIN, the transaction-local tenant (none: no set_config), and ROLLBACK (or COMMIT)."""
    conn.execute("BEGIN")
    try:
        if tenant is not None:
            conn.execute(
                "SELECT pg_catalog.set_config('toolkit.tenant_id', %s, true)", [str(tenant)]
            )
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT" if commit else "ROLLBACK")


def seed_tenant(superuser: psycopg.Connection[Any], tenant: UUID, name: str) -> None:
    """A tenant with one linked row in every tenant-owned table, written as ``tenant``.

    LangGraph threads, inbox entries and blob versions use the same text keys
    in every tenant (they are per tenant); each tenant also gets a blob
    version of its own, so a reference to it from another tenant names a key
    that tenant does not have.
    """
    superuser.execute("INSERT INTO tenants (id, name) VALUES (%s, %s)", [tenant, name])
    with tenant_tx(superuser, tenant, commit=True) as tx:
        (user_id,) = tx.execute(
            "SELECT id FROM create_user(%s, 'Person', 'member', true, NULL)",
            [f"person@{name}.example.com"],
        ).fetchone()
        (agent_id,) = tx.execute(
            "INSERT INTO agents (owner_id, name, type) VALUES (%s, 'Agent', 'assistant') "
            "RETURNING id",
            [user_id],
        ).fetchone()
        (workflow_id,) = tx.execute(
            "INSERT INTO workflows (owner_id, agent_id, name) VALUES (%s, %s, 'Flow') RETURNING id",
            [user_id, agent_id],
        ).fetchone()
        (execution_id,) = tx.execute(
            "INSERT INTO executions (workflow_id) VALUES (%s) RETURNING id", [workflow_id]
        ).fetchone()
        (first,) = tx.execute(
            "INSERT INTO checkpoints (execution_id, sequence, state) VALUES (%s, 0, '{}') "
            "RETURNING id",
            [execution_id],
        ).fetchone()
        tx.execute(
            "INSERT INTO checkpoints (execution_id, sequence, parent_id, state) "
            "VALUES (%s, 1, %s, '{}')",
            [execution_id, first],
        )
        (session_id,) = tx.execute(
            "INSERT INTO sessions (user_id, agent_id, expires_at) "
            "VALUES (%s, %s, now() + interval '1 day') RETURNING id",
            [user_id, agent_id],
        ).fetchone()
        tx.execute(
            "INSERT INTO audit_events (action, entity, prev_hash, hash) "
            "VALUES ('agent.created', 'agent', '', '')"
        )
        # As a run of maintain killed before its drop leaves it: true to the row still there.
        tx.execute(
            "INSERT INTO audit_retention_anchors (seq, hash, created_at, dropped_partition) "
            "SELECT seq, hash, created_at, 'seeded' FROM audit_events WHERE tenant_id = %s",
            [tenant],
        )
        tx.execute(
            "INSERT INTO files (owner_id, purpose, key, size, content_type, sha256, "
            "execution_id, session_id) VALUES (%s, 'attachment', %s, 1, 'text/plain', "
            "repeat('a', 64), %s, %s)",
            [user_id, f"files/{name}/one", execution_id, session_id],
        )
        tx.execute("INSERT INTO outbox (queue, message_type, body) VALUES ('q.test', 'T', '{}')")
        tx.execute(
            "INSERT INTO inbox (consumer, message_id, queue, created_at) "
            "VALUES ('c.test', %s, 'q.test', now())",
            [UUID(int=1)],
        )
        tx.execute(
            "INSERT INTO lg_checkpoints (thread_id, checkpoint_id, checkpoint) "
            "VALUES ('thread-1', 'c1', '{}')"
        )
        tx.execute(
            "INSERT INTO lg_blobs (thread_id, channel, version, type, blob) "
            "VALUES ('thread-1', 'ch', 'v1', 'bytes', '\\x00'), "
            "('thread-1', 'ch', %s, 'bytes', '\\x00')",
            [f"only-{name}"],
        )
        tx.execute(
            "INSERT INTO lg_blobs (thread_id, channel, version, type, base_version, item_count, "
            "blob) VALUES ('thread-1', 'ch', 'v2', 'bytes', 'v1', 1, '\\x01')"
        )
        tx.execute(
            "INSERT INTO lg_writes (thread_id, checkpoint_id, task_id, idx, channel, type, blob) "
            "VALUES ('thread-1', 'c1', 't1', 0, 'ch', 'bytes', '\\x00')"
        )


@pytest.fixture
def two_tenants(superuser: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    seed_tenant(superuser, TENANT_A, "a")
    seed_tenant(superuser, TENANT_B, "b")
    return superuser


def rls_tables(conn: psycopg.Connection[Any]) -> set[str]:
    """The tables of public with row level security on."""
    rows = conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
        "AND relkind IN ('r', 'p') AND relrowsecurity"
    ).fetchall()
    return {name for (name,) in rows}


def tenant_owned(conn: psycopg.Connection[Any]) -> list[str]:
    """The tables with row level security and a tenant_id column, by name."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_class AS c "
        "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') "
        "AND c.relrowsecurity AND EXISTS (SELECT 1 FROM pg_attribute AS a "
        "WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped) "
        "ORDER BY c.relname"
    ).fetchall()
    return [name for (name,) in rows]


def count(conn: psycopg.Connection[Any], table: str, tenant: UUID) -> int:
    query = sql.SQL("SELECT count(*) FROM {} WHERE tenant_id = %s").format(sql.Identifier(table))
    (found,) = conn.execute(query, [tenant]).fetchone()
    return int(found)


def columns(conn: psycopg.Connection[Any], table: str) -> dict[str, str]:
    """Insertable columns (not identity, not generated) and their types."""
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
        "AND attidentity = '' AND attgenerated = '' ORDER BY attnum",
        [table],
    ).fetchall()
    return dict(rows)


def unique_columns(conn: psycopg.Connection[Any], table: str) -> set[str]:
    rows = conn.execute(
        "SELECT a.attname FROM pg_index AS i JOIN pg_attribute AS a "
        "ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) "
        "WHERE i.indrelid = %s::regclass AND i.indisunique",
        [table],
    ).fetchall()
    return {name for (name,) in rows}


def row_of(
    conn: psycopg.Connection[Any], table: str, tenant: UUID, *, not_null: tuple[str, ...] = ()
) -> dict[str, Any]:
    """One row of ``tenant`` in ``table`` (superuser), as JSON values."""
    conditions = sql.SQL("").join(
        sql.SQL(" AND {} IS NOT NULL").format(sql.Identifier(c)) for c in not_null
    )
    query = sql.SQL("SELECT to_jsonb(t) FROM {} AS t WHERE tenant_id = %s{} LIMIT 1").format(
        sql.Identifier(table), conditions
    )
    found = conn.execute(query, [tenant]).fetchone()
    assert found is not None, f"no row of {tenant} in {table}"
    return dict(found[0])


def fresh(conn: psycopg.Connection[Any], table: str, row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with new values in its unique columns, but tenant_id and references.

    A column of a foreign key keeps its value, so the copy's references stay
    those of ``row`` (valid in its tenant) unless the caller replaces them.
    """
    types = columns(conn, table)
    referencing = {
        name
        for (name,) in conn.execute(
            "SELECT a.attname FROM pg_constraint AS c JOIN pg_attribute AS a "
            "ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey) "
            "WHERE c.conrelid = %s::regclass AND c.contype = 'f'",
            [table],
        ).fetchall()
    }
    copy = dict(row)
    for name in unique_columns(conn, table) - referencing - {"tenant_id"}:
        if name not in types:
            continue  # an identity column: left to its default
        kind = types[name]
        if kind == "uuid":
            copy[name] = str(uuid.uuid4())
        elif kind == "text":
            copy[name] = f"{copy[name]}-copy"
        elif kind in ("integer", "bigint"):
            copy[name] = int(copy[name]) + 1000
    return copy


def insert_row(conn: psycopg.Connection[Any], table: str, row: dict[str, Any]) -> None:
    """INSERT ``row`` (JSON values) into ``table``, every insertable column named."""
    names = [sql.Identifier(c) for c in columns(conn, table) if c in row]
    conn.execute(
        sql.SQL(
            "INSERT INTO {t} ({c}) SELECT {c} FROM jsonb_populate_record(NULL::{t}, %s)"
        ).format(t=sql.Identifier(table), c=sql.SQL(", ").join(names)),
        [Jsonb(row)],
    )


def key_condition(conn: psycopg.Connection[Any], table: str, row: dict[str, Any]) -> sql.Composed:
    """``(pk columns) = (row's values)``, to address ``row`` (compared as JSON texts,
    the form ``row`` came in: a timestamp's ``::text`` differs from its JSON)."""
    keys = [
        name
        for (name,) in conn.execute(
            "SELECT a.attname FROM pg_index AS i JOIN pg_attribute AS a "
            "ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) "
            "WHERE i.indrelid = %s::regclass AND i.indisprimary",
            [table],
        ).fetchall()
    ]
    return sql.SQL(" AND ").join(
        sql.SQL("to_jsonb({}) #>> '{{}}' = {}").format(sql.Identifier(k), sql.Literal(str(row[k])))
        for k in keys
    )


def foreign_keys(conn: psycopg.Connection[Any]) -> list[tuple[str, str, list[str], str, list[str]]]:
    """(name, table, columns, referenced table, referenced columns) between tenant-owned tables."""
    rows = conn.execute(
        """
        SELECT c.conname, c.conrelid::regclass::text,
            ARRAY(SELECT attname FROM unnest(c.conkey) WITH ORDINALITY AS k (n, o)
                JOIN pg_attribute ON attrelid = c.conrelid AND attnum = k.n ORDER BY k.o),
            c.confrelid::regclass::text,
            ARRAY(SELECT attname FROM unnest(c.confkey) WITH ORDINALITY AS k (n, o)
                JOIN pg_attribute ON attrelid = c.confrelid AND attnum = k.n ORDER BY k.o)
        FROM pg_constraint AS c
        WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace
        ORDER BY c.conname
        """
    ).fetchall()
    owned = set(tenant_owned(conn))
    return [r for r in rows if r[1] in owned and r[3] in owned]


# -- the schema ---------------------------------------------------------------------


def test_every_table_holding_a_tenants_rows_is_tenant_owned_with_forced_policies(
    superuser,
) -> None:
    tables = {
        name
        for (name,) in superuser.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
            "AND relkind IN ('r', 'p') AND relname NOT LIKE '%yoyo%'"
        ).fetchall()
    }
    # Every table but the shared identities and the tenants themselves carries tenant_id.
    assert set(tenant_owned(superuser)) == tables - {"users", "tenants"} == TENANT_OWNED
    assert rls_tables(superuser) == tables
    forced = superuser.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
        "AND relkind IN ('r', 'p') AND relrowsecurity AND NOT relforcerowsecurity"
    ).fetchall()
    assert forced == []
    policies = superuser.execute(
        "SELECT tablename, policyname, cmd, roles, qual, with_check FROM pg_policies "
        "WHERE schemaname = 'public' ORDER BY tablename, policyname"
    ).fetchall()
    by_table: dict[str, dict[str, tuple[Any, ...]]] = {}
    for table, name, cmd, roles, qual, check in policies:
        by_table.setdefault(table, {})[name] = (cmd, roles, qual, check)
    tenant_check = "(tenant_id = ( SELECT toolkit_tenant() AS toolkit_tenant))"
    for table in TENANT_OWNED:
        assert by_table[table] == {
            "tenant_select": ("SELECT", ["public"], tenant_check, None),
            "tenant_insert": ("INSERT", ["public"], None, tenant_check),
            "tenant_update": ("UPDATE", ["public"], tenant_check, tenant_check),
            "tenant_delete": ("DELETE", ["public"], tenant_check, None),
        }, table
    for table in ("users", "tenants"):
        assert set(by_table[table]) == {
            "tenant_select",
            "tenant_insert",
            "tenant_update",
            "tenant_delete",
        }
    # No view could bypass the policies: there is none without security_invoker.
    views = superuser.execute(
        "SELECT c.relname FROM pg_class AS c WHERE c.relkind IN ('v', 'm') "
        "AND c.relnamespace <> 'pg_catalog'::regnamespace "
        "AND c.relnamespace <> 'information_schema'::regnamespace "
        "AND NOT coalesce('security_invoker=true' = ANY (c.reloptions), false)"
    ).fetchall()
    assert views == []


def test_foreign_keys_between_tenant_owned_tables_carry_the_tenant(superuser) -> None:
    keys = foreign_keys(superuser)
    assert {name for name, *_ in keys} >= {
        "agents_owner_id_fkey",
        "workflows_owner_id_fkey",
        "workflows_agent_id_fkey",
        "executions_workflow_id_fkey",
        "checkpoints_execution_id_fkey",
        "checkpoints_parent_id_fkey",
        "sessions_user_id_fkey",
        "sessions_agent_id_fkey",
        "files_owner_id_fkey",
        "files_execution_id_fkey",
        "files_session_id_fkey",
    }
    for name, _table, cols, _referenced, referenced_cols in keys:
        assert cols[0] == referenced_cols[0] == "tenant_id", name
    # The ones that keep the row but forget the reference forget only their own column.
    set_null = dict(
        superuser.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE contype = 'f' AND confdeltype = 'n'"
        ).fetchall()
    )
    assert set_null == {
        "workflows_agent_id_fkey": (
            "FOREIGN KEY (tenant_id, agent_id) REFERENCES agents(tenant_id, id) "
            "ON DELETE SET NULL (agent_id)"
        ),
        "checkpoints_parent_id_fkey": (
            "FOREIGN KEY (tenant_id, parent_id) REFERENCES checkpoints(tenant_id, id) "
            "ON DELETE SET NULL (parent_id)"
        ),
        "files_execution_id_fkey": (
            "FOREIGN KEY (tenant_id, execution_id) REFERENCES executions(tenant_id, id) "
            "ON DELETE SET NULL (execution_id)"
        ),
        "files_session_id_fkey": (
            "FOREIGN KEY (tenant_id, session_id) REFERENCES sessions(tenant_id, id) "
            "ON DELETE SET NULL (session_id)"
        ),
    }


# -- as the application role, raw SQL ------------------------------------------------


def test_the_seed_covers_every_tenant_owned_table(two_tenants) -> None:
    for table in tenant_owned(two_tenants):
        assert table in TENANT_OWNED, f"{table} is tenant-owned: seed it in seed_tenant()"
        for tenant in (TENANT_A, TENANT_B):
            assert count(two_tenants, table, tenant) > 0, (table, tenant)


def test_another_tenants_rows_are_never_shown_changed_or_deleted(two_tenants, app) -> None:
    before = {t: count(two_tenants, t, TENANT_B) for t in tenant_owned(two_tenants)}
    for table in tenant_owned(two_tenants):
        name = sql.Identifier(table)
        may_change = app.execute(
            "SELECT has_table_privilege('toolkit_app', %s, 'UPDATE'), "
            "has_table_privilege('toolkit_app', %s, 'DELETE')",
            [table, table],
        ).fetchone()
        with tenant_tx(app, TENANT_A) as tx:
            shown = tx.execute(sql.SQL("SELECT tenant_id FROM {}").format(name)).fetchall()
            assert shown and {t for (t,) in shown} == {TENANT_A}, table
            assert count(tx, table, TENANT_B) == 0, table
            b_row = row_of(two_tenants, table, TENANT_B)
            where_b = key_condition(two_tenants, table, b_row)
            if may_change[0]:
                changed = tx.execute(
                    sql.SQL("UPDATE {} SET tenant_id = tenant_id WHERE {}").format(name, where_b)
                )
                assert changed.rowcount == 0, table
                changed = tx.execute(
                    sql.SQL("UPDATE {} SET tenant_id = tenant_id WHERE tenant_id = %s").format(
                        name
                    ),
                    [TENANT_B],
                )
                assert changed.rowcount == 0, table
            if may_change[1]:
                deleted = tx.execute(sql.SQL("DELETE FROM {} WHERE {}").format(name, where_b))
                assert deleted.rowcount == 0, table
                deleted = tx.execute(
                    sql.SQL("DELETE FROM {} WHERE tenant_id = %s").format(name), [TENANT_B]
                )
                assert deleted.rowcount == 0, table
        if not all(may_change):  # refused by privilege before any policy
            assert table in UNCHANGEABLE_BY_APP
            for statement in ("UPDATE {} SET tenant_id = tenant_id", "DELETE FROM {}"):
                with (
                    pytest.raises(psycopg.errors.InsufficientPrivilege),
                    tenant_tx(app, TENANT_A) as tx,
                ):
                    tx.execute(sql.SQL(statement).format(name))
    assert {t: count(two_tenants, t, TENANT_B) for t in before} == before


def test_a_row_naming_another_tenant_is_refused(two_tenants, app) -> None:
    for table in tenant_owned(two_tenants):
        mine = row_of(two_tenants, table, TENANT_A)
        theirs = fresh(two_tenants, table, mine) | {"tenant_id": str(TENANT_B)}
        if table in READ_ONLY_FOR_APP:
            with (
                pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"),
                tenant_tx(app, TENANT_A) as tx,
            ):
                insert_row(tx, table, theirs | {"tenant_id": str(TENANT_A)})
            continue
        if table == "memberships":  # its key is its reference: a user without a membership
            (newcomer,) = two_tenants.execute(
                "INSERT INTO users (email, display_name) VALUES ('new@example.com', 'New') "
                "RETURNING id"
            ).fetchone()
            theirs["user_id"] = str(newcomer)
        with (
            pytest.raises(
                psycopg.errors.InsufficientPrivilege, match="row-level security"
            ) as raised,
            tenant_tx(app, TENANT_A) as tx,
        ):
            insert_row(tx, table, theirs)
        assert table in str(raised.value)
        # The control: the same row as the transaction's own tenant is accepted.
        with tenant_tx(app, TENANT_A) as tx:
            insert_row(tx, table, theirs | {"tenant_id": str(TENANT_A)})
        if table in UNCHANGEABLE_BY_APP:
            continue  # no UPDATE privilege (test above)
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"),
            tenant_tx(app, TENANT_A) as tx,
        ):
            tx.execute(
                sql.SQL("UPDATE {} SET tenant_id = %s WHERE {}").format(
                    sql.Identifier(table), key_condition(two_tenants, table, mine)
                ),
                [TENANT_B],
            )


def test_a_reference_to_another_tenants_row_is_refused(two_tenants, app) -> None:
    keys = foreign_keys(two_tenants)
    assert len(keys) >= 11
    for name, table, cols, referenced, referenced_cols in keys:
        own_cols = tuple(c for c in cols if c != "tenant_id")
        mine = row_of(two_tenants, table, TENANT_A, not_null=own_cols)
        # A row of the other tenant whose key this tenant does not have.
        key_cols = [c for c in referenced_cols if c != "tenant_id"]
        theirs = two_tenants.execute(
            sql.SQL(
                "SELECT {k} FROM {r} WHERE tenant_id = %s AND ({k}) NOT IN "
                "(SELECT {k} FROM {r} WHERE tenant_id = %s) LIMIT 1"
            ).format(
                k=sql.SQL(", ").join(map(sql.Identifier, key_cols)), r=sql.Identifier(referenced)
            ),
            [TENANT_B, TENANT_A],
        ).fetchone()
        assert theirs is not None, f"{name}: seed a {referenced} key of B that A lacks"
        pointing = dict(zip(own_cols, [str(v) for v in theirs], strict=True))
        with (
            pytest.raises(psycopg.errors.ForeignKeyViolation) as raised,
            tenant_tx(app, TENANT_A) as tx,
        ):
            insert_row(tx, table, fresh(two_tenants, table, mine) | pointing)
        assert raised.value.diag.constraint_name == name
        with (
            pytest.raises(psycopg.errors.ForeignKeyViolation) as raised,
            tenant_tx(app, TENANT_A) as tx,
        ):
            tx.execute(
                sql.SQL("UPDATE {t} SET ({c}) = ROW({v}) WHERE {w}").format(
                    t=sql.Identifier(table),
                    c=sql.SQL(", ").join(map(sql.Identifier, own_cols)),
                    v=sql.SQL(", ").join(map(sql.Literal, pointing.values())),
                    w=key_condition(two_tenants, table, mine),
                )
            )
        assert raised.value.diag.constraint_name == name


def no_tenant_statements(conn: psycopg.Connection[Any], table: str) -> list[sql.Composable]:
    """One statement per verb the application role holds on ``table``."""
    name = sql.Identifier(table)
    statements: list[sql.Composable] = [
        sql.SQL("SELECT count(*) FROM {}").format(name),
        sql.SQL("SELECT * FROM {} WHERE tenant_id = %s").format(name),
    ]
    granted = conn.execute(
        "SELECT has_table_privilege('toolkit_app', %s, 'UPDATE'), "
        "has_table_privilege('toolkit_app', %s, 'DELETE')",
        [table, table],
    ).fetchone()
    if granted[0]:
        statements.append(sql.SQL("UPDATE {} SET tenant_id = tenant_id").format(name))
    if granted[1]:
        statements.append(sql.SQL("DELETE FROM {}").format(name))
    return statements


def test_without_a_tenant_every_verb_raises_tn001_never_an_empty_answer(two_tenants, app) -> None:
    for table in tenant_owned(two_tenants):
        for statement in no_tenant_statements(two_tenants, table):
            with pytest.raises(psycopg.Error) as raised, tenant_tx(app, None) as tx:
                tx.execute(statement, [TENANT_A] if "%s" in statement.as_string(tx) else None)
            assert raised.value.sqlstate == TENANT_REQUIRED, (table, statement.as_string(app))
            assert "no tenant is set" in str(raised.value)
        mine = row_of(two_tenants, table, TENANT_A)
        copy = fresh(two_tenants, table, mine)
        del copy["tenant_id"]  # the column default: the default tenant, refused by the check
        with pytest.raises(psycopg.Error) as raised, tenant_tx(app, None) as tx:
            insert_row(tx, table, copy)
        refused = "42501" if table in READ_ONLY_FOR_APP else TENANT_REQUIRED  # by privilege
        assert raised.value.sqlstate == refused, table
    # A tenant set to '' (what a finished transaction leaves behind) is no tenant.
    with pytest.raises(psycopg.Error) as raised, tenant_tx(app, None) as tx:
        tx.execute("SELECT set_config('toolkit.tenant_id', '', true)")
        tx.execute("SELECT count(*) FROM agents")
    assert raised.value.sqlstate == TENANT_REQUIRED


def test_the_toolkits_own_lookups_raise_tn001_even_when_no_row_matches(two_tenants, app) -> None:
    """Raw SQL raises once it examines a row; the toolkit's queries before any.

    Their own tenant filter meets the policy's in one condition the executor
    checks first (a one-time filter or an index key), so a get by an unknown
    id without a tenant is TenantRequired, not NotFound.
    """
    gets = [
        b
        for b in load_bindings()
        if isinstance(b, One) and b.params == ("id",) and b.name.split(".")[0] in TENANT_OWNED
    ]
    assert {b.name for b in gets} >= {"agents.get", "workflows.get", "files.get"}
    for binding in gets:
        statement = binding.query.statement(None, False)
        with pytest.raises(psycopg.Error) as raised, tenant_tx(app, None) as tx:
            tx.execute(statement, {"id": uuid.uuid4()})
        assert raised.value.sqlstate == TENANT_REQUIRED, binding.name


@pytest.fixture
def owner(
    database_url: str, superuser: psycopg.Connection[Any]
) -> Iterator[psycopg.Connection[Any]]:
    """A connection as a non-superuser role that owns every table with row level security."""
    role = f"toolkit_tenancy_owner_{os.getpid()}"
    url = login_url(database_url, superuser, role, "")
    for table in sorted(rls_tables(superuser)):
        superuser.execute(
            sql.SQL("ALTER TABLE {} OWNER TO {}").format(
                sql.Identifier(table), sql.Identifier(role)
            )
        )
    try:
        with psycopg.connect(url, autocommit=True) as connection:
            yield connection
    finally:
        superuser.execute(
            sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER; DROP OWNED BY {}").format(
                sql.Identifier(role), sql.Identifier(role)
            )
        )
        superuser.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_the_owner_is_bound_too_and_refused_without_a_tenant(two_tenants, owner) -> None:
    for table in sorted(rls_tables(two_tenants)):
        assert owner.execute(
            "SELECT relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) "
            "FROM pg_class WHERE oid = %s::regclass",
            [table],
        ).fetchone() == (True,)
        with pytest.raises(psycopg.Error) as raised, tenant_tx(owner, None) as tx:
            tx.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
        assert raised.value.sqlstate == TENANT_REQUIRED, table
    for table in tenant_owned(two_tenants):
        with tenant_tx(owner, TENANT_B) as tx:
            shown = tx.execute(
                sql.SQL("SELECT DISTINCT tenant_id FROM {}").format(sql.Identifier(table))
            ).fetchall()
            assert shown == [(TENANT_B,)], table


# -- plans ---------------------------------------------------------------------------


def test_the_tenant_check_is_one_initplan_evaluated_once(two_tenants, app) -> None:
    with tenant_tx(two_tenants, TENANT_A, commit=True) as tx:
        owner_id = tx.execute("SELECT owner_id FROM agents LIMIT 1").fetchone()[0]
        tx.execute(
            "INSERT INTO agents (owner_id, name, type) "
            "SELECT %s, 'Agent ' || g, 'bulk' FROM generate_series(1, 500) AS g",
            [owner_id],
        )
    two_tenants.execute("ANALYZE agents")
    with tenant_tx(app, TENANT_A) as tx:
        (explained,) = tx.execute(
            "EXPLAIN (ANALYZE, VERBOSE, FORMAT JSON) SELECT * FROM agents WHERE type = 'bulk'"
        ).fetchone()
    plan = explained[0]["Plan"]
    nodes = plan_nodes(plan)
    initplans = [n for n in nodes if n.get("Parent Relationship") == "InitPlan"]
    assert [n.get("Output") for n in initplans] == [["toolkit_tenant()"]]
    assert initplans[0]["Actual Loops"] == 1
    assert not [n for n in nodes if n.get("Parent Relationship") == "SubPlan"]
    scans = [n for n in nodes if n.get("Relation Name") == "agents"]
    assert scans and scans[0]["Actual Rows"] == 500
    # The scan compares with the InitPlan's value ($n), never calls the function per row.
    condition = scans[0].get("Filter", "") + scans[0].get("Index Cond", "")
    assert "tenant_id = $" in condition and "toolkit_tenant" not in condition


def test_list_and_get_queries_use_their_indexes_under_the_policy(superuser, app) -> None:
    # test_query_plans' data, once per tenant: the people and their memberships as the
    # superuser, the rest as the application role, whose reads see only the tenant's rows.
    people, rest = SEED.split("INSERT INTO agents", 1)
    for tenant, domain in ((TENANT_A, "a.example.com"), (TENANT_B, "b.example.com")):
        superuser.execute("INSERT INTO tenants (id, name) VALUES (%s, %s)", [tenant, domain])
        with tenant_tx(superuser, tenant, commit=True) as tx:
            tx.execute(people.replace("@example.com", f"@{domain}"))
        with tenant_tx(app, tenant, commit=True) as tx:
            tx.execute("INSERT INTO agents" + rest.replace("'k' || g", f"'{domain}/k' || g"))
    superuser.execute("ANALYZE")
    with tenant_tx(app, TENANT_A) as tx:
        assert list_query_problems(tx) == []
        gets = [b for b in load_bindings() if isinstance(b, One) and b.params == ("id",)]
        empty = empty_partitions(tx)  # scanning one reads nothing
        checked = []
        for binding in gets:
            table = binding.name.split(".")[0]
            if table not in TENANT_OWNED | {"users"}:
                continue
            key = tx.execute(sql.SQL("SELECT id FROM {} LIMIT 1").format(sql.Identifier(table)))
            found = key.fetchone()
            if found is None:
                continue  # nothing seeded in this table
            statement = binding.query.statement(None, False).as_string(tx)
            (explained,) = tx.execute(
                f"EXPLAIN (FORMAT JSON) {statement}", {"id": found[0]}, prepare=False
            ).fetchone()
            kinds = {
                n["Node Type"]
                for n in plan_nodes(explained[0]["Plan"])
                if n.get("Relation Name") not in empty
            }
            assert "Seq Scan" not in kinds, (binding.name, kinds)
            checked.append(binding.name)
    # users.get: one membership probe, never a hash of every member of the tenant.
    assert {"agents.get", "workflows.get", "executions.get", "users.get"} <= set(checked)


# -- per-tenant audit chains ---------------------------------------------------------


def test_each_tenants_audit_chain_is_numbered_linked_and_anchored_on_its_own(
    superuser, app, tmp_path: Path
) -> None:
    for tenant in (TENANT_A, TENANT_B):
        superuser.execute("INSERT INTO tenants (id, name) VALUES (%s, 'chain')", [tenant])
    written: dict[UUID, list[int]] = {TENANT_A: [], TENANT_B: []}
    for n in range(12):
        for tenant in (TENANT_A, TENANT_B) if n % 2 else (TENANT_B, TENANT_A):
            with tenant_tx(app, tenant, commit=True) as tx:
                event = audit_events.record(tx, {"action": "thing.happened", "entity": "thing"})
                written[tenant].append(event.seq)
    # A session the policies do not bind (the superuser) links per tenant as well.
    for tenant in (TENANT_A, TENANT_B):
        with tenant_tx(superuser, tenant, commit=True) as tx:
            event = audit_events.record(tx, {"action": "thing.happened", "entity": "thing"})
            written[tenant].append(event.seq)
    assert written == {TENANT_A: list(range(1, 14)), TENANT_B: list(range(1, 14))}
    for tenant in (TENANT_A, TENANT_B):
        storage = LocalStorage(tmp_path / str(tenant))
        with tenant_tx(app, tenant) as tx:
            report = audit_events.verify_chain(tx)
            assert (report.ok, report.checked) == (True, 13)
            anchored = write_anchor(tx, storage)
            assert anchored is not None and anchored.anchor.sequence == 13
            assert verify(tx, storage).ok
    # The superuser without a tenant verifies the default tenant's chain: empty, intact.
    report = audit_events.verify_chain(superuser)
    assert (report.ok, report.checked) == (True, 0)
    # A rewrite in one tenant's chain breaks that chain only.
    superuser.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update")
    superuser.execute(
        "UPDATE audit_events SET details = '{\"forged\": true}' WHERE tenant_id = %s AND seq = 5",
        [TENANT_A],
    )
    with tenant_tx(app, TENANT_A) as tx:
        assert audit_events.verify_chain(tx).first_broken_seq == 5
    with tenant_tx(app, TENANT_B) as tx:
        assert audit_events.verify_chain(tx).ok


def test_one_tenants_chain_lock_does_not_hold_up_another(superuser, app, database_url) -> None:
    for tenant in (TENANT_A, TENANT_B):
        superuser.execute("INSERT INTO tenants (id, name) VALUES (%s, 'chain')", [tenant])
    record = (
        "INSERT INTO audit_events (action, entity, prev_hash, hash) VALUES ('a.b', 'x', '', '')"
    )
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(audit_chain_lock_key(%s))", [TENANT_A])
        started = time.monotonic()
        with tenant_tx(app, TENANT_B) as tx:
            tx.execute(record)
        assert time.monotonic() - started < 1
        with (
            pytest.raises(psycopg.errors.LockNotAvailable, match="audit chain lock"),
            tenant_tx(app, TENANT_A) as tx,
        ):
            tx.execute("SET LOCAL lock_timeout = '200ms'")
            tx.execute(record)
        release = threading.Timer(0.2, lambda: holder.execute("SELECT pg_advisory_unlock_all()"))
        release.start()
        try:
            with tenant_tx(app, TENANT_A, commit=True) as tx:
                tx.execute(record)
        finally:
            release.join()


# -- users are shared identities -----------------------------------------------------


def test_users_are_seen_and_changed_only_through_a_membership(superuser, app) -> None:
    for tenant in (TENANT_A, TENANT_B):
        superuser.execute("INSERT INTO tenants (id, name) VALUES (%s, 'people')", [tenant])
    with tenant_tx(app, TENANT_A, commit=True) as tx:
        alice = users.create(tx, {"email": "alice@a.example.com", "display_name": "Alice"})
        users.set_password_hash(tx, alice.id, "$hash$alice")
    assert superuser.execute(
        "SELECT tenant_id FROM memberships WHERE user_id = %s", [alice.id]
    ).fetchall() == [(TENANT_A,)]
    with tenant_tx(app, TENANT_B) as tx:
        with pytest.raises(NotFound):
            users.get(tx, alice.id)
        assert users.get_by_email(tx, alice.email) is None
        assert users.get_credentials(tx, alice.email) is None
        assert users.count(tx) == 0
        assert tx.execute("SELECT count(*) FROM users WHERE id = %s", [alice.id]).fetchone() == (0,)
        assert (
            tx.execute(
                "UPDATE users SET display_name = 'Mallory' WHERE id = %s", [alice.id]
            ).rowcount
            == 0
        )
        with pytest.raises(NotFound):
            users.set_password_hash(tx, alice.id, "$hash$mallory")
    with tenant_tx(app, TENANT_A) as tx:
        assert users.get(tx, alice.id).display_name == "Alice"
        assert users.get_credentials(tx, alice.email).password_hash == "$hash$alice"
    # A user inserted without a membership in the tenant is refused.
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"),
        tenant_tx(app, TENANT_B) as tx,
    ):
        tx.execute("INSERT INTO users (email, display_name) VALUES ('eve@b.example.com', 'Eve')")
    # Joining another tenant is a membership: then B sees the same person.
    with tenant_tx(app, TENANT_B, commit=True) as tx:
        tx.execute("INSERT INTO memberships (user_id) VALUES (%s)", [alice.id])
    with tenant_tx(app, TENANT_B) as tx:
        assert users.get(tx, alice.id).email == alice.email
    # Without a tenant, the credential lookup is refused like every read.
    with pytest.raises(psycopg.Error) as raised, tenant_tx(app, None) as tx:
        tx.execute("SELECT * FROM user_credentials(%s)", [alice.email])
    assert raised.value.sqlstate == TENANT_REQUIRED


def test_the_application_role_cannot_delete_a_user_everywhere(superuser, app) -> None:
    """A delete bound by the policies removes nothing (it would cascade into every tenant).

    Leaving one tenant is deleting the membership, which takes that tenant's
    rows of the user with it and leaves the other tenant's alone.
    """
    for tenant in (TENANT_A, TENANT_B):
        superuser.execute("INSERT INTO tenants (id, name) VALUES (%s, 'people')", [tenant])
    with tenant_tx(app, TENANT_A, commit=True) as tx:
        bob = users.create(tx, {"email": "bob@example.com", "display_name": "Bob"})
        tx.execute(
            "INSERT INTO agents (owner_id, name, type) VALUES (%s, 'A agent', 'assistant')",
            [bob.id],
        )
    with tenant_tx(app, TENANT_B, commit=True) as tx:
        tx.execute("INSERT INTO memberships (user_id) VALUES (%s)", [bob.id])
        tx.execute(
            "INSERT INTO agents (owner_id, name, type) VALUES (%s, 'B agent', 'assistant')",
            [bob.id],
        )
    with tenant_tx(app, TENANT_A, commit=True) as tx:
        with pytest.raises(NotFound):
            users.delete(tx, bob.id)
        assert tx.execute("DELETE FROM users").rowcount == 0
        assert tx.execute("DELETE FROM memberships WHERE user_id = %s", [bob.id]).rowcount == 1
    agents_left = superuser.execute(
        "SELECT tenant_id, name FROM agents WHERE owner_id = %s", [bob.id]
    ).fetchall()
    assert agents_left == [(TENANT_B, "B agent")]
    assert superuser.execute("SELECT count(*) FROM users WHERE id = %s", [bob.id]).fetchone() == (
        1,
    )
    # The operator (not bound by the policies) deletes the person everywhere.
    users.delete(superuser, bob.id)
    assert superuser.execute(
        "SELECT count(*) FROM agents WHERE owner_id = %s", [bob.id]
    ).fetchone() == (0,)


def test_a_tenant_sees_and_creates_only_its_own_tenants_row(superuser, app) -> None:
    superuser.execute("INSERT INTO tenants (id, name) VALUES (%s, 'A')", [TENANT_A])
    with tenant_tx(app, TENANT_A) as tx:
        assert tx.execute("SELECT id, name FROM tenants").fetchall() == [(TENANT_A, "A")]
        assert tx.execute("UPDATE tenants SET name = 'Renamed'").rowcount == 1
    with tenant_tx(app, TENANT_B, commit=True) as tx:
        assert tx.execute("SELECT count(*) FROM tenants").fetchone() == (0,)
        tx.execute("INSERT INTO tenants (id, name) VALUES (%s, 'B')", [TENANT_B])
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"),
        tenant_tx(app, TENANT_B) as tx,
    ):
        tx.execute("INSERT INTO tenants (id, name) VALUES (%s, 'C')", [uuid.uuid4()])
    with pytest.raises(psycopg.errors.InsufficientPrivilege), tenant_tx(app, TENANT_B) as tx:
        tx.execute("DELETE FROM tenants")


# -- the relay's role ------------------------------------------------------------------


def test_the_relay_role_claims_every_tenants_outbox_and_nothing_else(
    two_tenants, database_url
) -> None:
    rights = two_tenants.execute(
        "SELECT rolcanlogin, rolbypassrls FROM pg_roles WHERE rolname = 'toolkit_relay'"
    ).fetchone()
    assert rights == (False, False)
    granted = two_tenants.execute(
        "SELECT c.relname, a.privilege_type FROM pg_class AS c, aclexplode(c.relacl) AS a "
        "WHERE a.grantee = 'toolkit_relay'::regrole ORDER BY 1, 2"
    ).fetchall()
    assert granted == [("outbox", "DELETE"), ("outbox", "SELECT")]
    updatable = two_tenants.execute(
        "SELECT a.attname FROM pg_attribute AS a, aclexplode(a.attacl) AS x "
        "WHERE a.attrelid = 'outbox'::regclass AND x.grantee = 'toolkit_relay'::regrole "
        "AND x.privilege_type = 'UPDATE' ORDER BY 1"
    ).fetchall()
    assert [c for (c,) in updatable] == ["attempts", "available_at", "last_error", "sent_at"]
    login = f"toolkit_tenancy_relay_{os.getpid()}"
    url = login_url(database_url, two_tenants, login, "BYPASSRLS IN ROLE toolkit_relay")
    claim = next(b for b in load_bindings() if b.name == "outbox.claim")
    mark = next(b for b in load_bindings() if b.name == "outbox.mark_sent")
    with psycopg.connect(url) as relay:
        claimed = relay.execute(claim.query.statement(None, False), {"limit": 10}).fetchall()
        assert len(claimed) == 2  # one message of each tenant
        ids = [row[0] for row in claimed]
        relay.execute(mark.query.statement(None, False), {"ids": ids})
        relay.commit()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            relay.execute("SELECT count(*) FROM agents")
    sent = two_tenants.execute(
        "SELECT tenant_id FROM outbox WHERE sent_at IS NOT NULL ORDER BY tenant_id"
    ).fetchall()
    assert sent == [(TENANT_A,), (TENANT_B,)]


# -- converting an existing database, and back ------------------------------------------

SNAPSHOT = """
SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
    || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
    || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
    || coalesce(' acl ' || a.attacl::text, '')
FROM pg_attribute AS a
JOIN pg_class AS c ON c.oid = a.attrelid
LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND a.attnum > 0
    AND NOT a.attisdropped AND c.relname NOT LIKE '%yoyo%'
UNION ALL
SELECT 'relation ' || relname || ' ' || relkind::text || ' rls ' || relrowsecurity
    || ' force ' || relforcerowsecurity || ' acl ' || coalesce(relacl::text, '')
FROM pg_class
WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'v', 'm', 'S')
    AND relname NOT LIKE '%yoyo%'
UNION ALL
SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
    || ' deferrable ' || condeferrable
FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'index ' || pg_get_indexdef(i.indexrelid)
FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indrelid
WHERE c.relnamespace = 'public'::regnamespace AND c.relname NOT LIKE '%yoyo%'
UNION ALL
SELECT 'function ' || pg_get_functiondef(p.oid) || ' acl ' || coalesce(p.proacl::text, '')
FROM pg_proc AS p
WHERE p.pronamespace = 'public'::regnamespace AND NOT EXISTS (
    SELECT 1 FROM pg_depend AS d WHERE d.objid = p.oid AND d.deptype = 'e'
)
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(t.oid)
FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid
WHERE c.relnamespace = 'public'::regnamespace AND NOT t.tgisinternal
UNION ALL
SELECT 'policy ' || tablename || ' ' || policyname FROM pg_policies WHERE schemaname = 'public'
UNION ALL
SELECT 'schema acl ' || nspacl::text FROM pg_namespace WHERE nspname = 'public'
UNION ALL
SELECT 'default acl ' || defaclacl::text FROM pg_default_acl
"""

ROWS_AT_0008 = """
INSERT INTO users (id, email, display_name, password_hash)
VALUES ('10000000-0000-4000-8000-000000000001', 'old@example.com', 'Old', '$hash$old'),
    ('10000000-0000-4000-8000-000000000002', 'older@example.com', 'Older', NULL);
INSERT INTO agents (id, owner_id, name, type)
VALUES ('20000000-0000-4000-8000-000000000001', '10000000-0000-4000-8000-000000000001',
    'Old agent', 'assistant');
INSERT INTO workflows (id, owner_id, agent_id, name)
VALUES ('30000000-0000-4000-8000-000000000001', '10000000-0000-4000-8000-000000000002',
    '20000000-0000-4000-8000-000000000001', 'Old flow');
INSERT INTO executions (id, workflow_id)
VALUES ('40000000-0000-4000-8000-000000000001', '30000000-0000-4000-8000-000000000001');
INSERT INTO checkpoints (id, execution_id, sequence, state)
VALUES ('50000000-0000-4000-8000-000000000001', '40000000-0000-4000-8000-000000000001', 0, '{}');
INSERT INTO checkpoints (execution_id, sequence, parent_id, state)
VALUES ('40000000-0000-4000-8000-000000000001', 1, '50000000-0000-4000-8000-000000000001', '{}');
INSERT INTO sessions (id, user_id, agent_id, expires_at)
VALUES ('60000000-0000-4000-8000-000000000001', '10000000-0000-4000-8000-000000000001',
    '20000000-0000-4000-8000-000000000001', '2099-01-01');
INSERT INTO audit_events (action, entity, prev_hash, hash)
VALUES ('agent.created', 'agent', '', ''), ('agent.updated', 'agent', '', '');
INSERT INTO files (owner_id, purpose, key, size, content_type, sha256, execution_id, session_id)
VALUES ('10000000-0000-4000-8000-000000000001', 'attachment', 'files/old', 1, 'text/plain',
    repeat('a', 64), '40000000-0000-4000-8000-000000000001',
    '60000000-0000-4000-8000-000000000001');
INSERT INTO outbox (queue, message_type, body) VALUES ('q.old', 'T', '{"n": 1}');
INSERT INTO inbox (consumer, message_id, queue)
VALUES ('c.old', '70000000-0000-4000-8000-000000000001', 'q.old');
INSERT INTO lg_checkpoints (thread_id, checkpoint_id, checkpoint) VALUES ('old', 'c1', '{}');
INSERT INTO lg_blobs (thread_id, channel, version, type, blob)
VALUES ('old', 'ch', 'v1', 'bytes', '\\x00');
INSERT INTO lg_blobs (thread_id, channel, version, type, base_version, item_count, blob)
VALUES ('old', 'ch', 'v2', 'bytes', 'v1', 1, '\\x01');
INSERT INTO lg_writes (thread_id, checkpoint_id, task_id, idx, channel, type, blob)
VALUES ('old', 'c1', 't1', 0, 'ch', 'bytes', '\\x00');
"""

AFTER_0009 = {"audit_retention_anchors", "audit_chain_heads"}
"""Tenant-owned tables a later migration made (0013): 0009 has no rows of theirs to convert."""
DATA_TABLES = sorted(TENANT_OWNED - {"memberships"} - AFTER_0009 | {"users"})


@pytest.fixture
def scratch_url() -> Iterator[str]:
    name = f"toolkit_tenancy_{uuid.uuid4().hex[:10]}"
    yield server_url(name)
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def migrate_to(url: str, last: str) -> None:
    """Apply the toolkit's migrations up to ``last`` (creating the database)."""
    migrate(url)
    rollback(url, None)
    backend = get_backend(_yoyo_url(url))
    try:
        wanted = read_migrations(str(package_directory("migrations"))).filter(
            lambda m: m.id <= last
        )
        with backend.lock():
            backend.apply_migrations(backend.to_apply(wanted))
    finally:
        backend.connection.close()


def snapshot(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {row for (row,) in conn.execute(SNAPSHOT).fetchall()}


ADDED_LATER = {"inbox": "created_at"}
"""Columns a later migration adds, derived from the row (0012: a record's creation time)."""


def table_rows(url: str) -> dict[str, list[str]]:
    """Every row of every table holding data, without tenant_id (nor a column
    :data:`ADDED_LATER`), as sorted JSON texts."""
    with psycopg.connect(url) as conn:
        return {
            table: sorted(
                json.dumps(row, sort_keys=True)
                for (row,) in conn.execute(
                    # stored_at: where 0014 partitions the LangGraph tables, not data.
                    sql.SQL(
                        "SELECT to_jsonb(t) - 'tenant_id' - 'stored_at' - %s::text FROM {} AS t"
                    ).format(sql.Identifier(table)),
                    [ADDED_LATER.get(table, "tenant_id")],
                ).fetchall()
            )
            for table in DATA_TABLES
        }


def test_an_existing_database_converts_into_the_default_tenant_and_back(scratch_url) -> None:
    migrate_to(scratch_url, "0008.pinned-functions")
    with psycopg.connect(scratch_url) as conn:
        conn.execute(ROWS_AT_0008)
    single_tenant = snapshot(scratch_url)
    before = table_rows(scratch_url)
    assert all(before[t] for t in DATA_TABLES)

    # 0009 converts; the toolkit's later migrations come with it, and go back with it.
    later = tuple(
        p.name.removesuffix(".sql")
        for p in sorted(package_directory("migrations").glob("*.sql"))
        if not p.name.endswith(".rollback.sql") and p.name > "0009"
    )
    assert later[0] == "0009.tenants"
    assert migrate(scratch_url).applied == later
    assert table_rows(scratch_url) == before
    with psycopg.connect(scratch_url) as conn:
        for table in sorted(TENANT_OWNED - AFTER_0009):
            tenants = conn.execute(
                sql.SQL("SELECT DISTINCT tenant_id FROM {}").format(sql.Identifier(table))
            ).fetchall()
            assert tenants == [(DEFAULT,)], table
        assert conn.execute("SELECT id, name FROM tenants").fetchall() == [(DEFAULT, "default")]
        members = conn.execute("SELECT user_id FROM memberships ORDER BY user_id").fetchall()
        assert [str(m) for (m,) in members] == [
            "10000000-0000-4000-8000-000000000001",
            "10000000-0000-4000-8000-000000000002",
        ]
        report = audit_events.verify_chain(conn)
        assert (report.ok, report.checked) == (True, 2)
        # The converted database keeps working: the chain goes on from its head.
        assert audit_events.record(conn, {"action": "agent.deleted", "entity": "agent"}).seq == 3
        conn.rollback()
    converted = snapshot(scratch_url)
    assert converted != single_tenant

    assert rollback(scratch_url, len(later)).rolled_back == tuple(reversed(later))
    assert snapshot(scratch_url) == single_tenant
    assert table_rows(scratch_url) == before
    assert migrate(scratch_url).applied == later
    assert snapshot(scratch_url) == converted
    assert table_rows(scratch_url) == before


def test_rolling_back_0010_restores_the_tenant_functions_of_0009_exactly(scratch_url) -> None:
    """0010 drops the SET clause of toolkit_tenant() and toolkit_tenant_or_default() (every
    name in them qualified instead); its rollback puts back 0009's definitions, SET included."""
    migrate_to(scratch_url, "0009.tenants")
    at_0009 = snapshot(scratch_url)
    later = migrate(scratch_url).applied
    assert "0010.tenant-functions" in later
    with psycopg.connect(scratch_url) as conn:
        unpinned = conn.execute(
            "SELECT proname, proconfig FROM pg_proc WHERE proname LIKE 'toolkit\\_tenant%%' "
            "ORDER BY 1"
        ).fetchall()
    assert unpinned == [("toolkit_tenant", None), ("toolkit_tenant_or_default", None)]
    assert snapshot(scratch_url) != at_0009
    assert rollback(scratch_url, len(later)).rolled_back == tuple(reversed(later))
    assert snapshot(scratch_url) == at_0009


def test_rollback_refuses_while_another_tenant_has_rows_and_changes_nothing(scratch_url) -> None:
    applied = migrate(scratch_url).applied
    with psycopg.connect(scratch_url, autocommit=True) as conn:
        seed_tenant(conn, TENANT_A, "a")
        # A retention anchor refuses 0013's rollback (test_audit_partitions): none here.
        conn.execute("DELETE FROM audit_retention_anchors")
    later = [migration for migration in applied if migration > "0009.tenants"]
    if later:  # the toolkit's migrations after 0009 go first; 0009 is the one that refuses
        rollback(scratch_url, len(later))
    converted = snapshot(scratch_url)
    with pytest.raises(DatabaseError, match=r"cannot roll back 0009\.tenants") as refused:
        rollback(scratch_url)
    message = str(refused.value)
    assert "1 in tenants" in message and "1 in agents" in message and "2 in checkpoints" in message
    assert "row(s) belong to tenants other than the default one" in message
    assert [state.id for state in status(scratch_url) if state.applied][-1] == "0009.tenants"
    assert snapshot(scratch_url) == converted
