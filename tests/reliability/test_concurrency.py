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
    lock = threading.Lock()
    settings = load_settings(database_url=database_url, pool_min_size=0, pool_max_size=THREADS)

    def worker(number: int, db: Database) -> None:
        for i in range(UPDATES_PER_THREAD):
            row = rows[(number + i) % ROWS]
            while True:
                with db.connection() as c:
                    current = sessions.get(c, row)
                    try:
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
    total = sum(sessions.get(conn, row).state["n"] for row in rows)
    expected = THREADS * UPDATES_PER_THREAD
    report(
        Row(
            f"{THREADS} threads x {UPDATES_PER_THREAD:,} optimistic updates to {ROWS} rows",
            expected,
            0,
            max(0, expected - total),
            max(0, total - expected),
            f"n/a ({retries['stale']:,} stale-version retries, {time.monotonic() - started:.0f} s)",
        )
    )
    assert total == expected
    for row in rows:
        assert sessions.get(conn, row).state["n"] == done[row]


def test_workers_claim_each_execution_exactly_once(database_url, conn, report) -> None:
    workflow = make_workflow(conn)
    conn.execute(
        "INSERT INTO executions (workflow_id) SELECT %s FROM generate_series(1, 5000)",
        [workflow.id],
    )
    claimed: list[uuid.UUID] = []
    lock = threading.Lock()
    settings = load_settings(database_url=database_url, pool_min_size=0, pool_max_size=4)

    def worker(name: str, db: Database) -> None:
        mine = []
        with db.connection() as c:
            while (execution := executions.claim_next(c, worker_id=name)) is not None:
                mine.append(execution.id)
        with lock:
            claimed.extend(mine)

    with Database(settings) as db:
        threads = [threading.Thread(target=worker, args=(f"w{n}", db)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    counts = Counter(claimed)
    pending = executions.count(conn, {"status": "pending"})
    running = executions.count(conn, {"status": "running"})
    report(
        Row(
            "4 workers claiming 5,000 executions (SKIP LOCKED)",
            5000,
            0,
            5000 - len(counts),
            sum(c - 1 for c in counts.values()),
            "n/a",
        )
    )
    assert len(claimed) == len(counts) == 5000
    assert (pending, running) == (0, 5000)


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
    report(
        Row(
            "8 concurrent `toolkit migrate` processes on a new database",
            8,
            len(failures),
            0,
            max(0, len(appliers) - 1),
            "n/a (advisory lock: one applies, seven wait then no-op)",
        )
    )
    assert failures == []
    assert len(appliers) == 1 and len(no_ops) == 7
