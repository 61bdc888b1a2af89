"""The application role reads and writes rows but cannot ALTER, DROP or TRUNCATE.

Migration 0007 narrows it further: audit events are SELECT and INSERT only,
nobody but the owner creates objects in public (also where PostgreSQL 13
and 14 granted it to everyone), and the password hash is readable only
through ``user_credentials()``. Migration 0008 pins every toolkit
function's search_path (a session's TEMP table cannot stand in for
audit_events), bounds the wait for the audit chain lock, and lets the hash
be changed only through ``set_user_password_hash()``. Every attack runs as a
LOGIN role that is a member of toolkit_app.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
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
from toolkit.db.registry import package_directory
from toolkit.db.tenancy import DEFAULT_TENANT
from toolkit.errors import DatabaseError, NotFound, Unavailable
from toolkit.repositories import agents, audit_events, users

APP_LOGIN = f"toolkit_app_login_{os.getpid()}"
TENANT = DEFAULT_TENANT
"""The application role works in a tenant (migration 0009); these tests, in the default one."""
TOOLKIT_MIGRATIONS = sorted(
    p.name.removesuffix(".sql")
    for p in package_directory("migrations").glob("*.sql")
    if not p.name.endswith(".rollback.sql")
)


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
        with db.transaction(tenant=TENANT) as tx:
            agent = make_agent(tx, description="as the app")
            audit_events.record(tx, {"action": "agent.checked", "entity": "agent"})
        with db.connection(tenant=TENANT) as conn:
            assert conn.info.user == APP_LOGIN
            assert agents.get(conn, agent.id).description == "as the app"
            # Users are shared by tenants: a role the policies bind deletes none (0009).
            with pytest.raises(NotFound):
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
                with db.connection(tenant=None if warned else TENANT) as conn:
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
        db.transaction(tenant=TENANT) as tx,
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
        with db.transaction(tenant=TENANT) as tx:
            user = make_user(tx, password_hash="$argon2id$v=19$planted")
        with db.connection(tenant=TENANT) as conn:
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
    assert definer == (True, [PINNED])


PINNED = "search_path=pg_catalog, public, pg_temp"
PINNED_WITHOUT_PUBLIC = "search_path=pg_catalog, pg_temp"
"""The tenant functions of 0009 name nothing in public: pinned without it."""
CHAIN_LOCK = f"SELECT pg_advisory_lock(audit_chain_lock_key('{TENANT}'))"
"""The advisory lock of the default tenant's audit chain."""


def app_database(app_url: str) -> Database:
    return Database(load_settings(database_url=app_url, pool_min_size=0))


UNPINNED = ("toolkit_tenant", "toolkit_tenant_or_default")
"""The two functions every statement on a tenant-owned table calls (migration 0010): a SET
clause makes each call save, set and restore search_path, a measurable share of a short
statement, so they pin nothing and name everything with its schema instead (checked below)."""


def test_every_toolkit_function_runs_with_a_pinned_search_path(superuser) -> None:
    unpinned = superuser.execute(
        "SELECT p.proname, p.proconfig FROM pg_proc AS p "
        "WHERE p.pronamespace = 'public'::regnamespace "
        "AND NOT EXISTS (SELECT 1 FROM pg_depend AS d WHERE d.objid = p.oid AND d.deptype = 'e') "
        "AND p.proconfig IS DISTINCT FROM ARRAY[%s] AND p.proconfig IS DISTINCT FROM ARRAY[%s]",
        [PINNED, PINNED_WITHOUT_PUBLIC],
    ).fetchall()
    assert sorted(unpinned) == [(name, None) for name in UNPINNED]


# What may stand bare in an unpinned function's body: plpgsql and SQL words, and its own
# variable. Anything else (a function, type, operator or table) must be pg_catalog's, named so.
_BODY_WORDS = {
    "begin", "constant", "declare", "end", "errcode", "exception", "hint", "if", "is", "null",
    "or", "raise", "return", "then", "true", "using", "setting",
}  # fmt: skip
_QUALIFIED = re.compile(r"\bOPERATOR\(pg_catalog\.[^)\s]+\)|\bpg_catalog\.[a-z_]+\b")


