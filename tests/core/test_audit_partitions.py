"""The audit log partitioned by time (migration 0013): retention drops a partition and the
hash chain goes on from its retention anchors.

Rows of the past are written by a superuser with the triggers off
(``session_replication_role = replica``), linked exactly as the chain trigger
links them (``audit_event_hash``), into partitions of past weeks: the chain
trigger stamps ``now()``, and a partition holding now cannot expire without
leaving the present without a partition. ``toolkit maintain`` then drops
what its policy says has expired; verification starts from the anchors it
recorded, and still reports an edited anchor, a forged one and an edited row.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import sql

from tests.conftest import server_url, url_as
from tests.core.test_tenancy_schema import migrate_to, snapshot
from toolkit.audit_anchors import FindingKind, verify, write_anchor
from toolkit.db import partitions
from toolkit.db.migrations import migrate, rollback
from toolkit.db.partitions import maintain
from toolkit.db.registry import package_directory
from toolkit.db.tenancy import DEFAULT_TENANT
from toolkit.repositories import audit_events
from toolkit.storage import LocalStorage, Storage

MIGRATION = "0013.audit-partitions"
BEFORE = max(
    p.name[: -len(".sql")]
    for p in package_directory("migrations").glob("*.sql")
    if not p.name.endswith(".rollback.sql") and p.name < MIGRATION
)
FROM_THIS_ON = [
    p.name
    for p in package_directory("migrations").glob("*.sql")
    if not p.name.endswith(".rollback.sql") and p.name >= MIGRATION
]
"""This migration and the ones after it: what rolling it back reverts."""
WEEK = timedelta(days=7)
OTHER_TENANT = UUID("00000000-0000-4000-8000-0000000000b2")


@pytest.fixture
def scratch_url() -> Iterator[str]:
    name = f"toolkit_apart_{uuid.uuid4().hex[:10]}"
    yield server_url(name)
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def anchors(tmp_path: Path) -> Storage:
    return LocalStorage(tmp_path / "anchors")


def append_at(
    superuser: psycopg.Connection[Any], created_at: datetime, *, tenant: UUID = DEFAULT_TENANT
) -> int:
    """Append one event of ``tenant`` stamped ``created_at``, linked as the chain trigger
    links (which would stamp now()); returns its seq."""
    superuser.execute("SET session_replication_role = replica")
    try:
        (seq,) = superuser.execute(
            "INSERT INTO audit_events "
            "(id, seq, action, entity, details, created_at, prev_hash, hash, tenant_id) "
            "SELECT n.id, n.seq, 'thing.happened', 'thing', n.details, %(at)s, n.prev, "
            "audit_event_hash(n.prev, n.seq, n.id, NULL, 'thing.happened', 'thing', NULL, "
            "n.details, %(at)s), %(tenant)s "
            "FROM (SELECT gen_random_uuid() AS id, jsonb_build_object('at', %(at)s::text) "
            "AS details, coalesce(max(a.seq), 0) + 1 AS seq, coalesce((SELECT b.hash FROM "
            "audit_events AS b WHERE b.tenant_id = %(tenant)s ORDER BY b.seq DESC LIMIT 1), "
            "'\\x') AS prev FROM audit_events AS a WHERE a.tenant_id = %(tenant)s) AS n "
            "RETURNING seq",
            {"at": created_at, "tenant": tenant},
        ).fetchone()
        # The chain trigger advances the head in the same statement: so does this.
        superuser.execute(
            "INSERT INTO audit_chain_heads (tenant_id, seq, hash) "
            "SELECT tenant_id, seq, hash FROM audit_events WHERE tenant_id = %s AND seq = %s "
            "ON CONFLICT (tenant_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            [tenant, seq],
        )
    finally:
        superuser.execute("SET session_replication_role = origin")
    return int(seq)


def past_partition(superuser: psycopg.Connection[Any], weeks_ago: int) -> tuple[str, datetime]:
    """Create the audit partition of the week ``weeks_ago`` weeks back; its name and start."""
    (start,) = superuser.execute(
        "SELECT toolkit_partitions.floor_time(now() - %s * interval '7 days', '7 days')",
        [weeks_ago],
    ).fetchone()
    (name,) = superuser.execute(
        "SELECT toolkit_partitions.create_partition('public.audit_events', %s, %s)::text",
        [start, start + WEEK],
    ).fetchone()
    return str(name), start


def record(conn: Any, count: int) -> None:
    for n in range(count):
        audit_events.record(
            conn, {"action": "thing.happened", "entity": "thing", "details": {"n": n}}
        )


def retention_anchors(superuser: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return superuser.execute(
        "SELECT tenant_id, seq, hash, dropped_partition FROM audit_retention_anchors "
        "ORDER BY tenant_id, seq"
    ).fetchall()


def hash_of(superuser: psycopg.Connection[Any], seq: int, tenant: UUID = DEFAULT_TENANT) -> bytes:
    (digest,) = superuser.execute(
        "SELECT hash FROM audit_events WHERE tenant_id = %s AND seq = %s", [tenant, seq]
    ).fetchone()
    return bytes(digest)


@pytest.fixture
def dropped_head(superuser, conn, direct_database_url) -> dict[str, Any]:
    """The default tenant's chain: seq 1..4 three years ago, 5..7 now; maintain with the
    default policy (weekly, two years) drops the old week, the anchor at seq 4 recorded."""
    old, start = past_partition(superuser, 156)
    for day in range(4):
        append_at(superuser, start + timedelta(days=day))
    head_hash = hash_of(superuser, 4)
    record(conn, 3)
    report = maintain(direct_database_url)
    assert old in report.dropped
    return {"partition": old, "head_hash": head_hash, "report": report}


def test_policy_defaults_are_weekly_partitions_kept_two_years(superuser) -> None:
    row = superuser.execute(
        "SELECT partition_interval, premake, retention, keep_while, before_drop::text "
        "FROM toolkit_partitions.policy WHERE parent = 'public.audit_events'"
    ).fetchone()
    assert row == (WEEK, 4, timedelta(days=730), "false", "toolkit_partitions.audit_retire")


def test_a_dropped_head_leaves_its_anchor_and_the_chain_verifies_from_it(
    dropped_head, superuser, conn, anchors
) -> None:
    assert retention_anchors(superuser) == [
        (DEFAULT_TENANT, 4, dropped_head["head_hash"], dropped_head["partition"])
    ]
    assert superuser.execute("SELECT min(seq), count(*) FROM audit_events").fetchone() == (5, 3)
    assert superuser.execute("SELECT to_regclass(%s)", [dropped_head["partition"]]).fetchone() == (
        None,
    )
    # The database's check and the one in Python both start from the anchor.
    assert audit_events.verify_chain(conn).ok
    assert write_anchor(conn, anchors) is not None
    report = verify(conn, anchors)
    assert report.ok, report.findings
    assert (report.rows_checked, report.dropped_by_retention, report.head_sequence) == (3, 4, 7)
    assert "4 older row(s) dropped by retention" in report.summary()


def test_maintain_twice_and_a_run_killed_before_its_drop_are_consistent(
    superuser, conn, direct_database_url, anchors
) -> None:
    old, start = past_partition(superuser, 156)
    for day in range(3):
        append_at(superuser, start + timedelta(days=day))
    record(conn, 2)
    # Killed after recording, before the detach: the anchor agrees with the row still there.
    superuser.execute("SELECT toolkit_partitions.audit_retire(%s::regclass)", [old])
    assert [seq for _, seq, _, _ in retention_anchors(superuser)] == [3]
    assert audit_events.verify_chain(conn).ok
    assert write_anchor(conn, anchors) is not None
    assert verify(conn, anchors).ok
    # Killed after a detach: the next run records (again) and drops the detached table.
    superuser.execute(sql.SQL("ALTER TABLE audit_events DETACH PARTITION {}").format(sql.SQL(old)))
    first = maintain(direct_database_url)
    assert old in first.dropped
    recorded = retention_anchors(superuser)
    assert [seq for _, seq, _, _ in recorded] == [3]
    again = maintain(direct_database_url)
    assert (again.created, again.dropped, again.kept) == ([], [], [])
    assert retention_anchors(superuser) == recorded
    report = verify(conn, anchors)
    assert report.ok, report.findings
    assert report.dropped_by_retention == 3


def test_a_run_killed_right_after_its_detach_has_anchored_the_chain_already(
    superuser, direct_database_url, monkeypatch
) -> None:
    """While a detached partition waits for its drop, the chain trigger no longer sees its
    rows: the anchors must be there before the detach, or the next event starts over."""
    superuser.execute("INSERT INTO tenants (id, name) VALUES (%s, 'other')", [OTHER_TENANT])
    old, start = past_partition(superuser, 156)
    for day in range(2):
        append_at(superuser, start + timedelta(days=day), tenant=OTHER_TENANT)
    last = hash_of(superuser, 2, OTHER_TENANT)

    def killed(*_: Any) -> None:
        raise KeyboardInterrupt("killed after the detach")

    monkeypatch.setattr(partitions, "_drop_detached", killed)
    with pytest.raises(KeyboardInterrupt):
        maintain(direct_database_url)
    assert superuser.execute(
        "SELECT relispartition FROM pg_class WHERE oid = %s::regclass", [old]
    ).fetchone() == (False,)
    superuser.execute("SELECT set_config('toolkit.tenant_id', %s, false)", [str(OTHER_TENANT)])
    superuser.execute(
        "INSERT INTO audit_events (action, entity, prev_hash, hash) "
        "VALUES ('thing.happened', 'thing', '', '')"
    )
    assert superuser.execute(
        "SELECT seq, prev_hash FROM audit_events WHERE tenant_id = %s", [OTHER_TENANT]
    ).fetchone() == (3, last)


def test_a_partition_detached_by_hand_is_anchored_before_maintain_drops_it(
    superuser, conn, direct_database_url
) -> None:
    old, start = past_partition(superuser, 156)
    append_at(superuser, start)
    append_at(superuser, start + timedelta(hours=1))
    record(conn, 1)
    superuser.execute(sql.SQL("ALTER TABLE audit_events DETACH PARTITION {}").format(sql.SQL(old)))
    assert retention_anchors(superuser) == []
    assert old in maintain(direct_database_url).dropped
    assert [seq for _, seq, _, _ in retention_anchors(superuser)] == [2]
    assert audit_events.verify_chain(conn).ok


def test_a_chain_whose_rows_were_all_dropped_goes_on_from_its_anchor(
    superuser, direct_database_url
) -> None:
    superuser.execute("INSERT INTO tenants (id, name) VALUES (%s, 'other')", [OTHER_TENANT])
    old, start = past_partition(superuser, 156)
    for day in range(2):
        append_at(superuser, start + timedelta(days=day), tenant=OTHER_TENANT)
    last = hash_of(superuser, 2, OTHER_TENANT)
    assert old in maintain(direct_database_url).dropped
    superuser.execute("SELECT set_config('toolkit.tenant_id', %s, false)", [str(OTHER_TENANT)])
    superuser.execute(
        "INSERT INTO audit_events (action, entity, prev_hash, hash) "
        "VALUES ('thing.happened', 'thing', '', '')"
    )
    row = superuser.execute(
        "SELECT seq, prev_hash FROM audit_events WHERE tenant_id = %s", [OTHER_TENANT]
    ).fetchone()
    assert row == (3, last)


def test_rows_a_straddling_transaction_left_across_a_boundary_are_bridged(
    superuser, conn, direct_database_url, anchors
) -> None:
    old, start = past_partition(superuser, 156)
    _, later = past_partition(superuser, 155)
    append_at(superuser, start)  # 1
    append_at(superuser, start)  # 2
    append_at(superuser, later)  # 3: began after the boundary, linked first
    append_at(superuser, start + timedelta(days=6))  # 4: began before it, linked after 3
    append_at(superuser, later)  # 5
    record(conn, 1)  # 6
    report = maintain(direct_database_url, now=later + timedelta(days=731))
    assert old in report.dropped
    # 156 weeks ago dropped, 155 weeks ago not yet: rows 3 and 5 remain; anchors at 2 and 4.
    assert [seq for _, seq, _, _ in retention_anchors(superuser)] == [2, 4]
    assert audit_events.verify_chain(conn).ok
    assert write_anchor(conn, anchors) is not None
    found = verify(conn, anchors)
    assert found.ok, found.findings
    assert found.dropped_by_retention == 3


def test_an_edited_anchor_is_reported(dropped_head, superuser, conn, anchors) -> None:
    assert write_anchor(conn, anchors) is not None
    superuser.execute("UPDATE audit_retention_anchors SET hash = sha256('forged') WHERE seq = 4")
    report = verify(conn, anchors)
    finding = report.first(FindingKind.BROKEN_LINK)
    assert finding is not None and finding.sequence == 5, report.findings
    chain = audit_events.verify_chain(conn)
    assert not chain.ok and chain.first_broken_seq == 5


def test_a_forged_anchor_over_a_row_still_there_is_reported(
    dropped_head, superuser, conn, anchors
) -> None:
    # No external anchor: the rows still there are what contradicts the forged anchor.
    superuser.execute(
        "INSERT INTO audit_retention_anchors (tenant_id, seq, hash, created_at, "
        "dropped_partition) VALUES (%s, 6, sha256('forged'), now(), 'none')",
        [DEFAULT_TENANT],
    )
    report = verify(conn, anchors)
    assert report.kinds() == {FindingKind.BAD_RETENTION_ANCHOR, FindingKind.UNANCHORED}
    chain = audit_events.verify_chain(conn)
    assert not chain.ok and chain.first_broken_seq == 6


def test_an_anchor_rewritten_with_the_chain_after_it_contradicts_the_external_anchor(
    superuser, conn, direct_database_url, anchors
) -> None:
    old, start = past_partition(superuser, 156)
    for day in range(3):
        append_at(superuser, start + timedelta(days=day))
    assert write_anchor(conn, anchors) is not None  # records seq 3's hash outside the database
    record(conn, 2)
    assert old in maintain(direct_database_url).dropped
    # The owner rewrites the anchor and re-chains every surviving row consistently.
    superuser.execute("SET session_replication_role = replica")
    superuser.execute("UPDATE audit_retention_anchors SET hash = sha256('forged') WHERE seq = 3")
    for seq in (4, 5):
        superuser.execute(
            "UPDATE audit_events SET prev_hash = coalesce((SELECT hash FROM audit_events "
            "WHERE seq = %(s)s - 1), (SELECT hash FROM audit_retention_anchors "
            "WHERE seq = %(s)s - 1)) WHERE seq = %(s)s",
            {"s": seq},
        )
        superuser.execute(
            "UPDATE audit_events SET hash = audit_event_hash(prev_hash, seq, id, actor_id, "
            "action, entity, entity_id, details, created_at) WHERE seq = %s",
            [seq],
        )
    superuser.execute("SET session_replication_role = origin")
    assert audit_events.verify_chain(conn).ok  # the database's own check is fooled
    report = verify(conn, anchors)
    finding = report.first(FindingKind.BAD_RETENTION_ANCHOR)
    assert finding is not None and finding.sequence == 3, report.findings


def test_a_row_edited_in_a_surviving_partition_is_reported(
    dropped_head, superuser, conn, anchors
) -> None:
    assert write_anchor(conn, anchors) is not None
    superuser.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update")
    superuser.execute("UPDATE audit_events SET details = '{\"n\": 99}' WHERE seq = 6")
    report = verify(conn, anchors)
    finding = report.first(FindingKind.EDITED)
    assert finding is not None and finding.sequence == 6, report.findings
    assert audit_events.verify_chain(conn).first_broken_seq == 6


def test_the_application_role_cannot_write_anchors_or_reach_partitions(
    dropped_head, superuser, make_role, direct_database_url
) -> None:
    login = make_role("LOGIN")
    (partition,) = superuser.execute(
        "SELECT partition::text FROM toolkit_partitions.partitions('public.audit_events') "
        "ORDER BY upper_bound DESC LIMIT 1"
    ).fetchone()
    forbidden = [
        "INSERT INTO audit_retention_anchors (tenant_id, seq, hash, created_at, "
        "dropped_partition) VALUES (toolkit_tenant(), 99, sha256('x'), now(), 'x')",
        "UPDATE audit_retention_anchors SET hash = sha256('x')",
        "DELETE FROM audit_retention_anchors",
        "TRUNCATE audit_retention_anchors",
        "INSERT INTO audit_chain_heads (tenant_id, seq, hash) "
        "VALUES (toolkit_tenant(), 99, sha256('x'))",
        "UPDATE audit_chain_heads SET seq = 1",
        "DELETE FROM audit_chain_heads",
        "TRUNCATE audit_chain_heads",
        "UPDATE audit_events SET details = '{}'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
        f"SELECT count(*) FROM {partition}",
        f"DELETE FROM {partition}",
        f"TRUNCATE {partition}",
        f"ALTER TABLE audit_events DETACH PARTITION {partition}",
    ]
    with psycopg.connect(url_as(direct_database_url, login), autocommit=True) as app:
        app.execute("SELECT set_config('toolkit.tenant_id', %s, false)", [str(DEFAULT_TENANT)])
        # It reads its tenant's anchors (the verifiers do).
        assert app.execute("SELECT seq FROM audit_retention_anchors").fetchall() == [(4,)]
        # And its chain head, which its audited INSERTs advance (through the trigger only).
        assert app.execute("SELECT seq FROM audit_chain_heads").fetchall() == [(7,)]
        app.execute(
            "INSERT INTO audit_events (action, entity, prev_hash, hash) "
            "VALUES ('thing.happened', 'thing', '', '')"
        )
        assert app.execute("SELECT seq FROM audit_chain_heads").fetchall() == [(8,)]
        for statement in forbidden:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(statement)
    assert retention_anchors(superuser)[0][1] == 4
    assert superuser.execute("SELECT seq, hash FROM audit_chain_heads").fetchall() == [
        (8, hash_of(superuser, 8))
    ]


def test_the_partitions_refuse_update_delete_and_truncate_even_to_their_owner(superuser) -> None:
    old, start = past_partition(superuser, 3)
    append_at(superuser, start)
    for statement in (
        f"UPDATE {old} SET details = '{{}}'",
        f"DELETE FROM {old}",
        f"TRUNCATE {old}",
        "TRUNCATE audit_events",
    ):
        with pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
            superuser.execute(statement)
    assert superuser.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(old))
    ).fetchone() == (1,)


def audit_rows(url: str) -> list[Any]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT to_jsonb(a) FROM audit_events AS a ORDER BY tenant_id, seq"
        ).fetchall()


def test_converting_existing_events_and_rolling_back_keep_every_row_and_the_catalog(
    scratch_url,
) -> None:
    migrate_to(scratch_url, BEFORE)
    with psycopg.connect(scratch_url, autocommit=True) as conn:
        conn.execute("SELECT set_config('toolkit.tenant_id', %s, false)", [str(DEFAULT_TENANT)])
        for n in range(3):
            conn.execute(
                "INSERT INTO audit_events (action, entity, details, prev_hash, hash) "
                "VALUES ('thing.happened', 'thing', %s, '', '')",
                [psycopg.types.json.Jsonb({"n": n})],
            )
    unpartitioned = snapshot(scratch_url)
    rows = audit_rows(scratch_url)
    assert len(rows) == 3

    assert migrate(scratch_url).applied[0] == MIGRATION
    assert audit_rows(scratch_url) == rows
    with psycopg.connect(scratch_url, autocommit=True) as conn:
        # Each tenant's chain head is seeded from its newest row.
        assert conn.execute(
            "SELECT h.tenant_id, h.seq, h.hash = a.hash FROM audit_chain_heads AS h "
            "JOIN audit_events AS a USING (tenant_id, seq)"
        ).fetchall() == [(DEFAULT_TENANT, 3, True)]
        assert conn.execute(
            "SELECT relkind FROM pg_class WHERE oid = 'public.audit_events'::regclass"
        ).fetchone() == ("p",)
        # The chain goes on from the rows moved.
        conn.execute("SELECT set_config('toolkit.tenant_id', %s, false)", [str(DEFAULT_TENANT)])
        conn.execute(
            "INSERT INTO audit_events (action, entity, prev_hash, hash) "
            "VALUES ('thing.happened', 'thing', '', '')"
        )
        linked = conn.execute(
            "SELECT n.seq, n.prev_hash = p.hash FROM audit_events AS n "
            "JOIN audit_events AS p ON p.seq = n.seq - 1 WHERE n.seq = 4"
        ).fetchone()
        assert linked == (4, True)
    partitioned = audit_rows(scratch_url)

    newer = len(FROM_THIS_ON)
    assert rollback(scratch_url, newer).rolled_back[-1] == MIGRATION
    assert snapshot(scratch_url) == unpartitioned
    assert audit_rows(scratch_url) == partitioned
    assert len(partitioned) == 4


def test_rolling_back_is_refused_once_retention_dropped_a_partition(
    scratch_url,
) -> None:
    migrate(scratch_url)
    with psycopg.connect(scratch_url, autocommit=True) as su:
        old, start = past_partition(su, 156)
        append_at(su, start)
    assert old in maintain(scratch_url).dropped
    newer = len(FROM_THIS_ON)
    with pytest.raises(Exception, match="retention anchors"):
        rollback(scratch_url, newer)
    with psycopg.connect(scratch_url) as conn:
        assert conn.execute(
            "SELECT relkind FROM pg_class WHERE oid = 'public.audit_events'::regclass"
        ).fetchone() == ("p",)


def test_now_can_age_the_partitions_maintain_creates(superuser, direct_database_url) -> None:
    superuser.execute(
        "UPDATE toolkit_partitions.policy SET retention = '0' WHERE parent = 'public.audit_events'"
    )
    future = datetime.now(UTC) + 10 * WEEK
    report = maintain(direct_database_url, now=future)
    audit = [name for name in report.dropped if ".audit_events_" in name]
    assert audit  # the weeks before the aged "now" went, empty: no anchor to record
    assert retention_anchors(superuser) == []
    highest = superuser.execute(
        "SELECT max(upper_bound) FROM toolkit_partitions.partitions('public.audit_events')"
    ).fetchone()
    assert highest[0] >= future + 4 * WEEK


def test_a_chain_dropped_whole_is_not_a_truncated_one(
    superuser, conn, direct_database_url, anchors
) -> None:
    old, start = past_partition(superuser, 156)
    for day in range(3):
        append_at(superuser, start + timedelta(days=day))
    assert write_anchor(conn, anchors) is not None  # at seq 3, the head
    assert old in maintain(direct_database_url).dropped
    report = verify(conn, anchors)
    assert report.ok, report.findings
    assert (report.rows_checked, report.newest_anchor_sequence) == (0, 3)
    # Deleting the anchor that vouches for the drop makes it a truncation again.
    superuser.execute("DELETE FROM audit_retention_anchors")
    assert verify(conn, anchors).kinds() == {FindingKind.TRUNCATED}


def insert_cost(superuser: psycopg.Connection[Any], inserts: int) -> tuple[int, float]:
    """Audited INSERTs, ``inserts`` of them in one transaction, and what they cost in the
    audit log's partitions, their indexes and the chain heads: index scans in all, and
    shared-buffer hits per insert. Read from this backend's counters of the transaction,
    which nothing else touches: no timing, nothing the machine's load changes."""
    touched = (
        "SELECT coalesce(sum(pg_stat_get_xact_numscans(c.oid)) FILTER (WHERE c.relkind = 'i' "
        "AND c.relnamespace = 'toolkit_partitions'::regnamespace), 0)::bigint, "
        "coalesce(sum(pg_stat_get_xact_blocks_hit(c.oid)), 0)::bigint FROM pg_class AS c "
        "WHERE (c.relnamespace = 'toolkit_partitions'::regnamespace "
        "AND c.relname LIKE 'audit\\_events\\_%%') "
        "OR c.oid IN ('public.audit_chain_heads'::regclass, "
        "'public.audit_chain_heads_pkey'::regclass)"
    )
    insert = (
        "INSERT INTO audit_events (action, entity, prev_hash, hash) "
        "VALUES ('thing.happened', 'thing', '', '')"
    )
    superuser.execute(insert)  # plans the trigger's statements outside the count
    superuser.execute("BEGIN")
    try:
        scans_before, hits_before = superuser.execute(touched).fetchone()
        for _ in range(inserts):
            superuser.execute(insert)
        scans_after, hits_after = superuser.execute(touched).fetchone()
    finally:
        superuser.execute("COMMIT")
    return scans_after - scans_before, (hits_after - hits_before) / inserts


