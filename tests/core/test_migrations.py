"""Migrations: apply all, roll all back (nothing of ours left), apply again; concurrency."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from yoyo import get_backend, read_migrations

from tests.conftest import server_url
from toolkit.db.migrations import MigrationState, _yoyo_url, migrate, rollback, status
from toolkit.db.registry import package_directory
from toolkit.errors import ConfigurationError, InvalidInput

ALL = tuple(
    sorted(
        p.name[: -len(".sql")]
        for p in package_directory("migrations").glob("*.sql")
        if not p.name.endswith(".rollback.sql")
    )
)


@pytest.fixture
def scratch_url():
    name = f"toolkit_mig_{uuid.uuid4().hex[:10]}"
    yield server_url(name)
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def objects(url: str) -> set[str]:
    """Our tables, functions and triggers (extension members excluded)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            """
            SELECT 'table ' || tablename FROM pg_tables
            WHERE schemaname = 'public' AND tablename NOT LIKE '%yoyo%'
            UNION ALL
            SELECT 'function ' || p.proname FROM pg_proc AS p
            JOIN pg_namespace AS n ON n.oid = p.pronamespace
            WHERE n.nspname = 'public' AND NOT EXISTS (
                SELECT 1 FROM pg_depend AS d WHERE d.objid = p.oid AND d.deptype = 'e'
            )
            UNION ALL
            SELECT 'index ' || indexname FROM pg_indexes
            WHERE schemaname = 'public' AND tablename NOT LIKE '%yoyo%'
            """
        ).fetchall()
    return {row[0] for row in rows}


def test_apply_rollback_all_and_apply_again(scratch_url) -> None:
    first = migrate(scratch_url)
    assert first.database_created
    assert first.applied == ALL
    schema = objects(scratch_url)
    assert {"table users", "table audit_events", "function audit_event_hash"} <= schema
    assert "index agents_name_trgm_idx" in schema
    assert migrate(scratch_url).applied == ()
    undone = rollback(scratch_url, None)
    assert undone.rolled_back == tuple(reversed(ALL))
    assert objects(scratch_url) == set()
    assert migrate(scratch_url).applied == first.applied
    assert objects(scratch_url) == schema


def test_rollback_only_the_newest(scratch_url) -> None:
    migrate(scratch_url)
    assert rollback(scratch_url).rolled_back == (ALL[-1],)  # one step by default
    assert status(scratch_url) == [MigrationState(m, m != ALL[-1]) for m in ALL]
    for bad in (0, -3, True, 1.5):
        with pytest.raises(InvalidInput):
            rollback(scratch_url, bad)  # type: ignore[arg-type]


def test_concurrent_migrate_runs_apply_once_without_error(scratch_url) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: migrate(scratch_url), range(8)))
    applied = [r.applied for r in results if r.applied]
    assert applied == [ALL]
    assert sum(r.database_created for r in results) <= 1


def test_cli_migrate_and_rollback_are_non_interactive(scratch_url) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "toolkit.cli", *args, "--database-url", scratch_url],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )

    applied = run("migrate")
    assert applied.returncode == 0, applied.stderr
    assert "applied 0001.core-schema" in applied.stdout
    assert "nothing to apply" in run("migrate").stdout
    pending_none = run("migrate", "--status")
    assert pending_none.returncode == 0
    assert f"{len(ALL)} applied, 0 pending" in pending_none.stdout
    undone = run("rollback")
    assert undone.returncode == 0 and undone.stdout.strip() == f"rolled back {ALL[-1]}"
    undone = run("rollback", "--count", "1")
    assert undone.returncode == 0 and undone.stdout.strip() == f"rolled back {ALL[-2]}"
    listed = run("migrate", "--status").stdout
    assert f"pending  toolkit  {ALL[-1]}" in listed and f"applied  toolkit  {ALL[0]}" in listed
    assert f"{len(ALL) - 2} applied, 2 pending" in listed
    assert "rolled back 0001.core-schema" in run("rollback", "--all").stdout
    both = run("rollback", "--all", "--count", "2")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_the_whole_conninfo_reaches_yoyos_connection(scratch_url) -> None:
    url = make_conninfo(
        scratch_url,
        application_name="toolkit-migrate-test",
        options="-c statement_timeout=7654",
        target_session_attrs="read-write",
        sslmode="disable",
    )
    migrate(url)
    backend = get_backend(_yoyo_url(url))
    try:
        conn = backend.connection
        assert conn.execute("SHOW application_name").fetchone() == ("toolkit-migrate-test",)
        assert conn.execute("SHOW statement_timeout").fetchone() == ("7654ms",)
        params = conn.info.get_parameters()
        assert params["target_session_attrs"] == "read-write"
        assert params["sslmode"] == "disable"
    finally:
        backend.connection.close()


