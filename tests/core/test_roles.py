"""The application role reads and writes rows but cannot ALTER, DROP or TRUNCATE.

Migration 0007 narrows it further: audit events are SELECT and INSERT only,
nobody but the owner creates objects in public (also where PostgreSQL 13
and 14 granted it to everyone), and the password hash is readable only
through ``user_credentials()``.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.conftest import server_url
from tests.core.factories import make_agent, make_user
from toolkit.config import load_settings
from toolkit.db import Database, migrate
from toolkit.errors import DatabaseError
from toolkit.repositories import agents, audit_events, users

APP_LOGIN = f"toolkit_app_login_{os.getpid()}"


@pytest.fixture
def app_url(database_url, superuser):
    superuser.execute(
        sql.SQL(
            "DO $$ BEGIN CREATE ROLE {} LOGIN IN ROLE toolkit_app; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        ).format(sql.Identifier(APP_LOGIN))
    )
    params = conninfo_to_dict(database_url)
    params["user"] = APP_LOGIN
    return make_conninfo(**params)


def test_the_application_role_reads_and_writes(app_url, superuser) -> None:
    with Database(load_settings(database_url=app_url, pool_min_size=0)) as db:
        with db.transaction() as tx:
            agent = make_agent(tx, description="as the app")
            audit_events.record(tx, {"action": "agent.checked", "entity": "agent"})
        with db.connection() as conn:
            assert conn.info.user == APP_LOGIN
            assert agents.get(conn, agent.id).description == "as the app"
            users.delete(conn, agent.owner_id)
            assert audit_events.verify_chain(conn).ok


def test_a_privileged_role_is_warned_about_once_and_the_app_role_is_not(
    app_url, database_url, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="toolkit.db.database")
    for url, warned in ((database_url, True), (app_url, False)):
        caplog.clear()
        with Database(load_settings(database_url=url)) as db:
            for _ in range(3):
                with db.connection() as conn:
                    agents.count(conn)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        if warned:
            assert len(warnings) == 1, warnings
            assert "a superuser" in warnings[0] and "protections" in warnings[0]
        else:
            assert warnings == []
    caplog.clear()
    with Database(load_settings(database_url=database_url), warn_if_privileged=False):
        pass
    assert caplog.records == []


@pytest.mark.parametrize(
    "statement",
    [
        "ALTER TABLE agents ADD COLUMN sneaky text",
        "DROP TABLE sessions",
        "TRUNCATE agents",
        "CREATE TABLE scratch (id int)",
        "DELETE FROM _yoyo_migration",
        "ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update",
    ],
)
def test_the_application_role_cannot_change_the_schema(app_url, statement) -> None:
    with (
        psycopg.connect(app_url, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(statement)


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit_events SET details = '{}'", "DELETE FROM audit_events"],
)
def test_audit_events_cannot_be_changed_by_privilege_not_only_by_trigger(
    app_url, superuser, statement
) -> None:
    with (
        Database(load_settings(database_url=app_url, pool_min_size=0)) as db,
        db.transaction() as tx,
    ):
        audit_events.record(tx, {"action": "agent.checked", "entity": "agent"})
    # The trigger answers restrict_violation; a refused privilege is checked first.
    with (
        psycopg.connect(app_url, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(statement)
    privileges = superuser.execute(
        "SELECT has_table_privilege('toolkit_app', 'audit_events', p) "
        "FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) AS p"
    ).fetchall()
    assert [granted for (granted,) in privileges] == [True, True, False, False]


@pytest.mark.parametrize(
    "statement",
    ["SELECT password_hash FROM users", "SELECT * FROM users", "TABLE users"],
)
def test_the_password_hash_is_readable_only_through_get_credentials(
    app_url, superuser, statement
) -> None:
    with Database(load_settings(database_url=app_url, pool_min_size=0)) as db:
        with db.transaction() as tx:
            user = make_user(tx, password_hash="$argon2id$v=19$planted")
        with db.connection() as conn:
            credentials = users.get_credentials(conn, user.email.upper())
            assert credentials is not None
            assert (credentials.id, credentials.password_hash) == (
                user.id,
                "$argon2id$v=19$planted",
            )
            assert users.get_credentials(conn, "nobody@example.com") is None
            # Every other users query still works without the column.
            assert users.get(conn, user.id).email == user.email
            assert users.count(conn) == 1
            users.set_password_hash(conn, user.id, "$argon2id$v=19$replaced")
            assert users.get_credentials(conn, user.email).password_hash.endswith("replaced")
    with (
        psycopg.connect(app_url, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(statement)
    definer = superuser.execute(
        "SELECT prosecdef, proconfig FROM pg_proc WHERE proname = 'user_credentials'"
    ).fetchone()
    assert definer == (True, ["search_path=pg_catalog, pg_temp"])


@pytest.fixture
def pg13_layout_url() -> Iterator[str]:
    """A new database whose public schema lets every role CREATE, as 13 and 14 made it."""
    name = f"toolkit_roles_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with psycopg.connect(server_url(name), autocommit=True) as conn:
            conn.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
        yield server_url(name)
    finally:
        with psycopg.connect(server_url(), autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def test_migrating_revokes_create_on_public_that_older_majors_granted(
    pg13_layout_url,
) -> None:
    migrate(pg13_layout_url)
    params = conninfo_to_dict(pg13_layout_url)
    with psycopg.connect(pg13_layout_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "DO $$ BEGIN CREATE ROLE {} LOGIN IN ROLE toolkit_app; "
                "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
            ).format(sql.Identifier(APP_LOGIN))
        )
    params["user"] = APP_LOGIN
    for statement in (
        "CREATE TABLE users_copy (id int)",
        "CREATE FUNCTION public.lower(int) RETURNS int LANGUAGE sql AS 'SELECT 1'",
    ):
        with (
            psycopg.connect(make_conninfo(**params), autocommit=True) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            conn.execute(statement)


def test_a_migration_owner_that_cannot_revoke_create_fails_loudly(pg13_layout_url) -> None:
    owner = f"toolkit_owner_{os.getpid()}"
    dbname = conninfo_to_dict(pg13_layout_url)["dbname"]
    with psycopg.connect(server_url(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE").format(sql.Identifier(owner)))
    try:
        with psycopg.connect(server_url(), autocommit=True) as admin:
            admin.execute(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(dbname), sql.Identifier(owner)
                )
            )
        # As on 13 and 14: the schema belongs to the bootstrap superuser, not the owner.
        with psycopg.connect(pg13_layout_url, autocommit=True) as conn:
            conn.execute("ALTER SCHEMA public OWNER TO postgres")
        params = conninfo_to_dict(pg13_layout_url) | {"user": owner}
        as_owner = make_conninfo(**params)
        with pytest.raises(DatabaseError, match="may still CREATE in schema public"):
            migrate(as_owner)
        with psycopg.connect(pg13_layout_url, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(owner)))
        assert migrate(as_owner).applied == ("0007.least-privilege",)
        with psycopg.connect(pg13_layout_url) as conn:
            public_create = conn.execute(
                "SELECT count(*) FROM pg_namespace AS n, aclexplode(n.nspacl) AS acl "
                "WHERE n.nspname = 'public' AND acl.grantee = 0 "
                "AND acl.privilege_type = 'CREATE'"
            ).fetchone()
        assert public_create == (0,)
    finally:
        with psycopg.connect(server_url(), autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
            )
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(owner)))
