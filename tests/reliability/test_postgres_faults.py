"""PostgreSQL faults under a mixed write workload: every call either committed
(and its effect is there) or raised Unavailable (and nothing of it is there),
and the pool heals without restarting the process."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.core.factories import make_agent, make_execution, make_user
from tests.reliability.conftest import Row
from tests.support.tcp_proxy import TcpProxy
from toolkit.config import load_settings
from toolkit.db import Database
from toolkit.errors import Unavailable
from toolkit.repositories import Audit, agents, checkpoints, sessions

# tox -e reliability runs the full 10,000; the default run a quicker 2,000.
OPERATIONS = int(os.environ.get("TOOLKIT_RELIABILITY_OPERATIONS", "2000"))


@dataclass
class Ledger:
    """What the workload believes it wrote."""

    created: set[str] = field(default_factory=set)
    refused_creates: set[str] = field(default_factory=set)
    sequences: set[int] = field(default_factory=set)
    refused_sequences: set[int] = field(default_factory=set)
    increments: int = 0
    errors: int = 0
    last_error_at: float | None = None
    recoveries: list[float] = field(default_factory=list)

    def succeeded(self) -> None:
        if self.last_error_at is not None:
            self.recoveries.append(time.monotonic() - self.last_error_at)
            self.last_error_at = None

    def failed(self) -> None:
        self.errors += 1
        if self.last_error_at is None:
            self.last_error_at = time.monotonic()


def run_workload(db: Database, seed: dict, operations: range, ledger: Ledger) -> None:
    """Run operation numbers ``operations`` (unique across calls: names and sequences use them)."""
    owner, execution, counter = seed["owner"], seed["execution"], seed["counter"]
    for i in operations:
        kind = i % 3
        try:
            if kind == 0:
                name = f"op-{i}"
                with db.transaction() as tx:
                    agents.create(
                        tx,
                        {"owner_id": owner.id, "name": name, "type": "load"},
                        audit=Audit(owner.id),
                    )
            elif kind == 1:
                with db.transaction() as tx:
                    checkpoints.append(
                        tx, {"execution_id": execution.id, "sequence": i, "state": {"i": i}}
                    )
            else:
                with db.transaction() as tx:
                    current = sessions.get(tx, counter.id)
                    sessions.update(
                        tx,
                        counter.id,
                        expected_version=current.version,
                        state={"n": current.state.get("n", 0) + 1},
                    )
        except Unavailable:
            ledger.failed()
            if kind == 0:
                ledger.refused_creates.add(f"op-{i}")
            elif kind == 1:
                ledger.refused_sequences.add(i)
            continue
        ledger.succeeded()
        if kind == 0:
            ledger.created.add(f"op-{i}")
        elif kind == 1:
            ledger.sequences.add(i)
        else:
            ledger.increments += 1


def audit(superuser, seed: dict, ledger: Ledger) -> tuple[int, int]:
    """(data lost, duplicates applied) comparing the database with the ledger."""
    names = {r[0] for r in superuser.execute("SELECT name FROM agents WHERE type = 'load'")}
    audited = superuser.execute(
        "SELECT count(*) FROM audit_events AS e JOIN agents AS a ON a.id = e.entity_id "
        "WHERE a.type = 'load'"
    ).fetchone()[0]
    sequences = {
        r[0]
        for r in superuser.execute(
            "SELECT sequence FROM checkpoints WHERE execution_id = %s", [seed["execution"].id]
        )
    }
    counter = sessions.get(superuser, seed["counter"].id).state.get("n", 0)
    lost = len(ledger.created - names) + len(ledger.sequences - sequences)
    lost += max(0, ledger.increments - counter) + max(0, len(names) - audited)
    duplicates = len(names & ledger.refused_creates) + len(sequences & ledger.refused_sequences)
    duplicates += max(0, counter - ledger.increments) + len(
        names - ledger.created - ledger.refused_creates
    )
    return lost, duplicates


@pytest.fixture
def seed(conn) -> dict:
    owner = make_user(conn)
    agent = make_agent(conn, owner, type="counter")
    counter = sessions.create(conn, {"user_id": owner.id, "agent_id": agent.id, "state": {"n": 0}})
    return {"owner": owner, "execution": make_execution(conn), "counter": counter}


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    with TcpProxy(upstream_port=5432) as running:
        yield running


def via(url: str, port: int) -> str:
    params = conninfo_to_dict(url)
    params.update(host="127.0.0.1", port=str(port))
    return make_conninfo(**params)


def cutter(proxy: TcpProxy, stop: threading.Event, rng: random.Random, cuts: list[int]) -> None:
    """Reset every open connection at random moments, mid-statement or mid-COMMIT."""
    while not stop.wait(rng.uniform(0.05, 0.3)):
        cuts.append(proxy.cut_all())


def test_connections_cut_repeatedly_during_mixed_writes(
    database_url, seed, superuser, proxy, report
) -> None:
    settings = load_settings(
        database_url=via(database_url, proxy.port),
        pool_min_size=0,
        pool_max_size=2,
        pool_timeout=3.0,
        connect_timeout=1.0,
    )
    ledger = Ledger()
    stop = threading.Event()
    cuts: list[int] = []
    thread = threading.Thread(target=cutter, args=(proxy, stop, random.Random(7), cuts))
    started = time.monotonic()
    with Database(settings) as db:
        thread.start()
        try:
            run_workload(db, seed, range(OPERATIONS), ledger)
        finally:
            stop.set()
            thread.join()
        # The same pool, same process: healed.
        with db.connection() as conn:
            assert agents.count(conn, {"type": "load"}) == len(ledger.created)
    lost, duplicates = audit(superuser, seed, ledger)
    report(
        Row(
            "PostgreSQL connections cut repeatedly (proxy), mixed writes",
            OPERATIONS,
            ledger.errors,
            lost,
            duplicates,
            f"max {max(ledger.recoveries, default=0) * 1000:.0f} ms after a cut "
            f"({sum(1 for c in cuts if c)} cuts, {time.monotonic() - started:.0f} s run)",
        )
    )
    assert sum(1 for c in cuts if c) >= 10, "the faults never hit an open connection"
    assert ledger.errors > 0
    assert (lost, duplicates) == (0, 0)


def _pg_ctl(action: str) -> None:
    cluster = subprocess.run(["ls", "/etc/postgresql"], capture_output=True, text=True, check=True)
    version = cluster.stdout.split()[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        check=True,
        timeout=120,
        capture_output=True,
    )


def _ensure_postgres_running() -> None:
    for _ in range(60):
        if subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"], check=False).returncode == 0:
            return
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", "start"],
            check=False,
            capture_output=True,
        )
        time.sleep(1)
    raise RuntimeError("PostgreSQL did not come back")


@pytest.mark.service_restart
@pytest.mark.skipif(shutil.which("pg_ctlcluster") is None, reason="needs pg_ctlcluster (Debian)")
def test_postgres_restarted_during_mixed_writes(database_url, seed, report) -> None:
    settings = load_settings(
        database_url=database_url, pool_min_size=0, pool_max_size=2, pool_timeout=2.0
    )
    ledger = Ledger()
    restart_at = OPERATIONS // 3
    downtime: list[float] = []

    def restart_midway() -> None:
        began = time.monotonic()
        _pg_ctl("restart")
        downtime.append(time.monotonic() - began)

    with Database(settings) as db:
        try:
            run_workload(db, seed, range(restart_at), ledger)
            restarter = threading.Thread(target=restart_midway)
            restarter.start()
            run_workload(db, seed, range(restart_at, OPERATIONS), ledger)
            restarter.join()
        finally:
            _ensure_postgres_running()
        with db.connection() as conn:
            assert agents.count(conn, {"type": "load"}) == len(ledger.created)
    with psycopg.connect(database_url, autocommit=True) as check:
        lost, duplicates = audit(check, seed, ledger)
    report(
        Row(
            "PostgreSQL restarted (pg_ctlcluster restart) during mixed writes",
            OPERATIONS,
            ledger.errors,
            lost,
            duplicates,
            f"{max(ledger.recoveries, default=0):.1f} s (restart took {downtime[0]:.1f} s)",
        )
    )
    assert (lost, duplicates) == (0, 0)
