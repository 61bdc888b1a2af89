"""The inbox partitioned by the message's creation time (migration 0012).

Converting keeps every record (its creation time from the outbox row the
relay published it from, else when it was received) and rolling back
restores the catalog exactly; maintain drops the expired inbox partitions
and keeps the recent ones; the partitions are out of the application role's
reach.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.conftest import server_url, url_as
from tests.core.test_tenancy_schema import migrate_to, snapshot
from toolkit.db.migrations import migrate, rollback
from toolkit.db.partitions import maintain
from toolkit.db.registry import package_directory

MIGRATION = "0012.inbox-partitions"
HOUR = timedelta(hours=1)
RECORD_COLUMNS = "consumer, message_id, queue, received_at, tenant_id"


@pytest.fixture
def scratch_url() -> Iterator[str]:
    name = f"toolkit_inbox_{uuid.uuid4().hex[:10]}"
    yield server_url(name)
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def records(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            f"SELECT {RECORD_COLUMNS} FROM inbox ORDER BY consumer, message_id"
        ).fetchall()


def inbox_partitions(conn: psycopg.Connection[Any]) -> list[tuple[str, datetime | None, datetime]]:
    rows = conn.execute(
        "SELECT partition::text, lower_bound, upper_bound "
        "FROM toolkit_partitions.partitions('public.inbox')"
    ).fetchall()
    return [(str(name), low, high) for name, low, high in rows]


def record_at(conn: psycopg.Connection[Any], created_at: datetime) -> uuid.UUID:
    message_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO inbox (consumer, message_id, queue, created_at) VALUES ('c', %s, 'q', %s)",
        [message_id, created_at],
    )
    return message_id


def test_converting_keeps_every_record_and_rolling_back_restores_the_catalog(
    scratch_url: str,
) -> None:
    migrate_to(scratch_url, "0011.outbox-partitions")
    now = datetime.now(UTC)
    relayed = uuid.uuid4()
    with psycopg.connect(scratch_url) as conn:
        # A record of a message the relay published from this database's outbox...
        conn.execute(
            "INSERT INTO outbox (id, queue, message_type, body, created_at, sent_at) "
            "VALUES (%s, 'q.t', 'T', '{}', %s, %s)",
            [relayed, now - timedelta(minutes=5, microseconds=250), now],
        )
        conn.execute(
            "INSERT INTO inbox (consumer, message_id, queue, received_at) "
            "VALUES ('c.one', %s, 'q.t', %s), ('c.two', %s, 'q.t', %s), "
            "('c.one', %s, 'q.t', %s)",
            [relayed, now, uuid.uuid4(), now - timedelta(days=30), uuid.uuid4(), now],
        )
    unpartitioned = snapshot(scratch_url)
    rows = records(scratch_url)

    assert migrate(scratch_url).applied[0] == MIGRATION
    assert records(scratch_url) == rows
    with psycopg.connect(scratch_url) as conn:
        assert conn.execute(
            "SELECT relkind FROM pg_class WHERE oid = 'public.inbox'::regclass"
        ).fetchone() == ("p",)
        created = dict(conn.execute("SELECT message_id, created_at FROM inbox").fetchall())
        # ... keeps the creation time its redelivery carries (whole seconds, as the
        # relay sends it); the others, when they were received.
        sent_at = (now - timedelta(minutes=5, microseconds=250)).replace(microsecond=0)
        assert created[relayed] == sent_at
        for _, message_id, _, received_at, _ in rows:
            if message_id != relayed:
                assert created[message_id] == received_at
        homes = dict(
            conn.execute("SELECT tableoid::regclass::text, count(*) FROM inbox GROUP BY 1")
        )
        before = [home for home in homes if home.startswith("toolkit_partitions.inbox_before_")]
        assert len(before) == 1 and homes[before[0]] >= 1  # the 30-day-old record
        # The relayed message, redelivered, is recognised; a fresh one is not.
        seen = conn.execute(
            "SELECT toolkit_inbox_record('c.one', %s, 'q.t', %s)", [relayed, sent_at]
        ).fetchone()
        assert seen == (False,)
        conn.rollback()

    count = sum(1 for _ in package_directory("migrations").glob("*.sql")) // 2
    newer = count - int(MIGRATION[:4]) + 1
    assert rollback(scratch_url, newer).rolled_back[-1] == MIGRATION
    assert snapshot(scratch_url) == unpartitioned
    assert records(scratch_url) == rows
    with psycopg.connect(scratch_url) as conn:
        policies = conn.execute("SELECT parent FROM toolkit_partitions.policy").fetchall()
        assert policies == [("public.outbox",)]


def test_an_empty_inbox_still_gets_a_partition_for_what_came_before(scratch_url: str) -> None:
    """A message created before the migration (queued, never applied) finds a partition."""
    migrate(scratch_url)
    with psycopg.connect(scratch_url) as conn:
        (first, low, high) = inbox_partitions(conn)[0]
        assert first.startswith("toolkit_partitions.inbox_before_") and low is None
        assert high <= datetime.now(UTC)
        record_at(conn, datetime.now(UTC) - timedelta(days=3))


def hourly_inbox(conn: psycopg.Connection[Any], *, retention: timedelta) -> None:
    conn.execute(
        "UPDATE toolkit_partitions.policy SET partition_interval = '1 hour', premake = 3, "
        "retention = %s WHERE parent = 'public.inbox'",
        [retention],
    )


def test_maintain_drops_the_expired_inbox_partitions_and_keeps_recent_ones(
    superuser: psycopg.Connection[Any], direct_database_url: str
) -> None:
    hourly_inbox(superuser, retention=HOUR)
    start = datetime.now(UTC).replace(minute=30, second=0, microsecond=0) + timedelta(days=5)
    first = maintain(direct_database_url, now=start)
    # Five days on, the partition of everything before the migration has expired.
    assert any(name.startswith("toolkit_partitions.inbox_before_") for name in first.dropped)
    assert maintain(direct_database_url, now=start).created == []  # twice: a no-op
    hour_start = start.replace(minute=0)
    old = record_at(superuser, hour_start + timedelta(minutes=10))
    recent = record_at(superuser, hour_start + HOUR + timedelta(minutes=10))
    current = record_at(superuser, hour_start + 2 * HOUR + timedelta(minutes=10))

    # Two hours on, with a retention of one hour: the partitions that ended an hour
    # ago or more go (the first hour's); the next stay.
    later = maintain(direct_database_url, now=start + 2 * HOUR)
    first_hour = "toolkit_partitions.inbox_" + hour_start.strftime("%Y%m%d_%H%M%S")
    assert first_hour in later.dropped
    assert later.kept == []
    left = {mid for (mid,) in superuser.execute("SELECT message_id FROM inbox").fetchall()}
    assert left == {recent, current} and old not in left
    assert inbox_partitions(superuser)[0][1] == hour_start + HOUR
    # A record of the dropped range can no longer be made: no partition holds it.
    with pytest.raises(psycopg.errors.CheckViolation, match="no partition"):
        record_at(superuser, hour_start + timedelta(minutes=20))
    again = maintain(direct_database_url, now=start + 2 * HOUR)
    assert (again.created, again.dropped) == ([], [])


def test_the_application_role_reaches_the_inbox_only_through_its_parent(
    superuser: psycopg.Connection[Any], make_role: Any, direct_database_url: str
) -> None:
    login = make_role("LOGIN")
    partitions = inbox_partitions(superuser)
    assert partitions
    with psycopg.connect(url_as(direct_database_url, login)) as app:
        app.execute("SELECT set_config('toolkit.tenant_id', %s, false)", [str(uuid.UUID(int=0))])
        recorded = app.execute(
            "SELECT toolkit_inbox_record('c', %s, 'q', now())", [uuid.uuid4()]
        ).fetchone()
        assert recorded == (True,)
        assert app.execute("SELECT count(*) FROM inbox").fetchone() == (1,)
        app.commit()
        for partition, _, _ in partitions:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(partition)))
            app.rollback()
    policies = superuser.execute(
        "SELECT count(*) FROM pg_policies WHERE schemaname = 'public' AND tablename = 'inbox'"
    ).fetchone()
    assert policies == (4,)