def unqualified_names(body: str) -> list[str]:
    """The words and operators in a function body that are not schema-qualified by
    pg_catalog (string literals and comments aside)."""
    code = re.sub(r"'(?:[^']|'')*'|--[^\n]*", " ", body)
    code = _QUALIFIED.sub(" ", code)
    code = re.sub(r"::\s+", " ", code.replace(":=", " "))  # a cast's type: qualified above
    code = re.sub(r"\b(?:ERRCODE|HINT)\s*=", " ", code)  # RAISE's options, not an operator
    found = [
        w for w in re.findall(r"[A-Za-z_][A-Za-z0-9_$.]*", code) if w.lower() not in _BODY_WORDS
    ]
    return found + re.findall(r"[=<>!~+\-*/%^&|#@?:]+", code)


def test_the_unpinned_tenant_functions_name_only_pg_catalog_objects(superuser) -> None:
    bodies = superuser.execute(
        "SELECT p.proname, p.prosrc, p.prosecdef FROM pg_proc AS p "
        "WHERE p.pronamespace = 'public'::regnamespace AND p.proname = ANY(%s) ORDER BY 1",
        [list(UNPINNED)],
    ).fetchall()
    assert [name for name, _, _ in bodies] == list(UNPINNED)
    for name, body, security_definer in bodies:
        assert not security_definer, name
        assert unqualified_names(body) == [], name
    # The check sees what it must refuse.
    assert unqualified_names("BEGIN RETURN current_setting('x')::uuid; END") == [
        "current_setting", "uuid", "::"
    ]  # fmt: skip
    assert unqualified_names("IF setting = '' THEN") == ["="]


def test_the_unpinned_tenant_functions_ignore_a_hostile_search_path(app_url, superuser) -> None:
    """A schema put first on the search path, shadowing every name the functions' bodies
    could reach unqualified (function, types, operator), changes neither answer nor TN001."""
    schema = f"hostile_{uuid.uuid4().hex[:8]}"
    other = "11111111-1111-4111-8111-111111111111"
    superuser.execute(
        sql.SQL(
            "CREATE SCHEMA {s}; GRANT USAGE ON SCHEMA {s} TO PUBLIC; "
            "CREATE FUNCTION {s}.current_setting(text, boolean) RETURNS text "
            "LANGUAGE sql AS $$ SELECT {other}::text $$; "
            "CREATE FUNCTION {s}.always(text, text) RETURNS boolean "
            "LANGUAGE sql AS $$ SELECT false $$; "
            "CREATE OPERATOR {s}.= (LEFTARG = text, RIGHTARG = text, FUNCTION = {s}.always); "
            "CREATE DOMAIN {s}.uuid AS pg_catalog.uuid CHECK (VALUE = {other}); "
            "CREATE DOMAIN {s}.text AS pg_catalog.text CHECK (VALUE = {other})"
        ).format(s=sql.Identifier(schema), other=sql.Literal(other))
    )
    try:
        with psycopg.connect(app_url, autocommit=True) as conn:  # a new session: compiled here
            conn.execute(sql.SQL("SET search_path = {}, pg_catalog").format(sql.Identifier(schema)))
            with conn.transaction():
                conn.execute(
                    "SELECT pg_catalog.set_config('toolkit.tenant_id', %s, true)", [str(TENANT)]
                )
                row = conn.execute(
                    "SELECT public.toolkit_tenant(), public.toolkit_tenant_or_default()"
                ).fetchone()
                assert row == (TENANT, TENANT)
            assert conn.execute("SELECT public.toolkit_tenant_or_default()").fetchone() == (
                uuid.UUID(int=0),
            )
            with pytest.raises(psycopg.Error) as refused:
                conn.execute("SELECT public.toolkit_tenant()")
            assert refused.value.sqlstate == "TN001"
    finally:
        superuser.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.mark.parametrize(
    "planted_seq",
    # 41: a forged link; bigint's max minus one: the next real row would take
    # the max, and every audited write after it would fail (bigint out of range).
    [41, 9223372036854775806],
    ids=["forged-link", "bigint-overflow"],
)
def test_a_temp_table_named_audit_events_neither_forges_nor_wedges_the_chain(
    app_url, planted_seq
) -> None:
    with app_database(app_url) as db:
        with db.connection(tenant=TENANT) as conn:
            audit_events.record(conn, {"action": "agent.checked", "entity": "agent"})
        with psycopg.connect(app_url, autocommit=True) as attacker:
            attacker.execute("CREATE TEMP TABLE audit_events (seq bigint, hash bytea)")
            attacker.execute("INSERT INTO audit_events VALUES (%s, '\\xdead')", [planted_seq])
            attacker.execute("BEGIN")
            attacker.execute(
                "SELECT pg_catalog.set_config('toolkit.tenant_id', %s, true)", [str(TENANT)]
            )
            (seq,) = attacker.execute(
                "INSERT INTO public.audit_events (action, entity, prev_hash, hash) "
                "VALUES ('agent.checked', 'agent', '', '') RETURNING seq"
            ).fetchone()
            attacker.execute("COMMIT")
        assert seq == 2
        with db.connection(tenant=TENANT) as conn:
            later = [
                audit_events.record(conn, {"action": "agent.checked", "entity": "agent"}).seq
                for _ in range(2)
            ]
            report = audit_events.verify_chain(conn)
    assert later == [3, 4]
    assert (report.ok, report.checked) == (True, 4)


