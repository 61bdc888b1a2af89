"""Migrations: apply all, roll all back (nothing of ours left), apply again; concurrency."""

from __future__ import annotations

import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from tests.conftest import server_url
from toolkit.db.migrations import migrate, rollback, status
from toolkit.db.registry import package_directory
from toolkit.errors import InvalidInput

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
    undone = rollback(scratch_url)
    assert undone.rolled_back == tuple(reversed(ALL))
    assert objects(scratch_url) == set()
    assert migrate(scratch_url).applied == first.applied
    assert objects(scratch_url) == schema


def test_rollback_only_the_newest(scratch_url) -> None:
    migrate(scratch_url)
    assert rollback(scratch_url, 1).rolled_back == (ALL[-1],)
    assert status(scratch_url) == [(m, m != ALL[-1]) for m in ALL]
    with pytest.raises(InvalidInput):
        rollback(scratch_url, 0)


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
    undone = run("rollback", "--count", "1")
    assert undone.returncode == 0 and f"rolled back {ALL[-1]}" in undone.stdout
    assert "rolled back 0001.core-schema" in run("rollback").stdout