def test_a_migrate_killed_mid_way_leaves_nothing_that_blocks_the_next(scratch_url) -> None:
    migrate(scratch_url)
    rollback(scratch_url)
    env = {**os.environ, "TOOLKIT_MIGRATION_DATABASE_URL": scratch_url}
    with psycopg.connect(scratch_url) as blocker:
        # Hold yoyo's log table so the run stops mid-way, after taking yoyo's lock row.
        blocker.execute("LOCK TABLE _yoyo_migration IN ACCESS EXCLUSIVE MODE")
        run = subprocess.Popen(
            [sys.executable, "-m", "toolkit.cli", "migrate"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        with psycopg.connect(scratch_url, autocommit=True) as watcher:
            while not watcher.execute("SELECT count(*) FROM yoyo_lock").fetchone()[0]:
                assert time.monotonic() < deadline, "the migrate run never took yoyo's lock"
                time.sleep(0.05)
        os.kill(run.pid, signal.SIGKILL)
        run.wait(10)
    started = time.monotonic()
    again = subprocess.run(
        [sys.executable, "-m", "toolkit.cli", "migrate"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    assert f"applied {ALL[-1]}" in again.stdout
    assert time.monotonic() - started < 8  # yoyo's own lock would have waited 10 s and failed


# An application's migrations: the older one has no rollback file, the newer one has.
APP_MIGRATIONS = {
    "app-0001.notes.sql": "CREATE TABLE app_notes (id int PRIMARY KEY);\n",
    "app-0002.tags.sql": "CREATE TABLE app_tags (id int PRIMARY KEY);\n",
    "app-0002.tags.rollback.sql": "DROP TABLE app_tags;\n",
}


@pytest.fixture
def app_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "app-migrations"
    folder.mkdir()
    for name, text in APP_MIGRATIONS.items():
        (folder / name).write_text(text)
    return folder


def app_tables(url: str) -> set[str]:
    return {name for name in objects(url) if name.startswith("table app_")}


def test_rollback_refuses_a_migration_without_rollback_before_reverting_any(
    scratch_url, app_folder
) -> None:
    folders = [app_folder]
    assert migrate(scratch_url, folders).applied == (*ALL, "app-0001.notes", "app-0002.tags")
    missing = str(app_folder / "app-0001.notes.rollback.sql")
    for count in (None, 2, len(ALL) + 2):
        # app-0002.tags could be reverted, but it is not: no partial state.
        with pytest.raises(ConfigurationError, match=r"app-0001\.notes") as refused:
            rollback(scratch_url, count, folders)
        assert missing in str(refused.value) and "nothing was rolled back" in str(refused.value)
        assert app_tables(scratch_url) == {"table app_notes", "table app_tags"}
        assert all(state.applied for state in status(scratch_url, folders))
    assert rollback(scratch_url, 1, folders).rolled_back == ("app-0002.tags",)
    with pytest.raises(ConfigurationError, match=r"app-0001\.notes"):
        rollback(scratch_url, 1, folders)
    assert app_tables(scratch_url) == {"table app_notes"}
    # What was refused is still recorded as applied: migrate applies only what was reverted.
    assert migrate(scratch_url, folders).applied == ("app-0002.tags",)


def test_cli_rollback_of_a_migration_without_rollback_exits_non_zero_naming_it(
    scratch_url, app_folder
) -> None:
    env = {
        **os.environ,
        "TOOLKIT_MIGRATION_DATABASE_URL": scratch_url,
        "TOOLKIT_MIGRATIONS_PATH": str(app_folder),
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "toolkit.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )

    assert run("migrate").returncode == 0
    assert run("rollback").stdout.strip() == "rolled back app-0002.tags"
    for args in (["rollback"], ["rollback", "--count", "3"], ["rollback", "--all"]):
        refused = run(*args)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert refused.stdout == ""  # nothing reported as rolled back
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and str(app_folder / "app-0001.notes.rollback.sql") in lines[0]
        assert app_tables(scratch_url) == {"table app_notes"}
    again = run("migrate")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "applied app-0002.tags"


def security_state(url: str) -> set[str]:
    """Our functions (definition, settings, grants) and every table and column grant."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            """
            SELECT 'function ' || pg_get_functiondef(p.oid) || ' acl '
                || coalesce(p.proacl::text, 'default')
            FROM pg_proc AS p
            WHERE p.pronamespace = 'public'::regnamespace AND NOT EXISTS (
                SELECT 1 FROM pg_depend AS d WHERE d.objid = p.oid AND d.deptype = 'e'
            )
            UNION ALL
            SELECT 'table ' || c.relname || ' acl ' || coalesce(c.relacl::text, 'default')
            FROM pg_class AS c
            WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
            UNION ALL
            SELECT 'column ' || c.relname || '.' || a.attname || ' acl ' || a.attacl::text
            FROM pg_attribute AS a
            JOIN pg_class AS c ON c.oid = a.attrelid
            WHERE c.relnamespace = 'public'::regnamespace AND a.attacl IS NOT NULL
            """
        ).fetchall()
    return {row[0] for row in rows}


def test_rolling_back_0008_restores_the_functions_and_grants_of_0007(scratch_url) -> None:
    before = [m for m in ALL if m < "0008"]
    reference_name = f"toolkit_mig_{uuid.uuid4().hex[:10]}"
    reference = server_url(reference_name)
    migrate(reference)  # creates it; then rebuilt up to 0007 only
    try:
        rollback(reference, None)
        backend = get_backend(_yoyo_url(reference))
        try:
            wanted = read_migrations(str(package_directory("migrations"))).filter(
                lambda m: m.id in before
            )
            with backend.lock():
                backend.apply_migrations(backend.to_apply(wanted))
        finally:
            backend.connection.close()
        assert [s.id for s in status(reference) if s.applied] == before
        as_of_0007 = security_state(reference)
    finally:
        with psycopg.connect(server_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{reference_name}" WITH (FORCE)')
    migrate(scratch_url)
    hardened = security_state(scratch_url)
    assert hardened != as_of_0007
    assert any("set_user_password_hash" in entry for entry in hardened)
    rollback(scratch_url, len(ALL) - len(before))
    assert security_state(scratch_url) == as_of_0007