def test_holding_the_audit_chain_lock_fails_audited_writes_within_10_seconds(
    app_url,
) -> None:
    with psycopg.connect(app_url, autocommit=True) as holder:
        holder.execute(CHAIN_LOCK)
        holder_pid = holder.info.backend_pid
        with app_database(app_url) as db:  # lock_timeout 0 (none), statement timeout 30 s
            started = time.monotonic()
            with (
                pytest.raises(Unavailable, match="audit chain lock") as refused,
                db.transaction(tenant=TENANT) as tx,
            ):
                audit_events.record(tx, {"action": "agent.checked", "entity": "agent"})
            waited = time.monotonic() - started
    assert 9.5 < waited < 15
    message = str(refused.value)
    assert "within 10s" in message and f"(pid {holder_pid})" in message
    assert "another session" in message and "not written" in message
    assert "database unavailable" not in message  # the server is fine; a lock is held


def test_a_shorter_lock_timeout_bounds_the_chain_lock_wait_and_is_kept(app_url) -> None:
    with (
        psycopg.connect(app_url, autocommit=True) as holder,
        app_database(app_url) as db,
    ):
        holder.execute(CHAIN_LOCK)
        started = time.monotonic()
        with (
            pytest.raises(Unavailable, match=r"audit chain lock .* within 200ms"),
            db.transaction(tenant=TENANT) as tx,
        ):
            tx.execute("SET LOCAL lock_timeout = '200ms'")
            audit_events.record(tx, {"action": "agent.checked", "entity": "agent"})
        assert time.monotonic() - started < 3
        # A wait that ends in time records the event and leaves lock_timeout as it was.
        release = threading.Timer(0.3, lambda: holder.execute("SELECT pg_advisory_unlock_all()"))
        release.start()
        try:
            with db.transaction(tenant=TENANT) as tx:
                tx.execute("SET LOCAL lock_timeout = '5s'")
                event = audit_events.record(tx, {"action": "agent.checked", "entity": "agent"})
                assert tx.execute("SHOW lock_timeout").fetchone() == ("5s",)
        finally:
            release.join()
        assert event.seq == 1
        with db.connection(tenant=TENANT) as conn:
            assert audit_events.verify_chain(conn).ok


