"""The pooled Database: autocommit reads, transactions, bounded waits, healing."""

from __future__ import annotations

import time

import psycopg
import pytest

from tests.core.factories import make_agent, make_user
from toolkit.config import load_settings
from toolkit.db import Database
from toolkit.errors import Conflict, DatabaseError, Unavailable
from toolkit.repositories import agents, users


def test_reads_run_in_autocommit_and_keep_prepared_statements(db) -> None:
    with db.connection() as conn:
        agent = make_agent(conn)
        backend = conn.info.backend_pid
    for _ in range(8):
        with db.connection() as conn:
            assert conn.autocommit
            assert agents.get(conn, agent.id) == agent
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with db.connection() as conn:
        assert conn.info.backend_pid == backend  # min_size 0, one connection reused
        prepared = conn.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '/* agents.get */%%'"
        ).fetchone()
    assert prepared == (1,)


def test_application_name_and_statement_timeout(database_url) -> None:
    settings = load_settings(
        database_url=database_url, application_name="toolkit-test", statement_timeout_ms=100
    )
    with Database(settings) as database, database.connection() as conn:
        assert conn.execute("SHOW application_name").fetchone() == ("toolkit-test",)
        with pytest.raises(Unavailable, match="timed out"), database.transaction() as tx:
            tx.execute("SELECT pg_sleep(1)")


def test_transaction_commits_or_rolls_back_as_a_unit(db) -> None:
    with db.transaction() as tx:
        owner = make_user(tx)
        make_agent(tx, owner, name="one")
    with pytest.raises(Conflict), db.transaction() as tx:
        make_agent(tx, owner, name="two")
        make_user(tx, email=owner.email)  # unique violation inside the transaction
    with db.connection() as conn:
        assert [a.name for a in agents.list(conn).items] == ["one"]


def test_a_left_open_transaction_is_not_pooled(db) -> None:
    with db.connection() as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT 1")
    with db.connection() as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_exhausted_pool_waits_a_bounded_time_then_raises(database_url) -> None:
    settings = load_settings(database_url=database_url, pool_max_size=1, pool_timeout=0.3)
    with Database(settings) as database, database.connection():
        started = time.monotonic()
        with (
            pytest.raises(Unavailable, match="no database connection free"),
            database.connection(),
        ):
            pass
        assert 0.25 < time.monotonic() - started < 2.0


def test_pool_replaces_connections_killed_by_the_server(db, superuser) -> None:
    with db.connection() as conn:
        user = make_user(conn)
        first_backend = conn.info.backend_pid
    # What a server restart does to idle pooled connections.
    superuser.execute("SELECT pg_terminate_backend(%s)", [first_backend])
    time.sleep(0.1)
    with db.connection() as conn:
        assert conn.info.backend_pid != first_backend
        assert users.get(conn, user.id) == user


def test_unreachable_server_is_unavailable_within_the_bound() -> None:
    settings = load_settings(
        database_url="postgresql://postgres@127.0.0.1:1/nothing",
        pool_timeout=0.5,
        connect_timeout=1,
    )
    started = time.monotonic()
    with Database(settings) as database, pytest.raises(Unavailable), database.connection() as conn:
        users.count(conn)
    assert time.monotonic() - started < 3.0


def test_a_connection_cut_mid_use_raises_unavailable(db, superuser) -> None:
    with db.connection() as conn:
        make_user(conn)
        superuser.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])
        time.sleep(0.1)
        with pytest.raises(Unavailable):
            users.count(conn)
    with db.connection() as conn:
        assert users.count(conn) == 1


def test_a_transaction_whose_statement_failed_is_not_reported_committed(db) -> None:
    with db.connection() as conn:
        owner = make_user(conn)
    with pytest.raises(DatabaseError, match="rolled back, not committed"), db.transaction() as tx:
        make_agent(tx, owner, name="lost with the transaction")
        with pytest.raises(Conflict):
            make_user(tx, email=owner.email)
        # The caller swallowed the error and carries on: COMMIT would be a silent ROLLBACK.
    with db.connection() as conn:
        assert agents.count(conn) == 0


def test_connection_lost_inside_commit_reports_the_real_outcome(db, superuser) -> None:
    # A deferred trigger kills its own backend while COMMIT runs: the
    # transaction aborts, and the caller hears Unavailable with nothing written.
    superuser.execute(
        """
        CREATE FUNCTION die_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$;
        CREATE CONSTRAINT TRIGGER die_at_commit AFTER INSERT ON agents
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.name = 'doomed')
        EXECUTE FUNCTION die_at_commit();
        """
    )
    with db.connection() as conn:
        owner = make_user(conn)
    with (
        pytest.raises(Unavailable, match="is aborted, nothing was written"),
        db.transaction() as tx,
    ):
        make_agent(tx, owner, name="doomed")
    with db.connection() as conn:
        assert agents.count(conn) == 0
    with db.transaction() as tx:
        make_agent(tx, owner, name="fine")
    with db.connection() as conn:
        assert agents.count(conn) == 1
