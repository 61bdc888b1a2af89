"""Read replicas with exact read-your-writes, on a real streaming standby.

A private primary is made and migrated, then a hot standby of it with
``pg_basebackup -R -X stream``, on a port of its own; both are stopped and
removed afterwards. One session writes (an agent's description, through
``agents.update`` in ``db.transaction()``) and reads (``agents.get``, marked
``-- route: replica``) with the commit position of its last write, for
10,000 operations (``TOOLKIT_CLUSTER_OPERATIONS`` scales it). Every read
must return the session's last written value: a stale read is one that
does not. Reads must go to both the replica and the primary (else the test
proves nothing about routing). The standby is killed (``pg_ctl stop -m
immediate``) a fifth of the way in and started again halfway: no error may
reach the caller, no read may reach the dead replica, and the replica must
serve reads again before the end.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.cluster.conftest import Row
from tests.reliability.private_servers import (
    PrivatePostgres,
    PrivateStandby,
    postgres_available,
    private_postgres,
)
from tests.support.tcp_proxy import TcpProxy
from toolkit.aio.db.database import AsyncDatabase
from toolkit.aio.repositories import agents as async_agents
from toolkit.config import Settings, load_settings
from toolkit.db import migrate
from toolkit.db.database import Database
from toolkit.db.replicas import CommitPosition
from toolkit.errors import NotFound, ToolkitError
from toolkit.repositories import agents, users

pytestmark = pytest.mark.skipif(
    not postgres_available(), reason="needs root, the postgres user and PostgreSQL 15 binaries"
)

OPERATIONS = int(os.environ.get("TOOLKIT_CLUSTER_OPERATIONS", "10000"))
AGENTS = 20


@dataclass
class Pair:
    primary: PrivatePostgres
    standby: PrivateStandby

    def settings(self) -> Settings:
        return load_settings(
            database_url=self.primary.url(),
            pool_min_size=0,
            pool_max_size=4,
            pool_timeout=5.0,
            connect_timeout=1.0,
            replica_retry_interval=0.2,
            replica_max_lag=5.0,
        )


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    """A migrated private primary and a streaming standby of it."""
    with private_postgres() as primary:
        with psycopg.connect(primary.url("postgres"), autocommit=True) as admin:
            admin.execute("CREATE DATABASE toolkit")
        migrate(primary.url())
        standby = PrivateStandby(primary)
        try:
            standby.start()
            yield Pair(primary, standby)
        finally:
            standby.stop()


@dataclass
class Tally:
    """What the loop did and saw."""

    operations: int = 0
    errors: int = 0
    stale: int = 0
    reads: int = 0
    error_names: list[str] = field(default_factory=list)

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        if len(self.error_names) < 5:
            self.error_names.append(f"{type(exc).__name__}: {exc}")


def _setup(db: Database, tag: str) -> dict[Any, Any]:
    """AGENTS agents owned by a new user: their latest records, by id."""
    with db.transaction() as tx:
        owner = users.create(tx, {"email": f"{tag}@example.com", "display_name": tag})
        made = [
            agents.create(tx, {"owner_id": owner.id, "name": f"agent {n}", "type": "assistant"})
            for n in range(AGENTS)
        ]
    return {agent.id: agent for agent in made}


def _wait_for_replay(pair: Pair, position: CommitPosition, timeout: float = 30) -> None:
    """Wait until the standby has replayed ``position`` (so a run starts from a caught-up one)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(pair.standby.url(), autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [str(position)])
            if row.fetchone() == (True,):
                return
            assert time.monotonic() < deadline, "the standby did not catch up"
            time.sleep(0.05)


