"""Concurrency: optimistic updates lose nothing, claims are exclusive, and
concurrent migrations apply once."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import psycopg
import pytest

from tests.conftest import server_url
from tests.core.factories import make_agent, make_user, make_workflow
from tests.reliability.conftest import Row
from toolkit.config import load_settings
from toolkit.db import Database
from toolkit.db.migrations import status as migration_status
from toolkit.errors import StaleVersion
from toolkit.repositories import executions, sessions

# tox -e reliability runs 8 x 1,000; the default run 8 x 250.
UPDATES_PER_THREAD = int(os.environ.get("TOOLKIT_RELIABILITY_UPDATES", "250"))
THREADS = 8
ROWS = 4


def test_optimistic_updates_lose_no_increment(database_url, conn, report) -> None:
    owner = make_user(conn)
    agent = make_agent(conn, owner)
    rows = [
        sessions.create(conn, {"user_id": owner.id, "agent_id": agent.id, "state": {"n": 0}}).id
        for _ in range(ROWS)
    ]
    retries = Counter[str]()
    done = Counter[uuid.UUID]()
    errors: list[BaseException] = []
    lock = threading.Lock()
    settings = load_settings(database_url=database_url, pool_min_size=0, pool_max_size=THREADS)

    def worker(number: int, db: Database) -> None:
        for i in range(UPDATES_PER_THREAD):
            row = rows[(number + i) % ROWS]
            while True:
                try:
                    with db.connection() as c:
                        current = sessions.get(c, row)
                        sessions.update(
                            c,
                            row,
                            expected_version=current.version,
                            state={"n": current.state["n"] + 1},
                        )
                except StaleVersion:
                    with lock:
                        retries["stale"] += 1
                    continue
                except Exception as exc:  # counted in the row: any other error surfaced
                    with lock:
                        errors.append(exc)
                    break
                with lock:
                    done[row] += 1
                break

    started = time.monotonic()
    with Database(settings) as db:
        threads = [threading.Thread(target=worker, args=(n, db)) for n in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    stored = {row: sessions.get(conn, row).state["n"] for row in rows}
    total = sum(stored.values())
    succeeded = sum(done.values())
    expected = THREADS * UPDATES_PER_THREAD
    report(
        Row(
            f"{THREADS} threads x {UPDATES_PER_THREAD:,} optimistic updates to {ROWS} rows",
            expected,
            len(errors),
            None,
            sum(1 for row in rows if stored[row] != done[row]),
            max(0, succeeded - total),
            max(0, total - succeeded),
            f"n/a ({retries['stale']:,} stale-version retries, {time.monotonic() - started:.0f} s)",
        )
    )
    assert errors == []
    assert total == succeeded == expected
    assert stored == dict(done)


def test_workers_claim_each_execution_exactly_once(database_url, conn, report) -> None:
    workflow = make_workflow(conn)
    conn.execute(
        "INSERT INTO executions (workflow_id) SELECT %s FROM generate_series(1, 5000)",
        [workflow.id],
    )
    claimed: list[tuple[uuid.UUID, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    settings = load_settings(database_url=database_url, pool_min_size=0, pool_max_size=4)

    def worker(name: str, db: Database) -> None:
        mine = []
        try:
            with db.connection() as c:
                while (execution := executions.claim_next(c, worker_id=name)) is not None:
                    mine.append((execution.id, name))
        except Exception as exc:  # counted in the row: any error surfaced
            with lock:
                errors.append(exc)
        with lock:
            claimed.extend(mine)

    with Database(settings) as db:
        threads = [threading.Thread(target=worker, args=(f"w{n}", db)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    counts = Counter(execution for execution, _ in claimed)
    claimer = dict(claimed)
    in_database = dict(
        conn.execute(
            "SELECT id, worker_id FROM executions WHERE workflow_id = %s AND status = 'running'",
            [workflow.id],
        ).fetchall()
    )
    total = executions.count(conn, {"workflow_id": workflow.id})
    pending = executions.count(conn, {"status": "pending"})
    report(
        Row(
            "4 workers claiming 5,000 executions (SKIP LOCKED)",
            total,
            len(errors),
            None,
            # Claimed by one worker, recorded in the database under another.
            sum(1 for key, name in in_database.items() if claimer.get(key, name) != name),
            total - len(in_database.keys() & counts.keys()),
            sum(c - 1 for c in counts.values()) + len(in_database.keys() - counts.keys()),
            f"n/a ({pending:,} left pending)",
        )
    )
    assert errors == []
    assert len(claimed) == len(counts) == total == 5000
    assert in_database == claimer
    assert pending == 0


@pytest.fixture
def fresh_database():
    name = f"toolkit_concurrent_{uuid.uuid4().hex[:8]}"
    yield server_url(name)
    with psycopg.connect(server_url(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_concurrent_migrate_runs_apply_once(fresh_database, report) -> None:
    command = [sys.executable, "-m", "toolkit.cli", "migrate", "--database-url", fresh_database]
    runs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    results = [(run.wait(timeout=120), *run.communicate()) for run in runs]
    failures = [err for code, _, err in results if code != 0]
    appliers = [out for code, out, _ in results if "applied 0001.core-schema" in out]
    no_ops = [out for code, out, _ in results if "nothing to apply" in out]
    with psycopg.connect(fresh_database, autocommit=True) as check:
        recorded = Counter(
            row[0] for row in check.execute("SELECT migration_id FROM _yoyo_migration")
        )
    expected = [state.id for state in migration_status(fresh_database)]
    report(
        Row(
            "8 concurrent `toolkit migrate` processes on a new database",
            len(runs),
            len(failures),
            None,
            len(recorded.keys() - set(expected)),
            len(set(expected) - recorded.keys()),
            sum(n - 1 for n in recorded.values()) + max(0, len(appliers) - 1),
            f"n/a ({len(appliers)} applied, {len(no_ops)} waited then found nothing to apply)",
        )
    )
    assert failures == []
    assert sorted(recorded) == sorted(expected) and set(recorded.values()) == {1}
    assert len(appliers) == 1 and len(no_ops) == 7
