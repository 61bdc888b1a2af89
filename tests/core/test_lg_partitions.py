"""The LangGraph tables partitioned by time (migration 0014), in SQL.

Converting keeps every row (each thread's values and writes stored at its
newest checkpoint's time) and rolling back restores the catalog and the rows
exactly; a delta still never outlives its base, now by trigger (the foreign
key could not follow a base that maintain moves), for another tenant's base
too. Maintain with the saver is tested in tests/integrations.
"""

from __future__ import annotations

import json
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
from toolkit.db.registry import package_directory

MIGRATION = "0014.langgraph-partitions"
BEFORE = max(
    p.name[: -len(".sql")]
    for p in package_directory("migrations").glob("*.sql")
    if not p.name.endswith(".rollback.sql") and p.name < MIGRATION
)
TABLES = ("lg_checkpoints", "lg_blobs", "lg_writes")
ROWS = """
INSERT INTO lg_checkpoints (thread_id, checkpoint_id, checkpoint, created_at) VALUES
    ('old', 'c1', '{}', %(long_ago)s), ('old', 'c2', '{}', %(long_ago)s + interval '1 day'),
    ('new', 'c1', '{}', now());
INSERT INTO lg_blobs (thread_id, channel, version, type, blob) VALUES
    ('old', 'ch', 'v1', 'bytes', '\\x00'), ('new', 'ch', 'v1', 'bytes', '\\x00'),
    ('gone', 'ch', 'v1', 'bytes', '\\x00');
INSERT INTO lg_blobs (thread_id, channel, version, type, base_version, item_count, blob) VALUES
    ('old', 'ch', 'v2', 'bytes', 'v1', 1, '\\x01');
INSERT INTO lg_blobs (thread_id, channel, version, type, base_version, item_count, blob) VALUES
    ('old', 'ch', 'v3', 'bytes', 'v2', 1, '\\x02');
INSERT INTO lg_writes (thread_id, checkpoint_id, task_id, idx, channel, type, blob) VALUES
    ('old', 'c2', 't1', 0, 'ch', 'bytes', '\\x00'), ('new', 'c1', 't1', 0, 'ch', 'bytes', '\\x00');
"""


@pytest.fixture
def scratch_url() -> Iterator[str]:
    name = f"toolkit_lgpart_{uuid.uuid4().hex[:10]}"
    yield server_url(name)
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def lg_rows(url: str, *, without: tuple[str, ...] = ()) -> dict[str, list[Any]]:
    dropped = sql.SQL("").join(sql.SQL(" - {}").format(sql.Literal(c)) for c in without)
    with psycopg.connect(url) as conn:
        return {
            table: sorted(
                (
                    row
                    for (row,) in conn.execute(
                        sql.SQL("SELECT to_jsonb(t){} FROM {} AS t").format(
                            dropped, sql.Identifier(table)
                        )
                    ).fetchall()
                ),
                key=lambda row: json.dumps(row, sort_keys=True),
            )
            for table in TABLES
        }