def test_read_your_writes_through_a_standby_killed_and_restarted(
    pair: Pair, report, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="toolkit.db.replicas")
    tally = Tally()
    rng = random.Random(21)
    # Killed a fifth of the way in, started again halfway; the last quarter runs with
    # the standby back up (the restart is waited for there, however long it took).
    kill_at, restart_at, up_at = OPERATIONS // 5, OPERATIONS // 2, 3 * OPERATIONS // 4
    marks: dict[str, Any] = {}
    failures: list[BaseException] = []

    with Database(
        pair.settings(), replica_urls=[pair.standby.url()], warn_if_privileged=False
    ) as db:
        latest = _setup(db, "sync")
        token = db.commit_position
        assert token is not None
        _wait_for_replay(pair, token)
        ids = list(latest)

        def kill() -> None:
            try:
                pair.standby.kill()
            except BaseException as exc:  # reported below
                failures.append(exc)
            marks["killed"] = db.read_counts()

        def restart() -> None:
            marks["before restart"] = db.read_counts()
            began = time.monotonic()
            try:
                pair.standby.start_again()
            except BaseException as exc:
                failures.append(exc)
            marks["restarted at"] = time.monotonic()
            marks["restart took"] = marks["restarted at"] - began
            marks["restarted"] = db.read_counts()

        killer = threading.Thread(target=kill)
        restarter = threading.Thread(target=restart)
        written = ids[0]
        for k in range(OPERATIONS):
            if k == kill_at:
                killer.start()
            if k == restart_at:
                killer.join()
                restarter.start()
            if k == up_at:
                restarter.join()
            if (
                "restarted at" in marks
                and "used again" not in marks
                and db.read_counts()["replica"] > marks["restarted"]["replica"]
            ):
                marks["used again"] = time.monotonic() - marks["restarted at"]
            tally.operations += 1
            try:
                if k % 4 == 0:
                    written = rng.choice(ids)
                    before = latest[written]
                    with db.transaction() as tx:
                        latest[written] = agents.update(
                            tx, written, expected_version=before.version, description=f"op {k}"
                        )
                    token = db.commit_position
                else:
                    # Half the reads are of the row just written: read-your-writes at its
                    # hardest; the others of any row (the replica has often caught up).
                    target = written if k % 4 == 1 else rng.choice(ids)
                    with db.connection(read_after=token) as conn:
                        seen = agents.get(conn, target)
                    tally.reads += 1
                    if seen != latest[target]:
                        tally.stale += 1
            except ToolkitError as exc:
                tally.error(exc)
        restarter.join()
        counts = db.read_counts()

    used_again = marks.get("used again")
    recovered = (
        "never" if used_again is None else f"replica used again {used_again:.2f} s after restart"
    )
    report(
        Row(
            scenario="replica read-your-writes, standby killed and restarted (sync)",
            operations=tally.operations,
            errors_surfaced=tally.errors,
            stale_reads=tally.stale,
            lost=None,
            applied_twice=None,
            time_to_recover=recovered,
        )
    )
    down = {k: marks["before restart"][k] - marks["killed"][k] for k in counts}
    print(
        f"reads: {counts} (while the standby was down: {down}); "
        f"the restart took {marks.get('restart took', float('nan')):.2f} s",
        flush=True,
    )
    assert failures == []
    assert tally.errors == 0, tally.error_names
    assert tally.stale == 0
    assert counts["replica"] > 0 and counts["primary"] > 0, counts
    assert sum(counts.values()) == tally.reads
    assert down["replica"] == 0 and down["primary"] > 0, down  # none reached the dead replica
    said = [r.getMessage() for r in caplog.records if r.name == "toolkit.db.replicas"]
    assert used_again is not None, f"the restarted standby was not used again: {said}"
    # One line when the replica went, one when it came back: not one per read.
    assert len(said) == 2 and "skipped" in said[0] and "used again" in said[1], said


