"""The pooled Database: autocommit reads, transactions, bounded waits, healing."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.conftest import PG_PORT, server_url
from tests.core.factories import make_agent, make_user
from tests.support.modes import both, execute, fetchone
from tests.support.pgbouncer import OPTIONS_REFUSED, OWN_BACKEND, needs_session
from tests.support.tcp_proxy import TcpProxy
from toolkit.config import load_settings
from toolkit.errors import (
    Closed,
    ConfigurationError,
    Conflict,
    DatabaseError,
    InvalidInput,
    InvalidReference,
    OutcomeUnknown,
    RetryableConflict,
    Unavailable,
)
from toolkit.repositories import Audit

# Every test runs against Database and AsyncDatabase (tests/support/modes.py).
pytestmark = pytest.mark.usefixtures("mode")
agents = both("toolkit.repositories.agents")
users = both("toolkit.repositories.users")
database_module = both("toolkit.db.database")


def Database(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 - reads as the class it makes
    """A Database, or an AsyncDatabase used through sync calls in an async run."""
    return database_module.Database(*args, **kwargs)


@needs_session(
    "prepared statements are off behind a transaction pooler (TOOLKIT_PREPARE_THRESHOLD=off), "
    "and the test counts them on its own server connection"
)
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
        prepared = fetchone(
            conn,
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '/* agents.get */%%'",
        )
    assert prepared == (1,)


def test_prepare_threshold_off_reaches_every_pooled_connection(database_url, monkeypatch) -> None:
    monkeypatch.setenv("TOOLKIT_PREPARE_THRESHOLD", "Off")
    settings = load_settings(database_url=database_url, pool_min_size=0, pool_max_size=2)
    assert settings.prepare_threshold is None
    with Database(settings) as database:
        with database.connection() as conn:
            agent = make_agent(conn)
        for _ in range(8):  # past psycopg's default threshold of 5
            with database.connection() as conn:
                assert conn.prepare_threshold is None
                assert agents.get(conn, agent.id) == agent
                prepared = fetchone(conn, "SELECT count(*) FROM pg_prepared_statements")
                assert prepared == (0,)


@pytest.mark.parametrize(
    ("value", "threshold"), [("none", None), ("OFF", None), ("0", 0), ("12", 12)]
)
def test_prepare_threshold_reads_off_none_or_a_count(monkeypatch, value, threshold) -> None:
    monkeypatch.setenv("TOOLKIT_PREPARE_THRESHOLD", value)
    assert load_settings().prepare_threshold == threshold


@pytest.mark.parametrize("value", ["sometimes", "-1", ""])
def test_a_bad_prepare_threshold_names_its_variable(monkeypatch, value) -> None:
    monkeypatch.setenv("TOOLKIT_PREPARE_THRESHOLD", value)
    with pytest.raises(ConfigurationError, match="TOOLKIT_PREPARE_THRESHOLD") as raised:
        load_settings()
    if value != "-1":  # -1 is a number, refused by the bound
        assert "or off" in str(raised.value)


@needs_session(OPTIONS_REFUSED)
def test_application_name_and_statement_timeout(database_url) -> None:
    settings = load_settings(
        database_url=database_url, application_name="toolkit-test", statement_timeout_ms=100
    )
    with Database(settings) as database, database.connection() as conn:
        assert fetchone(conn, "SHOW application_name") == ("toolkit-test",)
        with pytest.raises(Unavailable, match="timed out"), database.transaction() as tx:
            execute(tx, "SELECT pg_sleep(1)")


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
        execute(conn, "BEGIN")
        execute(conn, "SELECT 1")
    with db.connection() as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_back_to_back_checkouts_reuse_the_connection_returned_last(database_url) -> None:
    """Sequential requests stay on one warm connection (and server backend), not on each in turn."""
    settings = load_settings(database_url=database_url, pool_min_size=3, pool_max_size=3)
    with Database(settings, warn_if_privileged=False) as database:
        with (
            database.connection() as first,
            database.connection() as second,
            database.connection() as third,
        ):
            backends = [conn.info.backend_pid for conn in (first, second, third)]
        # Returned third, then second, then first (the block exits inside out).
        assert len(set(backends)) == 3
        for _ in range(4):
            with database.connection() as conn:
                assert conn.info.backend_pid == backends[0]
        assert database.stats()["pool_available"] == 3


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


@needs_session(OWN_BACKEND)
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
    with pytest.raises(Unavailable), Database(settings) as database, database.connection() as conn:
        users.count(conn)
    assert time.monotonic() - started < 3.0


@needs_session(OWN_BACKEND)
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
        pytest.raises(Unavailable, match="was rolled back, nothing was written"),
        db.transaction() as tx,
    ):
        make_agent(tx, owner, name="doomed")
    with db.connection() as conn:
        assert agents.count(conn) == 0
    with db.transaction() as tx:
        make_agent(tx, owner, name="fine")
    with db.connection() as conn:
        assert agents.count(conn) == 1


# -- one clear line when the database cannot be reached ----------------------


@pytest.mark.parametrize(
    ("url", "error", "says"),
    [
        (
            server_url("toolkit_no_such_database"),
            ConfigurationError,
            'database "toolkit_no_such_database" .* does not exist; run `toolkit migrate`',
        ),
        (
            make_conninfo(server_url(), user="toolkit_no_such_role", password="hunter2-secret"),
            ConfigurationError,
            'user "toolkit_no_such_role" .*authentication failed',
        ),
        (
            "postgresql://postgres@127.0.0.1:1/anything",
            Unavailable,
            "127.0.0.1:1: nothing answers there",
        ),
    ],
)
def test_a_database_that_cannot_be_used_fails_fast_with_one_clear_line(
    url: str, error: type[Exception], says: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(database_url=url, connect_timeout=2, pool_timeout=10)
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    with (
        pytest.raises(error, match=says) as raised,
        Database(settings) as database,
        database.connection() as conn,
    ):
        users.count(conn)
    assert time.monotonic() - started < 2.5  # the connect timeout, not pool_timeout
    message = str(raised.value)
    assert "\n" not in message and "hunter2-secret" not in message
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert noisy == [], [r.getMessage() for r in noisy]


@needs_session(OPTIONS_REFUSED)
def test_options_in_the_url_are_kept_beside_the_toolkits_own(database_url: str) -> None:
    url = make_conninfo(database_url, options="-c search_path=pg_catalog,public")
    settings = load_settings(database_url=url, statement_timeout_ms=4321)
    with Database(settings) as database, database.connection() as conn:
        assert fetchone(conn, "SHOW search_path") == ("pg_catalog,public",)
        assert fetchone(conn, "SHOW statement_timeout") == ("4321ms",)


def test_serialization_failures_are_retryable_conflicts(db) -> None:
    with db.connection() as conn:
        agent = make_agent(conn)
    with (
        pytest.raises(RetryableConflict, match="retry the whole transaction"),
        db.transaction() as first,
    ):
        execute(first, "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        agents.get(first, agent.id)
        with db.connection() as other:
            agents.update(other, agent.id, expected_version=agent.version, description="x")
        agents.update(first, agent.id, expected_version=agent.version, description="y")
    assert issubclass(RetryableConflict, Conflict)


# -- COMMIT whose answer is lost ----------------------------------------------


@pytest.fixture
def slow_commit(superuser) -> None:
    """Agents named 'slow' make COMMIT take 3 s on the server (a deferred trigger)."""
    superuser.execute(
        """
        CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_sleep(3); RETURN NULL; END $$;
        CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON agents
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.name = 'slow')
        EXECUTE FUNCTION slow_commit();
        """
    )


@pytest.fixture
def proxied_db(database_url: str) -> Iterator[tuple[Database, TcpProxy]]:
    with TcpProxy(upstream_port=PG_PORT) as proxy:
        url = make_conninfo(database_url, host=proxy.host, port=proxy.port)
        settings = load_settings(database_url=url, pool_timeout=1.0, connect_timeout=1)
        with Database(settings) as database:
            yield database, proxy


@pytest.mark.parametrize("server_reachable", [True, False], ids=["reachable", "unreachable"])
def test_commit_cut_with_an_unknowable_outcome_says_so_and_can_be_asked_later(
    proxied_db: tuple[Database, TcpProxy], slow_commit: None, db: Database, server_reachable: bool
) -> None:
    database, proxy = proxied_db
    with db.connection() as conn:
        owner = make_user(conn)

    def cut() -> None:
        proxy.cut_all()
        if not server_reachable:
            proxy.refuse_new()

    threading.Timer(0.5, cut).start()
    with (
        pytest.raises(OutcomeUnknown, match="may have committed") as raised,
        database.transaction() as tx,
    ):
        make_agent(tx, owner, name="slow")
    error = raised.value
    assert not isinstance(error, Unavailable)
    assert f"transaction_status({error.xid})" in str(error)
    seen = "unreachable" if not server_reachable else "in progress"
    assert seen in str(error)
    assert error.server_started_at is not None
    proxy.restore()
    deadline = time.monotonic() + 10
    while (
        status := database.transaction_status(error.xid, server_started_at=error.server_started_at)
    ) == "in progress":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # The slow COMMIT finished on the server after its client was gone (no restart between).
    assert status == "committed"
    with db.connection() as conn:
        assert [a.name for a in agents.list(conn).items] == ["slow"]


def test_transaction_status_answers_for_known_transactions_and_rejects_junk(db) -> None:
    with db.connection() as conn:
        execute(conn, "BEGIN")
        xid = int(fetchone(conn, "SELECT pg_current_xact_id()::text")[0])
        execute(conn, "ROLLBACK")
        execute(conn, "BEGIN")
        committed = int(fetchone(conn, "SELECT pg_current_xact_id()::text")[0])
        execute(conn, "COMMIT")
    assert db.transaction_status(xid) == "aborted"
    assert db.transaction_status(committed) == "committed"
    for junk in (0, -1, True, "12", 2**64):
        with pytest.raises(InvalidInput):
            db.transaction_status(junk)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="in the future"):
        db.transaction_status(committed + 10_000_000)


def test_after_a_restart_committed_is_not_trusted_and_in_progress_means_aborted(db) -> None:
    """After a crash PostgreSQL hands out again the ids whose WAL never reached the disk.

    So when the server started after the one COMMIT was sent to (seen here as a
    start time other than the server's), "committed" may be a later
    transaction's: OutcomeUnknown; and "in progress" can only be a later one:
    ours was rolled back. The restart scenario in tests/reliability met both.
    """
    with db.connection() as conn:
        started = fetchone(conn, "SELECT pg_postmaster_start_time()")[0]
        execute(conn, "BEGIN")
        committed = int(fetchone(conn, "SELECT pg_current_xact_id()::text")[0])
        execute(conn, "COMMIT")
    before_a_restart = started - dt.timedelta(minutes=5)
    assert db.transaction_status(committed, server_started_at=started) == "committed"
    with pytest.raises(OutcomeUnknown, match="server restarted") as raised:
        db.transaction_status(committed, server_started_at=before_a_restart)
    assert raised.value.xid == committed
    with db.connection() as holder:
        execute(holder, "BEGIN")
        running = int(fetchone(holder, "SELECT pg_current_xact_id()::text")[0])
        assert db.transaction_status(running, server_started_at=started) == "in progress"
        assert db.transaction_status(running, server_started_at=before_a_restart) == "aborted"
        execute(holder, "ROLLBACK")


def test_row_values_from_the_server_stay_out_of_error_messages(db) -> None:
    with db.connection() as conn:
        owner = make_user(conn, email="private.person@example.com")
        with pytest.raises(Conflict) as raised:
            make_user(conn, email="Private.Person@example.com")
        with pytest.raises(InvalidReference) as dangling:
            make_agent(conn, owner, owner_id="00000000-0000-4000-8000-00000000abcd")
    assert "private.person" not in str(raised.value).lower()
    assert "private.person@example.com" in (raised.value.detail or "").lower()
    assert "00000000-0000-4000-8000-00000000abcd" not in str(dangling.value)


def _sessions_in(dbname: str, stop: threading.Event, peak: list[int]) -> None:
    """Sample how many other sessions ``dbname`` has, keeping the highest, until ``stop``."""
    with psycopg.connect(server_url(dbname), autocommit=True) as watcher:
        while not stop.is_set():
            row = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                [dbname],
            ).fetchone()
            peak.append(max(peak[-1], int(row[0]) if row else 0))


def _use_all_at_once(mode: Any, database: Any, workers: int) -> list[BaseException]:
    """``workers`` threads (sync) or tasks (async) each run one query, all starting together.

    Returns what they raised.
    """
    if mode.is_async:
        adb = database.target

        async def work() -> None:
            async with adb.connection() as conn:
                await conn.execute("SELECT pg_sleep(0.02)")

        async def all_at_once() -> list[Any]:
            return await asyncio.gather(*(work() for _ in range(workers)), return_exceptions=True)

        return [result for result in mode.run(all_at_once()) if result is not None]
    start = threading.Barrier(workers)
    failures: list[BaseException] = []

    def work_in_thread() -> None:
        start.wait()
        try:
            with database.connection() as conn:
                conn.execute("SELECT pg_sleep(0.02)")
        except BaseException as exc:  # returned to the test, which asserts on it
            failures.append(exc)

    threads = [threading.Thread(target=work_in_thread) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return failures


@pytest.mark.parametrize(("workers", "pool_max_size"), [(16, 2), (200, 4)])
def test_first_use_at_once_opens_the_pool_once(
    mode, database_url: str, pg_client: psycopg.Connection[Any], workers: int, pool_max_size: int
) -> None:
    dbname = pg_client.info.dbname
    baseline = int(
        pg_client.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [dbname]
        ).fetchone()[0]
    )
    stop, peak = threading.Event(), [0]
    watcher = threading.Thread(target=_sessions_in, args=(dbname, stop, peak))
    watcher.start()
    # Through a proxy that counts every connection made, however short-lived.
    with TcpProxy(upstream_port=PG_PORT) as proxy:
        settings = load_settings(
            database_url=make_conninfo(database_url, host=proxy.host, port=proxy.port),
            pool_min_size=0,
            pool_max_size=pool_max_size,
            pool_timeout=20.0,
        )
        database = Database(settings, warn_if_privileged=False)  # not opened: first use opens it
        try:
            failures = _use_all_at_once(mode, database, workers)
        finally:
            stop.set()
            watcher.join(10)
            database.close()
        opened = proxy.stats.accepted
    assert not failures, failures[0]
    # The pool's connections plus the one probe of opening, never one probe per caller.
    assert opened <= pool_max_size + 1, f"{opened} sessions opened"
    assert peak[-1] - baseline <= pool_max_size + 1, f"{peak[-1] - baseline} at once"


def test_a_closed_database_refuses_every_use_with_a_toolkit_error(settings) -> None:
    database = Database(settings, warn_if_privileged=False)
    with database, database.connection() as conn:
        assert fetchone(conn, "SELECT 1") == (1,)
    database.close()  # a second close is harmless

    def enter(manager: Any) -> None:
        with manager:
            pass

    uses = {
        "open": database.open,
        "with": lambda: enter(database),
        "connection": lambda: enter(database.connection()),
        "transaction": lambda: enter(database.transaction()),
        "stats": database.stats,
        "transaction_status": lambda: database.transaction_status(1),
    }
    for name, use in uses.items():
        with pytest.raises(Closed, match=r"closed by close\(\).*make a new") as raised:
            use()
        assert "Database" in str(raised.value), name


def test_a_database_closed_before_first_use_refuses_it_too(settings) -> None:
    database = Database(settings, warn_if_privileged=False)
    database.close()
    with pytest.raises(Closed), database.connection():
        pass


def test_callers_waiting_on_a_failed_opening_share_its_error(mode, database_url: str) -> None:
    with TcpProxy(upstream_port=PG_PORT) as proxy:
        settings = load_settings(
            database_url=make_conninfo(database_url, host=proxy.host, port=proxy.port),
            connect_timeout=1,
            pool_timeout=1,
        )
        database = Database(settings, warn_if_privileged=False)
        proxy.stall()  # a server that accepts and never answers
        started = time.monotonic()
        failures = _use_all_at_once(mode, database, 16)
        elapsed = time.monotonic() - started
    assert len(failures) == 16
    assert all(isinstance(failure, Unavailable) for failure in failures), failures
    # Not 16 probes of connect_timeout one after another.
    assert elapsed < 5, f"{elapsed:.1f}s"
    with pytest.raises(Unavailable):  # a later caller tries again itself
        database.open()
    database.close()


def test_a_caller_waiting_for_a_connection_when_close_runs_gets_closed(
    mode, database_url: str
) -> None:
    settings = load_settings(database_url=database_url, pool_max_size=1, pool_timeout=10.0)
    database = Database(settings, warn_if_privileged=False)
    if mode.is_async:
        adb = database.target

        async def close_under_a_waiter() -> BaseException | None:
            async with adb.connection():
                waiter = asyncio.create_task(adb.connection().__aenter__())
                await asyncio.sleep(0.2)  # the waiter is queued for the only connection
                closing = asyncio.create_task(adb.close())
                raised = (await asyncio.gather(waiter, return_exceptions=True))[0]
            await closing
            return raised if isinstance(raised, BaseException) else None

        raised = mode.run(close_under_a_waiter())
    else:
        outcome: list[BaseException] = []

        def wait_for_a_connection() -> None:
            try:
                with database.connection():
                    pass
            except BaseException as exc:  # returned to the test, which asserts on it
                outcome.append(exc)

        with database.connection():
            waiter = threading.Thread(target=wait_for_a_connection)
            waiter.start()
            time.sleep(0.2)  # the waiter is queued for the only connection
            closing = threading.Thread(target=database.close)
            closing.start()
            waiter.join(10)
        closing.join(10)
        raised = outcome[0] if outcome else None
    assert isinstance(raised, Closed), raised


# -- one door: the transaction a write with audit= opens on a bare connection ----


@pytest.fixture
def doomed_commit(superuser) -> None:
    """Agents named 'doomed' make their backend die at COMMIT (a deferred trigger)."""
    superuser.execute(
        """
        CREATE FUNCTION doomed_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$;
        CREATE CONSTRAINT TRIGGER doomed_commit AFTER INSERT ON agents
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.name = 'doomed')
        EXECUTE FUNCTION doomed_commit();
        """
    )


def _stored(superuser: psycopg.Connection[Any], name: str) -> tuple[int, int]:
    """How many agents named ``name`` and their 'agent.created' audit events exist."""
    row = superuser.execute(
        "SELECT (SELECT count(*) FROM agents WHERE name = %(n)s),"
        " (SELECT count(*) FROM audit_events AS e JOIN agents AS a ON a.id = e.entity_id"
        "  WHERE a.name = %(n)s AND e.action = 'agent.created')",
        {"n": name},
    ).fetchone()
    assert row is not None
    return row[0], row[1]


@pytest.mark.parametrize("lookup_for", [1.0, 8.0], ids=["outcome-unknown", "looked-up"])
def test_an_audited_write_on_a_bare_connection_whose_commit_is_cut_is_looked_up(
    database_url: str, slow_commit: None, db: Database, superuser, lookup_for: float
) -> None:
    # agents.create(conn, audit=...) on a pooled autocommit connection opens a
    # transaction of its own; its COMMIT (held 3 s by the trigger) is cut by the proxy.
    with db.connection() as conn:
        owner = make_user(conn)
    data = {"owner_id": owner.id, "name": "slow", "type": "assistant"}
    with TcpProxy(upstream_port=PG_PORT) as proxy:
        url = make_conninfo(database_url, host=proxy.host, port=proxy.port)
        settings = load_settings(database_url=url, pool_timeout=lookup_for, connect_timeout=1)
        with (
            Database(settings, warn_if_privileged=False) as database,
            database.connection() as conn,
        ):
            threading.Timer(0.5, proxy.cut_all).start()
            if lookup_for < 3:
                # The lookup gives up while the server still commits.
                with pytest.raises(OutcomeUnknown, match="may have committed") as raised:
                    agents.create(conn, data, audit=Audit(actor_id=owner.id))
                assert "in progress" in str(raised.value)
                deadline = time.monotonic() + 10
                while database.transaction_status(raised.value.xid) == "in progress":
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            else:
                # The lookup waits for the server's answer: it committed.
                created = agents.create(conn, data, audit=Audit(actor_id=owner.id))
                assert created.name == "slow"
    assert _stored(superuser, "slow") == (1, 1)


def test_an_audited_write_on_a_bare_connection_lost_at_commit_says_nothing_was_written(
    db: Database, doomed_commit: None, superuser
) -> None:
    with db.connection() as conn:
        owner = make_user(conn)
    data = {"owner_id": owner.id, "name": "doomed", "type": "assistant"}
    with db.connection() as conn, pytest.raises(Unavailable, match="nothing was written"):
        agents.create(conn, data, audit=Audit(actor_id=owner.id))
    assert _stored(superuser, "doomed") == (0, 0)


def test_a_connection_not_from_a_database_gets_the_same_door_without_the_lookup(
    mode: Any, database_url: str, doomed_commit: None, superuser
) -> None:
    with database_module.connect(database_url, connect_timeout=2, context="test") as conn:
        owner = make_user(conn)
        agent = agents.create(  # a commit that goes through is just that
            conn, {"owner_id": owner.id, "name": "fine", "type": "assistant"}, audit=Audit()
        )
        assert agent.name == "fine"
        data = {"owner_id": owner.id, "name": "doomed", "type": "assistant"}
        with pytest.raises(OutcomeUnknown, match="did not come from a Database"):
            agents.create(conn, data, audit=Audit(actor_id=owner.id))
    assert _stored(superuser, "fine") == (1, 1)
    assert _stored(superuser, "doomed") == (0, 0)


def test_the_door_refuses_a_connection_already_inside_a_transaction(db: Database) -> None:
    with (
        db.transaction() as tx,
        pytest.raises(InvalidInput, match=r"idle autocommit one .* INTRANS"),
        database_module.transaction_on(tx),
    ):
        pass
