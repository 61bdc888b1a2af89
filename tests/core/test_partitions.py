"""The outbox partitioned by time (migration 0011) and ``toolkit maintain``.

Converting keeps every row and rolling back restores the catalog exactly;
maintain creates the coming partitions and drops the expired ones whose rows
are all sent, twice is a no-op, and it waits for the migration advisory lock;
the partitions are out of the application role's reach.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.conftest import server_url, url_as
from tests.core.test_tenancy_schema import migrate_to, snapshot
from toolkit.db.migrations import MIGRATION_LOCK_KEY, migrate, rollback
from toolkit.db.partitions import maintain
from toolkit.db.registry import package_directory

MIGRATION = "0011.outbox-partitions"
BEFORE = max(
    p.name[: -len(".sql")]
    for p in package_directory("migrations").glob("*.sql")
    if not p.name.endswith(".rollback.sql") and p.name < MIGRATION
)
HOUR = timedelta(hours=1)


@pytest.fixture
def scratch_url() -> Iterator[str]:
    name = f"toolkit_part_{uuid.uuid4().hex[:10]}"
    yield server_url(name)
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def outbox_rows(url: str) -> list[Any]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT to_jsonb(o) FROM outbox AS o ORDER BY seq").fetchall()


def partitions(conn: psycopg.Connection[Any]) -> list[tuple[str, datetime | None, datetime]]:
    rows = conn.execute(
        "SELECT partition::text, lower_bound, upper_bound "
        "FROM toolkit_partitions.partitions('public.outbox')"
    ).fetchall()
    return [(str(name), low, high) for name, low, high in rows]


def hourly(conn: psycopg.Connection[Any], *, retention: timedelta = HOUR) -> None:
    conn.execute(
        "UPDATE toolkit_partitions.policy SET partition_interval = '1 hour', premake = 3, "
        "retention = %s WHERE parent = 'public.outbox'",
        [retention],
    )


def enqueue_at(conn: psycopg.Connection[Any], created_at: datetime, *, sent: bool) -> None:
    conn.execute(
        "INSERT INTO outbox (queue, message_type, body, created_at, sent_at) "
        "VALUES ('q.t', 'T', '{}', %s, CASE WHEN %s THEN %s::timestamptz END)",
        [created_at, sent, created_at],
    )


def test_converting_keeps_every_row_and_rolling_back_restores_the_catalog(scratch_url) -> None:
    migrate_to(scratch_url, BEFORE)
    now = datetime.now(UTC)
    with psycopg.connect(scratch_url) as conn:
        for days in (30, 3, 0):
            enqueue_at(conn, now - timedelta(days=days), sent=days > 0)
        enqueue_at(conn, now, sent=False)
    unpartitioned = snapshot(scratch_url)
    rows = outbox_rows(scratch_url)
    assert len(rows) == 4

    assert migrate(scratch_url).applied[0] == MIGRATION
    assert outbox_rows(scratch_url) == rows
    with psycopg.connect(scratch_url) as conn:
        assert conn.execute(
            "SELECT relkind FROM pg_class WHERE oid = 'public.outbox'::regclass"
        ).fetchone() == ("p",)
        # The old rows sit in one partition below the current interval.
        homes = conn.execute(
            "SELECT tableoid::regclass::text, count(*) FROM outbox GROUP BY 1 ORDER BY 1"
        ).fetchall()
        assert [count for _, count in homes] == [2, 2]
        assert homes[1][0].startswith("toolkit_partitions.outbox_before_")
        # The identity goes on past the rows moved.
        conn.execute("INSERT INTO outbox (queue, message_type, body) VALUES ('q.t', 'T', '{}')")
        assert conn.execute("SELECT max(seq) FROM outbox").fetchone() == (5,)
        conn.rollback()
        # No DEFAULT partition: rows outside every partition are refused, not swallowed.
        with pytest.raises(psycopg.errors.CheckViolation, match="no partition"):
            enqueue_at(conn, now + timedelta(days=400), sent=False)
    partitioned = outbox_rows(scratch_url)

    later = migrate(scratch_url).applied  # nothing; what follows 0011 is rolled back with it
    assert later == ()
    count = sum(1 for _ in package_directory("migrations").glob("*.sql")) // 2
    newer = count - int(MIGRATION[:4]) + 1
    assert rollback(scratch_url, newer).rolled_back[-1] == MIGRATION
    assert snapshot(scratch_url) == unpartitioned
    assert outbox_rows(scratch_url) == partitioned == rows
    with psycopg.connect(scratch_url) as conn:
        schema = conn.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = 'toolkit_partitions'"
        ).fetchall()
        assert schema == []


def test_maintain_creates_the_coming_partitions_and_drops_only_sent_expired_ones(
    superuser, direct_database_url
) -> None:
    hourly(superuser)
    start = datetime.now(UTC).replace(minute=30, second=0, microsecond=0) + timedelta(days=5)
    first = maintain(direct_database_url, now=start)
    # Up to three hours past "now": the gap since the migration's last daily partition,
    # then hourly ones.
    made = partitions(superuser)
    assert first.created and made[-1][2] >= start + 3 * HOUR
    assert made[-1][2] - made[-1][1] == HOUR  # type: ignore[operator]
    assert maintain(direct_database_url, now=start).created == []  # twice: a no-op

    hour_start = start.replace(minute=0)
    enqueue_at(superuser, hour_start + timedelta(minutes=10), sent=True)
    enqueue_at(superuser, hour_start + HOUR + timedelta(minutes=10), sent=True)
    enqueue_at(superuser, hour_start + HOUR + timedelta(minutes=20), sent=False)
    before = {name for name, _, _ in partitions(superuser)}

    # Three hours on, with a retention of one hour: every partition that ended two
    # hours ago or more is expired; the one holding an unsent message is kept.
    later = maintain(direct_database_url, now=start + 3 * HOUR)
    after = {name for name, _, _ in partitions(superuser)}
    assert later.dropped and set(later.dropped) == before - after
    kept_name = "toolkit_partitions.outbox_" + (hour_start + HOUR).strftime("%Y%m%d_%H%M%S")
    assert later.kept == [kept_name] and kept_name in after
    assert superuser.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone() == (1,)
    assert superuser.execute(
        "SELECT count(*) FROM outbox WHERE created_at < %s", [hour_start + HOUR]
    ).fetchone() == (0,)  # the sent row went with its partition
    assert all(high > start + 3 * HOUR for _, _, high in partitions(superuser)[-3:])
    assert later.created  # and the coming ones for the new "now"

    again = maintain(direct_database_url, now=start + 3 * HOUR)
    assert (again.created, again.dropped, again.kept) == ([], [], [kept_name])
    # Sent at last: the next run drops it.
    superuser.execute("UPDATE outbox SET sent_at = now() WHERE sent_at IS NULL")
    assert maintain(direct_database_url, now=start + 3 * HOUR).dropped == [kept_name]


def test_maintain_waits_for_the_migration_lock(superuser, direct_database_url) -> None:
    hourly(superuser)
    future = datetime.now(UTC) + timedelta(days=5)
    done = threading.Event()
    with psycopg.connect(direct_database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK_KEY])
        runner = threading.Thread(
            target=lambda: (maintain(direct_database_url, now=future), done.set())
        )
        runner.start()
        time.sleep(1.5)
        assert not done.is_set(), "maintain ran while the migration lock was held"
        assert partitions(superuser)[-1][2] < future
        holder.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK_KEY])
        runner.join(30)
    assert done.is_set()
    assert partitions(superuser)[-1][2] >= future + 3 * HOUR


def test_the_application_role_reaches_the_outbox_only_through_its_parent(
    superuser, make_role, direct_database_url
) -> None:
    login = make_role("LOGIN")
    (partition, _, _) = partitions(superuser)[0]
    with psycopg.connect(url_as(direct_database_url, login)) as app:
        app.execute("SELECT set_config('toolkit.tenant_id', %s, false)", [str(uuid.UUID(int=0))])
        assert app.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
        app.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(partition)))
    policies = superuser.execute(
        "SELECT count(*) FROM pg_policies WHERE schemaname = 'public' AND tablename = 'outbox'"
    ).fetchone()
    assert policies == (4,)


def test_cli_maintain_prints_what_it_did_and_a_second_run_does_nothing(
    superuser, direct_database_url
) -> None:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "toolkit.cli",
                "maintain",
                "--database-url",
                direct_database_url,
            ],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )

    # Day-wide partitions ready three days ahead: one day more wanted makes one more.
    superuser.execute(
        "UPDATE toolkit_partitions.policy SET premake = 4 WHERE parent = 'public.outbox'"
    )
    first = run()
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("created toolkit_partitions.outbox_") == 1
    assert "maintain: 1 partition(s) created, 0 dropped" in first.stdout
    second = run()
    assert second.returncode == 0, second.stderr
    assert "maintain: 0 partition(s) created, 0 dropped" in second.stdout


def test_a_drop_blocked_by_a_reader_of_tenants_waits_detached_for_the_next_run(
    superuser, direct_database_url
) -> None:
    hourly(superuser, retention=timedelta(0))
    start = datetime.now(UTC).replace(minute=30, second=0, microsecond=0) + timedelta(days=5)
    maintain(direct_database_url, now=start)
    enqueue_at(superuser, start, sent=True)
    (home,) = superuser.execute("SELECT tableoid::regclass::text FROM outbox").fetchone()
    with psycopg.connect(direct_database_url) as reader:
        reader.execute("SELECT count(*) FROM tenants").fetchone()  # holds its lock till the end
        started = time.monotonic()
        blocked = maintain(direct_database_url, now=start + 2 * HOUR)
        assert time.monotonic() - started < 10  # never queued for long behind the reader
        assert home in blocked.awaiting_drop and home not in blocked.dropped
        # Detached: out of the outbox, which neither sees nor scans it any more.
        assert superuser.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
        assert home not in {name for name, _, _ in partitions(superuser)}
        reader.rollback()
    after = maintain(direct_database_url, now=start + 2 * HOUR)
    assert home in after.dropped and after.awaiting_drop == []
    assert superuser.execute("SELECT to_regclass(%s)", [home]).fetchone() == (None,)