def test_converting_keeps_every_row_and_rolling_back_restores_the_catalog(scratch_url) -> None:
    migrate_to(scratch_url, BEFORE)
    long_ago = datetime.now(UTC) - timedelta(days=60)
    with psycopg.connect(scratch_url) as conn:
        for statement in ROWS.split(";")[:-1]:
            conn.execute(statement, {"long_ago": long_ago})
    unpartitioned = snapshot(scratch_url)
    rows = lg_rows(scratch_url)
    assert sum(map(len, rows.values())) == 10

    assert migrate(scratch_url).applied[0] == MIGRATION
    assert lg_rows(scratch_url, without=("stored_at",)) == rows
    with psycopg.connect(scratch_url) as conn:
        for table in TABLES:
            assert conn.execute(
                "SELECT relkind FROM pg_class WHERE oid = %s::regclass", [table]
            ).fetchone() == ("p",)
        # A checkpoint at its own time; values and writes at their thread's newest
        # checkpoint's; a value of a thread without checkpoints now.
        stored = conn.execute(
            "SELECT 'c', thread_id, checkpoint_id, stored_at = created_at FROM lg_checkpoints"
            " UNION ALL SELECT 'b', thread_id, version, stored_at = CASE thread_id"
            "   WHEN 'old' THEN %(newest)s::timestamptz ELSE (SELECT max(created_at)"
            "   FROM lg_checkpoints WHERE thread_id = 'new') END FROM lg_blobs"
            " WHERE thread_id <> 'gone'"
            " UNION ALL SELECT 'w', thread_id, checkpoint_id, stored_at = CASE thread_id"
            "   WHEN 'old' THEN %(newest)s::timestamptz ELSE (SELECT max(created_at)"
            "   FROM lg_checkpoints WHERE thread_id = 'new') END FROM lg_writes",
            {"newest": long_ago + timedelta(days=1)},
        ).fetchall()
        assert len(stored) == 9 and all(same for *_, same in stored), stored
        homes = conn.execute(
            "SELECT tableoid::regclass::text FROM lg_blobs WHERE thread_id = 'old'"
        ).fetchall()
        assert {home for (home,) in homes} == {
            conn.execute(
                "SELECT partition::text FROM toolkit_partitions.partitions('lg_blobs')"
                " WHERE lower_bound IS NULL"
            ).fetchone()[0]  # type: ignore[index]
        }
    partitioned = lg_rows(scratch_url, without=("stored_at",))

    newer = sum(
        1
        for p in package_directory("migrations").glob("*.sql")
        if not p.name.endswith(".rollback.sql") and p.name >= MIGRATION
    )
    assert rollback(scratch_url, newer).rolled_back[-1] == MIGRATION
    assert snapshot(scratch_url) == unpartitioned
    assert lg_rows(scratch_url) == partitioned == rows


def test_a_delta_never_outlives_its_base(superuser) -> None:
    superuser.execute(
        "INSERT INTO lg_blobs (thread_id, channel, version, type, blob) "
        "VALUES ('t', 'ch', 'v1', 'bytes', '\\x00')"
    )
    delta = (
        "INSERT INTO lg_blobs (thread_id, channel, version, type, base_version, item_count, blob)"
        " VALUES ('t', 'ch', %s, 'bytes', %s, 1, '\\x01')"
    )
    with pytest.raises(psycopg.errors.ForeignKeyViolation) as missing:
        superuser.execute(delta, ["v2", "v0"])
    assert missing.value.diag.constraint_name == "lg_blobs_base_fkey"
    superuser.execute(delta, ["v2", "v1"])
    with pytest.raises(psycopg.errors.ForeignKeyViolation) as orphaning:
        superuser.execute("DELETE FROM lg_blobs WHERE version = 'v1'")
    assert orphaning.value.diag.constraint_name == "lg_blobs_base_fkey"
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        superuser.execute("UPDATE lg_blobs SET version = 'v9' WHERE version = 'v1'")
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        superuser.execute("UPDATE lg_blobs SET base_version = 'v0' WHERE version = 'v2'")
    # Moving a base to another partition (what maintain does) keeps it.
    older = superuser.execute(
        "SELECT lower_bound, upper_bound FROM toolkit_partitions.partitions('lg_blobs')"
        " ORDER BY upper_bound DESC LIMIT 1"
    ).fetchone()
    assert older is not None
    superuser.execute("UPDATE lg_blobs SET stored_at = %s WHERE version = 'v1'", [older[0]])
    # A base and its delta deleted together: nothing outlives anything.
    superuser.execute("DELETE FROM lg_blobs WHERE thread_id = 't'")
    assert superuser.execute("SELECT count(*) FROM lg_blobs").fetchone() == (0,)


def test_a_delta_cannot_extend_another_tenants_value(
    superuser, make_role, direct_database_url
) -> None:
    tenant_a, tenant_b = uuid.uuid4(), uuid.uuid4()
    superuser.execute(
        "INSERT INTO tenants (id, name) VALUES (%s, 'a'), (%s, 'b')", [tenant_a, tenant_b]
    )
    superuser.execute(
        "INSERT INTO lg_blobs (tenant_id, thread_id, channel, version, type, blob) "
        "VALUES (%s, 't', 'ch', 'only-b', 'bytes', '\\x00')",
        [tenant_b],
    )
    login = make_role("LOGIN")
    with psycopg.connect(url_as(direct_database_url, login)) as app:
        app.execute("SELECT set_config('toolkit.tenant_id', %s, true)", [str(tenant_a)])
        with pytest.raises(psycopg.errors.ForeignKeyViolation) as raised:
            app.execute(
                "INSERT INTO lg_blobs (thread_id, channel, version, type, base_version,"
                " item_count, blob) VALUES ('t', 'ch', 'v2', 'bytes', 'only-b', 1, '\\x01')"
            )
        assert raised.value.diag.constraint_name == "lg_blobs_base_fkey"


