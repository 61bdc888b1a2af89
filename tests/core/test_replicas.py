"""Read replicas, the parts a single server can prove: the ``-- route:`` header, verify's
refusal of a replica-routed write, the commit position, a replica that is not a standby or
cannot be reached, and that without replicas nothing changes.

The real streaming standby (read-your-writes under 10,000 operations, a standby
killed and restarted) is tests/cluster/test_replicas.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import psycopg
import pytest

from tests.core.factories import make_agent
from tests.reliability.private_servers import free_port
from tests.support.modes import both, fetchone
from toolkit.aio.db.database import AsyncDatabase, _replica_failed
from toolkit.aio.repositories import agents as async_agents
from toolkit.aio.repositories import users as async_users
from toolkit.config import load_settings
from toolkit.db.bind import registry
from toolkit.db.database import Database
from toolkit.db.registry import QueryRegistry, parse_file
from toolkit.db.replicas import CommitPosition, parse_lsn
from toolkit.db.verify import replica_route_problem, verify
from toolkit.errors import ConfigurationError, InvalidInput, QueryDefinitionError
from toolkit.repositories import users

agents = both("toolkit.repositories.agents")
database_module = both("toolkit.db.database")


def _query(sql: str, kind: str = "many") -> Any:
    (query,) = parse_file(f"-- name: probe.q :{kind}\n-- A probe.\n{sql}", "probe.sql")
    return query


# ---------------------------------------------------------------- the header


def test_the_route_header_is_parsed_and_defaults_to_the_primary() -> None:
    assert _query("SELECT 1").route == "primary"
    assert _query("-- route: replica\nSELECT 1").route == "replica"
    assert _query("-- sort: name text\n-- route: primary\nSELECT 1 {keyset} {order}").route == (
        "primary"
    )
    with pytest.raises(QueryDefinitionError, match=r"probe.sql:3: probe.q has route 'replicas'"):
        _query("-- route: replicas\nSELECT 1")
    with pytest.raises(QueryDefinitionError, match="needs a one-line doc comment"):
        parse_file("-- name: probe.q :many\n-- route: replica\nSELECT 1", "probe.sql")


@pytest.mark.parametrize(
    ("sql", "kind", "refused"),
    [
        ("INSERT INTO agents (name) VALUES ('x') RETURNING id", "one", "writes (INSERT)"),
        ("WITH gone AS (DELETE FROM agents RETURNING id) SELECT id FROM gone", "many", "DELETE"),
        ("SELECT id FROM agents WHERE id = :id FOR UPDATE", "one", "locks rows (FOR UPDATE)"),
        ("SELECT id FROM agents FOR NO KEY UPDATE SKIP LOCKED", "many", "FOR NO KEY UPDATE"),
        ("SELECT id FROM agents FOR SHARE", "many", "locks rows (FOR SHARE)"),
        ("SELECT nextval('s')", "scalar", "writes (NEXTVAL)"),
        ("SELECT 1", "exec", ":exec, a write"),
        ("UPDATE agents SET name = 'x' RETURNING id", "returning", ":returning, a write"),
    ],
)
def test_verify_refuses_a_replica_routed_write_or_lock(sql: str, kind: str, refused: str) -> None:
    routed = _query(f"-- route: replica\n{sql}", kind)
    problem = replica_route_problem(routed)
    assert problem is not None and refused in problem
    assert replica_route_problem(_query(sql, kind)) is None  # on the primary: fine


def test_toolkit_verify_reports_a_replica_routed_write(pg_client: psycopg.Connection[Any]) -> None:
    locking = _query("-- route: replica\nSELECT id FROM agents WHERE id = :id FOR UPDATE", "one")
    problems = [str(p) for p in verify(pg_client, [], QueryRegistry([locking]))]
    assert any(
        p.startswith("probe.sql:1: probe.q: is routed to a replica but locks rows (FOR UPDATE)")
        for p in problems
    ), problems


def test_verify_reads_code_not_literals_or_comments() -> None:
    sql = (
        "-- route: replica\n"
        "SELECT id, updated_at FROM agents /* FOR UPDATE */\n"
        "WHERE name <> 'insert; delete' AND description <> $$for update$$"
    )
    assert replica_route_problem(_query(sql)) is None


def test_the_toolkits_replica_routed_queries_only_read() -> None:
    routed = [q.name for q in registry() if q.route == "replica"]
    assert {"agents.get", "agents.list"} <= set(routed)
    assert [replica_route_problem(q) for q in registry() if replica_route_problem(q)] == []


# ------------------------------------------------------- the commit position


def test_a_commit_position_reads_and_prints_as_pg_lsn() -> None:
    position = CommitPosition.parse("16/B374D848")
    assert position.lsn == (0x16 << 32) | 0xB374D848
    assert str(position) == "16/B374D848"
    assert CommitPosition.START < position < CommitPosition.PRIMARY
    assert str(CommitPosition.START) == "0/0"
    for junk in ("", "16B374D848", "16/", "x/1", "1/2/3", "123456789/0"):
        with pytest.raises(InvalidInput):
            parse_lsn(junk)


def test_replica_urls_are_a_setting_masked_in_repr() -> None:
    settings = load_settings(
        database_replica_urls="postgresql://app:s3cret@10.0.0.2/toolkit  postgres://10.0.0.3/toolkit"
    )
    assert settings.replica_urls == (
        "postgresql://app:s3cret@10.0.0.2/toolkit",
        "postgres://10.0.0.3/toolkit",
    )
    assert "s3cret" not in repr(settings)
    assert load_settings().replica_urls == ()
    with pytest.raises(ConfigurationError, match="TOOLKIT_DATABASE_REPLICA_URLS"):
        load_settings(database_replica_urls="mysql://10.0.0.2/toolkit")


# ------------------------------------------------- one server, no real standby

pytestmark_modes = pytest.mark.usefixtures("mode")


@pytestmark_modes
def test_without_replicas_nothing_changes(db: Any) -> None:
    with db.transaction() as tx:
        agent = make_agent(tx)
    assert db.commit_position is None  # no position taken: a bare COMMIT
    with db.connection(read_after=CommitPosition.START) as conn:
        assert agents.get(conn, agent.id) == agent
        assert agents.count(conn) == 1
    assert db.read_counts() == {"replica": 0, "primary": 0, "fallback": 0}


def _insert_lsn(conn: Any) -> int:
    return parse_lsn(fetchone(conn, "SELECT pg_current_wal_insert_lsn()::text")[0])


@pytestmark_modes
def test_a_server_that_is_not_a_standby_is_skipped_once_and_reads_go_on(
    settings: Any, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="toolkit.db.replicas")
    # The "replica" is the primary itself: in recovery it is not, so it must not serve.
    retried = settings.model_copy(update={"replica_retry_interval": 0.01})
    db = database_module.Database(retried, replica_urls=[database_url], warn_if_privileged=False)
    with db:
        with db.transaction() as tx:
            agent = make_agent(tx)
        for _ in range(3):
            time.sleep(0.02)  # past the retry interval: asked again each time
            with db.connection(read_after=CommitPosition.START) as conn:
                assert agents.get(conn, agent.id) == agent
    counts = db.read_counts()
    assert counts == {"replica": 0, "primary": 3, "fallback": 0}
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and "not a standby" in skipped[0], skipped


def test_the_commit_position_is_taken_after_commit_and_only_for_writes(
    settings: Any, database_url: str
) -> None:
    db = Database(settings, replica_urls=[database_url], warn_if_privileged=False)
    with db:
        with db.connection() as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        with db.transaction() as tx:
            user = users.create(tx, {"email": "position@example.com", "display_name": "P"})
            inside = _insert_lsn(tx)  # after the transaction's last write, before COMMIT
            xid = fetchone(tx, "SELECT pg_current_xact_id()::text")[0]
        position = db.commit_position
        assert position is not None
        with db.connection() as conn:
            # Where the transaction's COMMIT record ends, read from the WAL itself.
            commit_end = fetchone(
                conn,
                "SELECT end_lsn::text FROM pg_get_wal_records_info(%s::pg_lsn, "
                "pg_current_wal_flush_lsn()) WHERE resource_manager = 'Transaction' "
                "AND record_type LIKE 'COMMIT%%' AND xid::text = %s",
                [f"{inside >> 32:X}/{inside & 0xFFFFFFFF:X}", xid],
            )[0]
        # A replica that has replayed up to the position has replayed the COMMIT: the
        # position read inside the transaction (before the COMMIT record) would not do.
        assert inside < parse_lsn(commit_end) <= position.lsn
        with db.transaction() as tx:
            assert tx.execute("SELECT 1").fetchone() == (1,)  # writes nothing
        assert db.commit_position == position
        with db.connection(read_after=str(position)) as conn:
            assert conn.execute(
                "SELECT display_name FROM users WHERE id = %s", [user.id]
            ).fetchone() == (user.display_name,)
        with pytest.raises(InvalidInput), db.connection(read_after="yesterday"):
            pass


@pytestmark_modes
def test_an_unreachable_replica_is_skipped_once_and_no_error_reaches_the_caller(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="toolkit.db.replicas")
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/toolkit"
    retried = settings.model_copy(update={"replica_retry_interval": 0.01})
    db = database_module.Database(retried, replica_urls=[nowhere], warn_if_privileged=False)
    with db:
        with db.transaction() as tx:
            agent = make_agent(tx)
        for _ in range(5):
            time.sleep(0.02)  # past the retry interval: tried again each time
            with db.connection(read_after=CommitPosition.START) as conn:
                assert agents.get(conn, agent.id) == agent
    assert db.read_counts()["primary"] == 5
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and "cannot be reached" in skipped[0], skipped
    assert "127.0.0.1" in skipped[0]


def test_the_async_commit_position_belongs_to_the_task_that_committed(
    settings: Any, database_url: str
) -> None:
    async def scenario() -> None:
        db = AsyncDatabase(settings, replica_urls=[database_url], warn_if_privileged=False)
        async with db:

            async def write() -> CommitPosition | None:
                async with db.transaction() as tx:
                    await async_users.create(
                        tx, {"email": f"{uuid.uuid4().hex}@example.com", "display_name": "A"}
                    )
                return db.commit_position

            first, second = await asyncio.gather(write(), write())
            assert first is not None and second is not None
            assert db.commit_position is None  # this task committed nothing
            async with db.connection(read_after=first) as conn:
                assert await async_agents.count(conn) == 0

    asyncio.run(scenario())


def test_a_replica_failure_is_told_from_a_query_error() -> None:
    """What a replica read falls back on: the replica failed, not the query."""
    assert _replica_failed(psycopg.OperationalError("gone"))
    assert _replica_failed(psycopg.errors.SerializationFailure("conflict with recovery"))
    assert not _replica_failed(psycopg.errors.UndefinedTable("no such table"))
    assert not _replica_failed(ValueError("a bug"))