def test_the_password_hash_cannot_be_updated_but_through_its_setter(app_url, superuser) -> None:
    with app_database(app_url) as db:
        with db.transaction(tenant=TENANT) as tx:
            user = make_user(tx, password_hash="$argon2id$v=19$planted")
        for statement in (
            "UPDATE users SET password_hash = 'x'",
            "INSERT INTO users (email, display_name) VALUES ('a@example.com', 'A') "
            "ON CONFLICT (lower(email)) DO UPDATE SET password_hash = 'x'",
        ):
            with (
                psycopg.connect(app_url, autocommit=True) as conn,
                pytest.raises(psycopg.errors.InsufficientPrivilege),
            ):
                conn.execute(statement)
        with db.connection(tenant=TENANT) as conn:
            # Every other column may still be updated.
            users.update(conn, user.id, expected_version=user.version, display_name="Renamed")
            users.set_password_hash(conn, user.id, "$argon2id$v=19$replaced")
            with pytest.raises(NotFound):
                users.set_password_hash(conn, uuid.uuid4(), "$argon2id$v=19$nobody")
    stored = superuser.execute(
        "SELECT password_hash, display_name FROM users WHERE id = %s", [user.id]
    ).fetchone()
    assert stored == ("$argon2id$v=19$replaced", "Renamed")
    definer = superuser.execute(
        "SELECT prosecdef, proconfig FROM pg_proc WHERE proname = 'set_user_password_hash'"
    ).fetchone()
    assert definer == (True, [PINNED])


def test_credentials_are_looked_up_by_exact_email_one_row_per_call(app_url) -> None:
    """What the README promises, and what it says is not prevented."""
    with app_database(app_url) as db:
        with db.transaction(tenant=TENANT) as tx:
            alice = make_user(tx, email="alice@example.com", password_hash="$hash$alice")
            make_user(tx, email="bob@example.com", password_hash="$hash$bob")
        with db.connection(tenant=TENANT) as conn:
            for pattern in ("%", "%@example.com", "alice@%", "_lice@example.com", "", None):
                assert conn.execute(
                    "SELECT count(*) FROM user_credentials(%s)", [pattern]
                ).fetchone() == (0,)
            found = users.get_credentials(conn, "ALICE@example.com")
            assert found is not None and found.id == alice.id
            # Not prevented: a role that runs arbitrary SQL names every email it can read.
            dumped = conn.execute(
                "SELECT c.password_hash FROM users AS u, LATERAL user_credentials(u.email) AS c "
                "ORDER BY u.email"
            ).fetchall()
    assert dumped == [("$hash$alice",), ("$hash$bob",)]


@pytest.fixture
def pg13_layout_url() -> Iterator[str]:
    """A new database whose public schema lets every role CREATE, as 13 and 14 made it.

    On a PostgreSQL 15 default database the REVOKE of 0007 changes nothing
    (PUBLIC has no CREATE there), so a check on one cannot fail without it:
    the CREATE checks run here, where the REVOKE is what takes it away.
    """
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
    with psycopg.connect(pg13_layout_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "DO $$ BEGIN CREATE ROLE {} LOGIN; "
                "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
            ).format(sql.Identifier(APP_LOGIN))
        )
    params = conninfo_to_dict(pg13_layout_url) | {"user": APP_LOGIN}
    statements = (
        "CREATE TABLE scratch (id int)",
        "CREATE FUNCTION public.lower(int) RETURNS int LANGUAGE sql AS 'SELECT 1'",
    )
    # Before the migration every role may: what the test checks is the REVOKE's doing.
    with psycopg.connect(make_conninfo(**params)) as conn:
        for statement in statements:
            conn.execute(statement)
        conn.rollback()
    migrate(pg13_layout_url)
    with psycopg.connect(pg13_layout_url, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT toolkit_app TO {}").format(sql.Identifier(APP_LOGIN)))
    for statement in statements:
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
        assert migrate(as_owner).applied == tuple(
            name for name in TOOLKIT_MIGRATIONS if name >= "0007"
        )
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