def test_the_carry_moves_one_row_per_key_when_two_writers_raced(superuser) -> None:
    """Two rows of one key (two writers raced past the saver's NOT EXISTS): of those in
    expired partitions the newest moves, one kept elsewhere wins, and nothing collides."""
    (start,) = superuser.execute(
        "SELECT toolkit_partitions.floor_time(now(), interval '7 days')"
    ).fetchone()
    expired_at = start - timedelta(days=3)
    superuser.execute(
        "SELECT set_config('toolkit.maintain_now', %s::text, false)",
        [start + timedelta(days=28, hours=1)],
    )
    # The thread is live: a checkpoint this week.
    superuser.execute(
        "INSERT INTO lg_checkpoints (thread_id, checkpoint_id, checkpoint, stored_at)"
        " VALUES ('raced', 'c9', '{}', %s)",
        [start + timedelta(hours=2)],
    )
    blob = (
        "INSERT INTO lg_blobs (thread_id, channel, version, type, blob, stored_at)"
        " VALUES ('raced', %s, 'v1', 'bytes', %s, %s)"
    )
    superuser.execute(blob, ["twice-old", b"older", expired_at])
    superuser.execute(blob, ["twice-old", b"newer", expired_at + timedelta(seconds=1)])
    superuser.execute(blob, ["old-and-new", b"old", expired_at])
    superuser.execute(blob, ["old-and-new", b"new", start + timedelta(hours=1)])

    moved = superuser.execute("SELECT toolkit_partitions.lg_carry_forward('public.lg_blobs')")
    assert moved.fetchone() == (1,)
    kept = superuser.execute(
        "SELECT channel, blob, stored_at >= %s FROM lg_blobs ORDER BY channel, stored_at", [start]
    ).fetchall()
    assert kept == [
        ("old-and-new", b"old", False),  # left behind: goes with its partition
        ("old-and-new", b"new", True),
        ("twice-old", b"older", False),
        ("twice-old", b"newer", True),  # moved, next to the thread's newest row
    ]
    # Twice: nothing left to move.
    again = superuser.execute("SELECT toolkit_partitions.lg_carry_forward('public.lg_blobs')")
    assert again.fetchone() == (0,)


def _blob_compression(url: str) -> dict[str, str]:
    """attcompression of the value columns of lg_blobs, lg_writes and each of their partitions."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.oid::regclass::text, a.attcompression FROM pg_class AS c"
            " JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attname = 'blob'"
            " WHERE c.oid IN ('lg_blobs'::regclass, 'lg_writes'::regclass) OR c.oid IN ("
            "   SELECT inhrelid FROM pg_inherits"
            "   WHERE inhparent IN ('lg_blobs'::regclass, 'lg_writes'::regclass))"
        ).fetchall()
    return dict(rows)


def test_langgraph_values_are_stored_with_lz4_and_rolling_back_restores_the_default(
    scratch_url,
) -> None:
    migrate(scratch_url)
    compression = _blob_compression(scratch_url)
    assert len(compression) >= 4 and set(compression.values()) == {"l"}, compression
    long_value = ("the agent answers the user " * 400).encode()
    with psycopg.connect(scratch_url) as conn:
        conn.execute(
            "INSERT INTO lg_blobs (thread_id, channel, version, type, blob)"
            " VALUES ('t', 'messages', 'v1', 'msgpack', %s)",
            [long_value],
        )
        stored = conn.execute(
            "SELECT pg_column_compression(blob), blob = %s FROM lg_blobs", [long_value]
        ).fetchone()
    assert stored == ("lz4", True)

    assert rollback(scratch_url, 1).rolled_back == ("0015.langgraph-lz4",)
    assert set(_blob_compression(scratch_url).values()) == {""}
    with psycopg.connect(scratch_url) as conn:  # the lz4 value reads the same
        assert conn.execute("SELECT blob = %s FROM lg_blobs", [long_value]).fetchone() == (True,)
