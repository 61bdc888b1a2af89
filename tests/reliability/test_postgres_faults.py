"""PostgreSQL faults under a mixed write workload.

Every call either committed (and its effect is there), raised Unavailable
(and nothing of it is there), or raised OutcomeUnknown, which is resolved
afterwards with ``Database.transaction_status`` and must agree with the data.
The pool heals without restarting the process. Each scenario proves its
fault hit the workload: calls ran before it, failed or stalled during it,
and ran after it.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.core.factories import make_agent, make_execution, make_user
from tests.reliability.conftest import Row
from tests.reliability.private_servers import postgres_available, private_postgres
from tests.support.tcp_proxy import TcpProxy
from toolkit.config import load_settings
from toolkit.db import Database
from toolkit.db.migrations import migrate
from toolkit.errors import OutcomeUnknown, Unavailable
from toolkit.repositories import Audit, agents, checkpoints, sessions

# tox -e reliability runs the full 10,000; the default run a quicker 2,000.
OPERATIONS = int(os.environ.get("TOOLKIT_RELIABILITY_OPERATIONS", "2000"))
# Calls run after the fault is over, to show the same pool works again.
TAIL = 60
# A call slower than this during an outage counts as stalled by it.
STALL_S = 0.5
RESTART_DOWN_S = 1.5


@dataclass(frozen=True)
class Attempt:
    """One call of the workload: when it ran and how it ended."""

    started: float
    ended: float
    outcome: str  # "ok", "unavailable" or "unknown"


@dataclass
class Ledger:
    """What the workload believes it wrote, call by call."""

    created: set[str] = field(default_factory=set)
    refused_creates: set[str] = field(default_factory=set)
    sequences: set[int] = field(default_factory=set)
    refused_sequences: set[int] = field(default_factory=set)
    increments: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    unknown: list[tuple[OutcomeUnknown, int]] = field(default_factory=list)
    """(the error, operation number) of each OutcomeUnknown."""
    ambiguous: set[int] = field(default_factory=set)
    """Operations whose outcome even the server cannot tell after a crash (a reused id)."""

    def applied(self, i: int) -> None:
        kind = i % 3
        if kind == 0:
            self.created.add(f"op-{i}")
        elif kind == 1:
            self.sequences.add(i)
        else:
            self.increments += 1

    def refused(self, i: int) -> None:
        kind = i % 3
        if kind == 0:
            self.refused_creates.add(f"op-{i}")
        elif kind == 1:
            self.refused_sequences.add(i)

    def count(self, outcome: str) -> int:
        return sum(1 for a in self.attempts if a.outcome == outcome)


def run_operation(db: Database, seed: dict[str, Any], i: int) -> None:
    """Operation number ``i`` (unique across calls: names and sequences use it)."""
    owner, execution, counter = seed["owner"], seed["execution"], seed["counter"]
    kind = i % 3
    with db.transaction() as tx:
        if kind == 0:
            agents.create(
                tx,
                {"owner_id": owner.id, "name": f"op-{i}", "type": "load"},
                audit=Audit(owner.id),
            )
        elif kind == 1:
            checkpoints.append(tx, {"execution_id": execution.id, "sequence": i, "state": {"i": i}})
        else:
            current = sessions.get(tx, counter.id)
            sessions.update(
                tx,
                counter.id,
                expected_version=current.version,
                state={"n": current.state.get("n", 0) + 1},
            )


def run_workload(
    db: Database, seed: dict[str, Any], operations: Iterable[int], ledger: Ledger
) -> None:
    for i in operations:
        started = time.monotonic()
        try:
            run_operation(db, seed, i)
        except Unavailable:
            ledger.refused(i)
            outcome = "unavailable"
        except OutcomeUnknown as exc:
            ledger.unknown.append((exc, i))
            outcome = "unknown"
        else:
            ledger.applied(i)
            outcome = "ok"
        ledger.attempts.append(Attempt(started, time.monotonic(), outcome))


def resolve_unknown(db: Database, ledger: Ledger, timeout: float = 30.0) -> Counter[str]:
    """Ask the server how each OutcomeUnknown ended and enter it in the ledger."""
    outcomes = Counter[str]()
    for error, i in ledger.unknown:
        deadline = time.monotonic() + timeout
        try:
            while (
                status := db.transaction_status(
                    error.xid, server_started_at=error.server_started_at
                )
            ) == "in progress":
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        except OutcomeUnknown:
            status = "ambiguous after the crash"
            ledger.ambiguous.add(i)
        outcomes[status] += 1
        if status == "committed":
            ledger.applied(i)
        elif status == "aborted":
            ledger.refused(i)
    return outcomes


def audit(check: psycopg.Connection[Any], seed: dict[str, Any], ledger: Ledger) -> tuple[int, ...]:
    """(lost, duplicates, wrong), comparing the database with the ledger."""
    names = {r[0] for r in check.execute("SELECT name FROM agents WHERE type = 'load'")}
    audited = check.execute(
        "SELECT count(*) FROM audit_events AS e JOIN agents AS a ON a.id = e.entity_id "
        "WHERE a.type = 'load'"
    ).fetchone()[0]
    execution = seed["execution"].id
    sequences = {
        r[0]
        for r in check.execute(
            "SELECT sequence FROM checkpoints WHERE execution_id = %s", [execution]
        )
    }
    wrong = check.execute(
        "SELECT count(*) FROM checkpoints WHERE execution_id = %s "
        "AND state <> jsonb_build_object('i', sequence)",
        [execution],
    ).fetchone()[0]
    counter = sessions.get(check, seed["counter"].id).state.get("n", 0)
    lost = len(ledger.created - names) + len(ledger.sequences - sequences)
    lost += max(0, ledger.increments - counter) + max(0, len(names) - audited)
    # An ambiguous operation may or may not be there: it is neither lost nor a duplicate.
    maybe_names = {f"op-{i}" for i in ledger.ambiguous}
    maybe_increments = sum(1 for i in ledger.ambiguous if i % 3 == 2)
    duplicates = len(names & ledger.refused_creates) + len(sequences & ledger.refused_sequences)
    duplicates += max(0, counter - ledger.increments - maybe_increments) + len(
        names - ledger.created - ledger.refused_creates - maybe_names
    )
    return lost, duplicates, wrong


def plant(conn: Any) -> dict[str, Any]:
    """The rows the workload writes against: an owner, an execution, a counter session."""
    owner = make_user(conn)
    agent = make_agent(conn, owner, type="counter")
    counter = sessions.create(conn, {"user_id": owner.id, "agent_id": agent.id, "state": {"n": 0}})
    return {"owner": owner, "execution": make_execution(conn), "counter": counter}


@dataclass(frozen=True)
class Impact:
    """How the workload met a fault window [began, ended]."""

    ok_before: int
    hit_during: int  # calls overlapping the window that failed, or stalled past STALL_S
    ok_after: int

    def proven(self) -> bool:
        return self.ok_before > 0 and self.hit_during > 0 and self.ok_after > 0


def impact(attempts: list[Attempt], began: float, ended: float) -> Impact:
    overlapping = [a for a in attempts if a.ended >= began and a.started <= ended]
    return Impact(
        ok_before=sum(1 for a in attempts if a.outcome == "ok" and a.ended < began),
        hit_during=sum(
            1 for a in overlapping if a.outcome != "ok" or a.ended - a.started > STALL_S
        ),
        ok_after=sum(1 for a in attempts if a.outcome == "ok" and a.started > ended),
    )


def recoveries(attempts: list[Attempt]) -> list[float]:
    """For each run of failed calls: from the first failure to the next commit."""
    out: list[float] = []
    failed_at: float | None = None
    for a in attempts:
        if a.outcome != "ok" and failed_at is None:
            failed_at = a.ended
        elif a.outcome == "ok" and failed_at is not None:
            out.append(a.ended - failed_at)
            failed_at = None
    return out


def describe_unknown(ledger: Ledger, resolved: Counter[str]) -> str:
    if not ledger.unknown:
        return ""
    parts = ", ".join(f"{n} {status}" for status, n in sorted(resolved.items()))
    return f"; outcome-unknown resolved by xid: {parts}"


@pytest.fixture
def seed(conn: Any) -> dict[str, Any]:
    return plant(conn)


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    with TcpProxy(upstream_port=5432) as running:
        yield running


def via(url: str, port: int) -> str:
    params = conninfo_to_dict(url)
    params.update(host="127.0.0.1", port=str(port))
    return make_conninfo(**params)


def cutter(proxy: TcpProxy, stop: threading.Event, rng: random.Random, cuts: list[float]) -> None:
    """Reset every open connection at random moments, mid-statement or mid-COMMIT."""
    while not stop.wait(rng.uniform(0.05, 0.3)):
        if proxy.cut_all():
            cuts.append(time.monotonic())


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
    cuts: list[float] = []
    thread = threading.Thread(target=cutter, args=(proxy, stop, random.Random(7), cuts))
    started = time.monotonic()
    with Database(settings) as db:
        thread.start()
        try:
            run_workload(db, seed, range(OPERATIONS), ledger)
        finally:
            stop.set()
            thread.join()
        # The same pool, same process, no more faults: it works again.
        run_workload(db, seed, range(OPERATIONS, OPERATIONS + TAIL), ledger)
        resolved = resolve_unknown(db, ledger)
    lost, duplicates, wrong = audit(superuser, seed, ledger)
    hit = impact(ledger.attempts, cuts[0], cuts[-1]) if cuts else Impact(0, 0, 0)
    report(
        Row(
            "PostgreSQL connections cut repeatedly (proxy), mixed writes",
            len(ledger.attempts),
            ledger.count("unavailable"),
            ledger.count("unknown"),
            wrong,
            lost,
            duplicates,
            f"max {max(recoveries(ledger.attempts), default=0) * 1000:.0f} ms from a failed "
            f"call to the next commit ({len(cuts)} cuts that hit open connections, "
            f"{time.monotonic() - started:.0f} s run{describe_unknown(ledger, resolved)})",
        )
    )
    assert len(cuts) >= 10, "the faults never hit an open connection"
    assert hit.proven(), f"the cuts did not visibly hit the workload: {hit}"
    assert resolved["in progress"] == 0, "an OutcomeUnknown never resolved"
    assert (lost, duplicates, wrong) == (0, 0, 0)


@pytest.mark.service_restart
@pytest.mark.skipif(
    not postgres_available(), reason="needs root, the postgres user and PostgreSQL 15 binaries"
)
def test_postgres_restarted_during_mixed_writes(report) -> None:
    """A private cluster is crashed (pg_ctl stop -m immediate), kept down 1.5 s and started
    again mid-run."""
    ledger = Ledger()
    window: dict[str, float] = {}
    failures: list[BaseException] = []
    with private_postgres() as cluster:
        url = cluster.url()
        migrate(url)
        settings = load_settings(
            database_url=url,
            pool_min_size=0,
            pool_max_size=2,
            pool_timeout=2.0,
            connect_timeout=1.0,
        )

        def restart() -> None:
            window["began"] = time.monotonic()
            try:
                cluster.restart("immediate", down_for=RESTART_DOWN_S)
            except BaseException as exc:  # reported by the test below
                failures.append(exc)
            window["ended"] = time.monotonic()

        restarter = threading.Thread(target=restart)
        with Database(settings) as db:
            with db.connection() as conn:
                seed = plant(conn)
            i = after = 0
            # At least OPERATIONS calls, and at least TAIL of them after the restart.
            while i < OPERATIONS or restarter.is_alive() or after < TAIL:
                if i == OPERATIONS // 3:
                    restarter.start()
                run_workload(db, seed, [i], ledger)
                i += 1
                if "ended" in window and ledger.attempts[-1].started > window["ended"]:
                    after += 1
            restarter.join()
            resolved = resolve_unknown(db, ledger)
        with psycopg.connect(url, autocommit=True) as check:
            lost, duplicates, wrong = audit(check, seed, ledger)
    hit = impact(ledger.attempts, window["began"], window["ended"])
    back = [a.ended - window["ended"] for a in ledger.attempts if a.outcome == "ok"]
    first_commit = min((t for t in back if t >= 0), default=None)
    report(
        Row(
            "PostgreSQL crashed and restarted (private cluster, pg_ctl stop -m immediate, "
            f"{RESTART_DOWN_S:g} s down, start) "
            "during mixed writes",
            len(ledger.attempts),
            ledger.count("unavailable"),
            ledger.count("unknown"),
            wrong,
            lost,
            duplicates,
            (
                "never"
                if first_commit is None
                else f"first commit {first_commit * 1000:.0f} ms after the server was back"
            )
            + f" (restart took {window['ended'] - window['began']:.1f} s; {hit.hit_during} "
            f"calls failed or stalled during it{describe_unknown(ledger, resolved)})",
        )
    )
    assert failures == [], f"the restart itself failed: {failures}"
    assert hit.proven(), f"the restart did not visibly hit the workload: {hit}"
    assert resolved["in progress"] == 0, "an OutcomeUnknown never resolved"
    assert (lost, duplicates, wrong) == (0, 0, 0)