def test_replica_connections_cut_mid_read_fall_back_to_the_primary(pair: Pair, report) -> None:
    """A proxy in front of the standby slows each round trip (5 ms each way) and resets
    every connection every 300 ms: reads cut on the replica are served by the primary,
    none raises."""
    operations = max(OPERATIONS // 10, 200)
    tally = Tally()
    stop = threading.Event()
    cuts = 0
    with TcpProxy(upstream_port=pair.standby.port) as proxy:
        proxy.add_latency(0.005)
        replica = make_conninfo(pair.standby.url(), port=proxy.port)
        settings = pair.settings().model_copy(update={"replica_retry_interval": 0.05})
        with Database(settings, replica_urls=[replica], warn_if_privileged=False) as db:
            latest = _setup(db, "cut")
            token = db.commit_position
            assert token is not None
            _wait_for_replay(pair, token)

            def cut() -> None:
                nonlocal cuts
                while not stop.wait(0.3):
                    cuts += proxy.cut_all()

            cutter = threading.Thread(target=cut)
            cutter.start()
            try:
                ids = list(latest)
                # At least `operations` reads, and on (for at most 60 s) until a cut has
                # landed in the middle of a replica read at least once.
                deadline, k = time.monotonic() + 60, 0
                while k < operations or (
                    db.read_counts()["fallback"] == 0 and time.monotonic() < deadline
                ):
                    k += 1
                    tally.operations += 1
                    target = ids[k % len(ids)]
                    try:
                        with db.connection(read_after=token) as conn:
                            seen = agents.get(conn, target)
                        tally.reads += 1
                        if seen != latest[target]:
                            tally.stale += 1
                    except ToolkitError as exc:
                        tally.error(exc)
            finally:
                stop.set()
                cutter.join()
            counts = db.read_counts()
    report(
        Row(
            scenario="replica connections cut mid-read (sync)",
            operations=tally.operations,
            errors_surfaced=tally.errors,
            stale_reads=tally.stale,
            lost=None,
            applied_twice=None,
            time_to_recover="n/a",
        )
    )
    print(f"reads: {counts}; connections cut: {cuts}", flush=True)
    assert tally.errors == 0, tally.error_names
    assert tally.stale == 0
    assert counts["fallback"] > 0 and counts["replica"] > 0, counts


def test_a_lagging_replica_is_skipped_then_used_again(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    """Replay paused on the standby while the primary writes: past the lag bound the
    replica is skipped (one log line), even for reads that wait for no write; once
    replay resumes and catches up it serves them again (one more line)."""
    caplog.set_level(logging.WARNING, logger="toolkit.db.replicas")
    settings = pair.settings().model_copy(
        update={"replica_max_lag": 0.5, "replica_retry_interval": 0.1}
    )
    with Database(settings, replica_urls=[pair.standby.url()], warn_if_privileged=False) as db:
        latest = _setup(db, "lag")
        agent = next(iter(latest.values()))
        _wait_for_replay(pair, db.commit_position or CommitPosition.PRIMARY)

        def read() -> None:
            with db.connection(read_after=CommitPosition.START) as conn:
                agents.get(conn, agent.id)

        read()
        assert db.read_counts()["replica"] == 1
        with psycopg.connect(pair.standby.url(), autocommit=True) as standby:
            standby.execute("SELECT pg_wal_replay_pause()")
            try:
                with db.transaction() as tx:
                    agent = agents.update(
                        tx, agent.id, expected_version=agent.version, description="lagging"
                    )
                time.sleep(1.0)  # replay now trails what the standby received by > 0.5 s
                for _ in range(5):
                    time.sleep(0.15)  # past the retry interval: asked again each time
                    read()
                lagging = db.read_counts()
            finally:
                standby.execute("SELECT pg_wal_replay_resume()")
        assert db.commit_position is not None
        _wait_for_replay(pair, db.commit_position)
        time.sleep(0.15)
        read()
        after = db.read_counts()
    said = [r.getMessage() for r in caplog.records if r.name == "toolkit.db.replicas"]
    assert lagging == {"replica": 1, "primary": 5, "fallback": 0}, lagging
    assert after["replica"] == 2, after
    assert len(said) == 2 and "lags" in said[0] and "used again" in said[1], said


def test_a_query_not_routed_to_the_replica_keeps_the_blocks_reads_on_the_primary(
    pair: Pair,
) -> None:
    with Database(
        pair.settings(), replica_urls=[pair.standby.url()], warn_if_privileged=False
    ) as db:
        with db.transaction() as tx:
            owner = users.create(tx, {"email": "pin@example.com", "display_name": "P"})
            agent = agents.create(tx, {"owner_id": owner.id, "name": "pin", "type": "assistant"})
        token = db.commit_position
        assert token is not None
        _wait_for_replay(pair, token)
        with db.connection(read_after=token) as conn:
            assert agents.get(conn, agent.id) == agent
            assert db.read_counts()["replica"] == 1  # caught up: the replica served it
            # A write in the block (autocommit: committed at once, no position given):
            changed = agents.update(conn, agent.id, expected_version=agent.version, name="moved")
            assert agents.get(conn, agent.id) == changed  # read on the primary, not stale
        assert db.read_counts() == {"replica": 1, "primary": 1, "fallback": 0}


def test_tenant_scoped_reads_on_the_replica_see_their_own_writes_and_tenant_only(
    pair: Pair, report
) -> None:
    """The replica read runs in the door's tenant transaction (transaction_on): row level
    security on the standby shows the tenant its rows, and no other tenant's."""
    operations = max(OPERATIONS // 10, 100)
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(pair.primary.url(), autocommit=True) as admin:
        admin.execute(
            "DO $$ BEGIN CREATE ROLE replica_reader LOGIN IN ROLE toolkit_app; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        admin.execute(
            "INSERT INTO tenants (id, name) VALUES (%s, 'mine'), (%s, 'theirs')", [mine, theirs]
        )
    primary = make_conninfo(pair.primary.url(), user="replica_reader")
    standby = make_conninfo(pair.standby.url(), user="replica_reader")
    settings = pair.settings().model_copy(update={"database_url": primary})
    tally, leaked = Tally(), 0
    with Database(settings, replica_urls=[standby]) as db:
        with db.transaction(tenant=mine) as tx:
            owner = users.create(tx, {"email": "tenant@example.com", "display_name": "T"})
            agent = agents.create(tx, {"owner_id": owner.id, "name": "t", "type": "assistant"})
        for k in range(operations):
            tally.operations += 1
            try:
                if k % 2 == 0:
                    with db.transaction(tenant=mine) as tx:
                        agent = agents.update(
                            tx, agent.id, expected_version=agent.version, description=f"t{k}"
                        )
                    token = db.commit_position
                    continue
                with db.connection(tenant=mine, read_after=token) as conn:
                    tally.reads += 1
                    if agents.get(conn, agent.id) != agent:
                        tally.stale += 1
                with db.connection(tenant=theirs, read_after=token) as conn:
                    try:
                        agents.get(conn, agent.id)
                        leaked += 1
                    except NotFound:
                        pass
            except ToolkitError as exc:
                tally.error(exc)
        counts = db.read_counts()
    report(
        Row(
            scenario="replica read-your-writes, tenant-scoped (sync)",
            operations=tally.operations,
            errors_surfaced=tally.errors,
            stale_reads=tally.stale,
            lost=None,
            applied_twice=None,
            time_to_recover="n/a",
        )
    )
    print(f"reads: {counts}; another tenant saw the row {leaked} times", flush=True)
    assert tally.errors == 0, tally.error_names
    assert tally.stale == 0 and leaked == 0
    assert counts["replica"] > 0 and counts["primary"] > 0, counts


def test_read_your_writes_through_the_standby_async(pair: Pair, report) -> None:
    operations = max(OPERATIONS // 2, 100)
    tally = Tally()
    rng = random.Random(22)

    async def scenario() -> dict[str, int]:
        with Database(pair.settings(), warn_if_privileged=False) as setup_db:
            latest = _setup(setup_db, "async")
        ids = list(latest)
        db = AsyncDatabase(
            pair.settings(), replica_urls=[pair.standby.url()], warn_if_privileged=False
        )
        async with db:
            token: CommitPosition = CommitPosition.START
            written = ids[0]
            for k in range(operations):
                tally.operations += 1
                try:
                    if k % 4 == 0:
                        written = rng.choice(ids)
                        before = latest[written]
                        async with db.transaction() as tx:
                            latest[written] = await async_agents.update(
                                tx, written, expected_version=before.version, description=f"a{k}"
                            )
                        assert db.commit_position is not None
                        token = db.commit_position
                    else:
                        target = written if k % 4 == 1 else rng.choice(ids)
                        async with db.connection(read_after=token) as conn:
                            seen = await async_agents.get(conn, target)
                        tally.reads += 1
                        if seen != latest[target]:
                            tally.stale += 1
                except ToolkitError as exc:
                    tally.error(exc)
            return db.read_counts()

    counts = asyncio.run(scenario())
    report(
        Row(
            scenario="replica read-your-writes (async)",
            operations=tally.operations,
            errors_surfaced=tally.errors,
            stale_reads=tally.stale,
            lost=None,
            applied_twice=None,
            time_to_recover="n/a",
        )
    )
    print(f"reads: {counts}", flush=True)
    assert tally.errors == 0, tally.error_names
    assert tally.stale == 0
    assert counts["replica"] > 0 and counts["primary"] > 0, counts