def test_an_audited_insert_costs_the_same_with_5_or_60_partitions(superuser) -> None:
    """The chain trigger reads and advances the tenant's row of audit_chain_heads: it probes
    no partition for the newest row (the old ORDER BY seq DESC LIMIT 1 scanned the
    (tenant_id, seq) index of every partition: 55 buffer hits per insert with 5 of them,
    666 with 109)."""
    superuser.execute("SELECT set_config('toolkit.tenant_id', %s, false)", [str(DEFAULT_TENANT)])
    (few,) = superuser.execute(
        "SELECT count(*) FROM toolkit_partitions.partitions('public.audit_events')"
    ).fetchone()
    few_scans, few_hits = insert_cost(superuser, 10)
    for weeks_ago in range(2, 2 + 60 - few):
        past_partition(superuser, weeks_ago)
    assert superuser.execute(
        "SELECT count(*) FROM toolkit_partitions.partitions('public.audit_events')"
    ).fetchone() == (60,)
    many_scans, many_hits = insert_cost(superuser, 10)
    assert (few_scans, many_scans) == (0, 0)
    assert many_hits <= few_hits + 1, (few, few_hits, many_hits)


def test_repeatable_read_writers_cannot_repeat_a_seq(
    superuser, make_role, direct_database_url
) -> None:
    """seq is not UNIQUE on the partitioned table: the locked chain head keeps it unique. A
    writer whose snapshot predates another's append fails instead of linking after a row it
    cannot see."""
    superuser.execute("INSERT INTO tenants (id, name) VALUES (%s, 'other')", [OTHER_TENANT])
    url = url_as(direct_database_url, make_role("LOGIN"))
    insert = (
        "INSERT INTO audit_events (action, entity, prev_hash, hash) "
        "VALUES ('thing.happened', 'thing', '', '')"
    )
    with psycopg.connect(url, autocommit=True) as first, psycopg.connect(url) as late:
        for tenant, refusal in (
            (DEFAULT_TENANT, psycopg.errors.SerializationFailure),  # the head advanced
            (OTHER_TENANT, psycopg.errors.UniqueViolation),  # the head was made: its first row
        ):
            for session in (first, late):
                session.execute("SELECT set_config('toolkit.tenant_id', %s, false)", [str(tenant)])
            late.commit()
            if tenant == DEFAULT_TENANT:
                first.execute(insert)
            late.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            late.execute("SELECT count(*) FROM audit_events").fetchone()  # its snapshot
            first.execute(insert)
            with pytest.raises(refusal):
                late.execute(insert)
            late.rollback()
            late.execute(insert)  # a retry, with a fresh snapshot, links after it
            late.commit()
    assert superuser.execute(
        "SELECT tenant_id, array_agg(seq ORDER BY seq) FROM audit_events GROUP BY tenant_id "
        "ORDER BY tenant_id"
    ).fetchall() == [(DEFAULT_TENANT, [1, 2, 3]), (OTHER_TENANT, [1, 2])]
