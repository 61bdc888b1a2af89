"""The tenant travels with the unit of work through the one door, and never beyond it.

``Database.transaction(tenant=...)`` / ``connection(tenant=...)`` (and the
async twins) send BEGIN and a transaction-local ``toolkit.tenant_id`` in one
round trip; the setting ends with the transaction, so a pooled connection
handed back carries none. Every test runs as a LOGIN role in toolkit_app
against ``tenant_probe``, a table this file makes in the test's own database
with the policy shape of TENANCY.md (ENABLE + FORCE, four policies TO
PUBLIC comparing ``tenant_id`` with ``(SELECT public.toolkit_tenant())``),
owned by the superuser; ``public.toolkit_tenant()`` is created only where
the schema's migration has not made it already.

Round trips and the refusal check are counted on the wire: libpq's trace of
the pooled connection (every ``ReadyForQuery`` the server sends ends one
round trip), so nothing is patched.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import pq, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.conftest import PG_PORT, url_as
from tests.support.modes import both, execute, fetchone
from tests.support.tcp_proxy import TcpProxy
from toolkit.aio.db import AsyncDatabase
from toolkit.aio.db import database as async_database
from toolkit.config import load_settings
from toolkit.db import Database
from toolkit.db.errors import translate_error
from toolkit.db.tenancy import CURRENT_TENANT, DEFAULT_TENANT, tenant_id
from toolkit.errors import (
    ConfigurationError,
    DatabaseError,
    InvalidInput,
    InvalidReference,
    TenancyUnavailable,
    TenantMismatch,
    TenantRequired,
    Unavailable,
)

database_module = both("toolkit.db.database")

TENANT_A = uuid.UUID("aaaaaaaa-0000-4000-8000-00000000000a")
TENANT_B = uuid.UUID("bbbbbbbb-0000-4000-8000-00000000000b")
ROWS = 3
"""Rows each tenant has in tenant_probe."""

CHECKOUTS = int(os.environ.get("TOOLKIT_TENANCY_CHECKOUTS", "10000"))
"""Checkouts of the alternating-tenants runs, per API (sync threads, async tasks)."""

TOOLKIT_TENANT = """
DO $do$ BEGIN
    IF to_regprocedure('public.toolkit_tenant()') IS NULL THEN
        CREATE FUNCTION public.toolkit_tenant() RETURNS uuid
        LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
        AS $fn$
        DECLARE
            tenant text := current_setting('toolkit.tenant_id', true);
        BEGIN
            IF tenant IS NULL OR tenant = '' THEN
                RAISE EXCEPTION 'no tenant is set for this transaction'
                    USING ERRCODE = 'TN001',
                          HINT = 'run it in Database.transaction(tenant=...)';
            END IF;
            RETURN tenant::uuid;
        END
        $fn$;
    END IF;
END
$do$
"""

TENANT_PROBE = """
CREATE TABLE tenant_probe (
    tenant_id uuid NOT NULL,
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    label text NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
ALTER TABLE tenant_probe ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_probe FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_select ON tenant_probe FOR SELECT TO PUBLIC
    USING (tenant_id = (SELECT public.toolkit_tenant()));
CREATE POLICY tenant_insert ON tenant_probe FOR INSERT TO PUBLIC
    WITH CHECK (tenant_id = (SELECT public.toolkit_tenant()));
CREATE POLICY tenant_update ON tenant_probe FOR UPDATE TO PUBLIC
    USING (tenant_id = (SELECT public.toolkit_tenant()))
    WITH CHECK (tenant_id = (SELECT public.toolkit_tenant()));
CREATE POLICY tenant_delete ON tenant_probe FOR DELETE TO PUBLIC
    USING (tenant_id = (SELECT public.toolkit_tenant()));
GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_probe TO toolkit_app;
"""

SEEN = """
SELECT pg_catalog.current_setting('toolkit.tenant_id', true),
       count(*) FILTER (WHERE tenant_id = %(me)s),
       count(*) FILTER (WHERE tenant_id <> %(me)s)
FROM tenant_probe
"""
"""In one round trip: the tenant setting, this tenant's rows, and any other tenant's rows."""

DOOMED = "INSERT INTO tenant_probe (tenant_id, label) VALUES (%s, 'doomed')"
"""A write every injected rollback and cancellation must undo (ROWS stays ROWS)."""


@pytest.fixture
def probe(superuser: psycopg.Connection[Any]) -> None:
    """tenant_probe with ROWS rows for each of TENANT_A and TENANT_B (written as the superuser)."""
    superuser.execute(TOOLKIT_TENANT)
    superuser.execute(TENANT_PROBE)
    for tenant in (TENANT_A, TENANT_B):
        for n in range(ROWS):
            superuser.execute(
                "INSERT INTO tenant_probe (tenant_id, label) VALUES (%s, %s)", [tenant, f"row {n}"]
            )


@pytest.fixture
def app_url(database_url: str, make_role: Callable[..., str], probe: None) -> str:
    """The test database as a fresh LOGIN role in toolkit_app (no BYPASSRLS, owns nothing)."""
    return url_as(database_url, make_role("LOGIN"))


def _settings(url: str, pool_max_size: int = 1) -> Any:
    return load_settings(
        database_url=url, pool_min_size=0, pool_max_size=pool_max_size, pool_timeout=10.0
    )


def _current_tenant(conn: Any) -> str | None:
    row = fetchone(conn, CURRENT_TENANT)
    return None if row is None else row[0]


def _seen(conn: Any, me: uuid.UUID) -> tuple[str | None, int, int]:
    row = fetchone(conn, SEEN, {"me": me})
    assert row is not None
    return row[0], row[1], row[2]


@contextmanager
def traced(conn: Any, path: Path) -> Iterator[list[str]]:
    """libpq's protocol trace of ``conn`` while inside: the list is filled on the way out.

    (libpq flushes its trace when tracing stops, so it is read then.)
    """
    lines: list[str] = []
    with path.open("w") as sink:
        conn.pgconn.trace(os.dup(sink.fileno()))
    conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
    try:
        yield lines
    finally:
        conn.pgconn.untrace()
        lines.extend(path.read_text().splitlines())


def _messages(lines: list[str]) -> list[str]:
    """The traced protocol messages (a statement's own newlines continue its message)."""
    messages: list[str] = []
    for line in lines:
        if re.match(r"[FB]\t\d+\t", line) or not messages:
            messages.append(line)
        else:
            messages[-1] += "\n" + line
    return messages


def _sent(lines: list[str], containing: str = "") -> list[str]:
    """The messages the client sent, those containing ``containing``."""
    return [m for m in _messages(lines) if m.startswith("F\t") and containing in m]


def _round_trips(lines: list[str]) -> int:
    """Each round trip ends with the server's ReadyForQuery."""
    return sum(1 for m in _messages(lines) if re.match(r"B\t\d+\tReadyForQuery\t", m))


# -- the setting lives and dies with the unit of work (both APIs) -----------------


@pytest.mark.parametrize("entry", ["transaction", "connection"])
def test_the_tenant_is_set_inside_the_block_and_gone_from_the_next_checkout(
    mode: Any, app_url: str, entry: str
) -> None:
    with database_module.Database(_settings(app_url)) as db:
        for tenant in (TENANT_A, str(TENANT_B)):  # a UUID or its text
            with getattr(db, entry)(tenant=tenant) as conn:
                backend = conn.info.backend_pid
                assert _seen(conn, uuid.UUID(str(tenant))) == (str(tenant), ROWS, 0)
            with db.connection() as conn:  # pool_max_size=1: the same pooled connection
                assert conn.info.backend_pid == backend
                assert conn.info.transaction_status == pq.TransactionStatus.IDLE
                assert _current_tenant(conn) in (None, "")


def test_connection_with_a_tenant_is_one_transaction(mode: Any, app_url: str) -> None:
    """Committed on exit, rolled back whole by an exception, like transaction(tenant=...)."""
    with database_module.Database(_settings(app_url)) as db:
        with db.connection(tenant=TENANT_A) as conn:
            assert conn.info.transaction_status == pq.TransactionStatus.INTRANS
            execute(conn, DOOMED, [TENANT_A])
        with pytest.raises(RuntimeError), db.connection(tenant=TENANT_A) as conn:
            execute(conn, DOOMED, [TENANT_A])
            raise RuntimeError("injected")
        with db.connection(tenant=TENANT_A) as conn:
            assert _seen(conn, TENANT_A)[1] == ROWS + 1


def test_an_error_in_the_block_rolls_back_and_hands_the_connection_back_clean(
    mode: Any, app_url: str
) -> None:
    with database_module.Database(_settings(app_url)) as db:
        with pytest.raises(RuntimeError), db.transaction(tenant=TENANT_A) as tx:
            execute(tx, DOOMED, [TENANT_A])
            raise RuntimeError("injected")
        with pytest.raises(TenantMismatch), db.transaction(tenant=TENANT_A) as tx:
            execute(tx, DOOMED, [TENANT_A])
            execute(tx, DOOMED, [TENANT_B])  # a failed statement inside
        with db.connection() as conn:
            assert conn.info.transaction_status == pq.TransactionStatus.IDLE
            assert _current_tenant(conn) in (None, "")
        with db.transaction(tenant=TENANT_A) as tx:
            assert _seen(tx, TENANT_A) == (str(TENANT_A), ROWS, 0)


def test_tenant_owned_rows_without_a_tenant_raise_tenant_required(mode: Any, app_url: str) -> None:
    """Not an empty result: the policies ask toolkit_tenant(), which raises TN001."""
    with database_module.Database(_settings(app_url)) as db:
        with (
            pytest.raises(TenantRequired, match=r"transaction\(tenant=\.\.\.\)"),
            db.transaction() as tx,
        ):
            fetchone(tx, "SELECT count(*) FROM tenant_probe")
        with db.connection() as conn:
            with pytest.raises(psycopg.Error) as raised:
                fetchone(conn, "SELECT count(*) FROM tenant_probe")
            assert raised.value.sqlstate == "TN001"
            assert isinstance(translate_error(raised.value, "probe"), TenantRequired)
            with pytest.raises(psycopg.Error) as raised:
                execute(conn, DOOMED, [TENANT_A])  # a write without one too
            assert isinstance(translate_error(raised.value, "probe"), TenantRequired)
    assert issubclass(TenantRequired, ConfigurationError)


def test_a_row_naming_another_tenant_is_a_tenant_mismatch_naming_only_the_table(
    mode: Any, app_url: str
) -> None:
    with database_module.Database(_settings(app_url)) as db:
        for statement, params in (
            ("INSERT INTO tenant_probe (tenant_id, label) VALUES (%s, 'secret-label')", [TENANT_B]),
            ("UPDATE tenant_probe SET tenant_id = %s", [TENANT_B]),
        ):
            with pytest.raises(TenantMismatch) as raised, db.transaction(tenant=TENANT_A) as tx:
                execute(tx, statement, params)
            error = raised.value
            assert isinstance(error, InvalidReference)
            assert error.table == "tenant_probe"
            assert '"tenant_probe"' in str(error) and "nothing was written" in str(error)
            assert str(TENANT_B) not in str(error) and "secret-label" not in str(error)
        with db.transaction(tenant=TENANT_A) as tx:  # another tenant's rows: untouched, unseen
            assert (
                execute(
                    tx, "UPDATE tenant_probe SET label = 'x' WHERE tenant_id = %s", [TENANT_B]
                ).rowcount
                == 0
            )
            assert (
                execute(tx, "DELETE FROM tenant_probe WHERE tenant_id = %s", [TENANT_B]).rowcount
                == 0
            )
        with db.transaction(tenant=TENANT_B) as tx:
            assert _seen(tx, TENANT_B) == (str(TENANT_B), ROWS, 0)
        # Other SQLSTATE 42501 errors stay what they were.
        for statement in (
            "ALTER TABLE tenant_probe ADD COLUMN sneaky text",  # permission denied
            "SET LOCAL row_security = off; SELECT count(*) FROM tenant_probe",
        ):
            with pytest.raises(DatabaseError) as other, db.transaction(tenant=TENANT_A) as tx:
                execute(tx, statement)
            assert not isinstance(other.value, TenantMismatch)
            assert "SQLSTATE 42501" in str(other.value)


@pytest.mark.parametrize(
    "bad",
    [
        True,
        0,
        1.5,
        b"aaaaaaaa-0000-4000-8000-00000000000a",
        "not-a-uuid",
        "a" * 100_000,
        [TENANT_A],
    ],
    ids=["bool", "int", "float", "bytes", "text", "huge-text", "list"],
)
def test_a_tenant_that_is_not_a_uuid_is_refused_before_anything_runs(
    mode: Any, database_url: str, bad: object
) -> None:
    # As the superuser: the value is refused before the role is even checked.
    with database_module.Database(_settings(database_url), warn_if_privileged=False) as db:
        for entry in (db.transaction, db.connection):
            with pytest.raises(InvalidInput) as raised, entry(tenant=bad):
                pass
            assert raised.value.field == "tenant"
            assert len(str(raised.value)) < 100 and len(raised.value.value or "") <= 80
        assert db.stats().get("pool_size", 0) == 0  # nothing was checked out


def test_tenant_id_normalises_what_it_accepts() -> None:
    class Sneaky(uuid.UUID):
        def __str__(self) -> str:
            return "'); DROP TABLE agents; --"

    sneaky = Sneaky(str(TENANT_A))
    assert type(tenant_id(sneaky)) is uuid.UUID and str(tenant_id(sneaky)) == str(TENANT_A)
    for text in (str(TENANT_A).upper(), "{" + str(TENANT_A) + "}", f"urn:uuid:{TENANT_A}"):
        assert tenant_id(text) == TENANT_A
    assert str(DEFAULT_TENANT) == "00000000-0000-0000-0000-000000000000"


# -- one round trip, and nothing sent without a tenant ----------------------------


def test_a_tenant_costs_no_round_trip_and_without_one_only_begin_is_sent(
    mode: Any, app_url: str, tmp_path: Path
) -> None:
    with database_module.Database(_settings(app_url)) as db:
        with db.transaction(tenant=TENANT_A):
            pass  # the role's one check is made here
        with db.connection() as conn:  # pool_max_size=1: the one every checkout gets
            pass
        trips = {}
        for tenant in (None, TENANT_A):
            with traced(conn, tmp_path / f"{tenant}.trace") as lines, db.transaction(tenant) as tx:
                assert tx is conn
                execute(tx, "SELECT 1")
            sent = _sent(lines)
            trips[tenant] = _round_trips(lines)
            begins = _sent(lines, "BEGIN")
            assert len(begins) == 1, sent
            if tenant is None:
                assert begins[0].endswith('Query\t "BEGIN"'), begins
                assert not any("toolkit.tenant_id" in line for line in sent)
            else:
                assert f"set_config('toolkit.tenant_id', '{TENANT_A}', true)" in begins[0]
                assert "\tQuery\t" in begins[0]  # one simple query: one round trip
            assert not any("rolbypassrls" in line for line in sent)  # the check was remembered
        assert trips[None] == trips[TENANT_A], trips


# -- refusal: roles that row-level security does not bind ------------------------


@pytest.mark.parametrize("kind", ["superuser", "bypassrls", "owner", "member of the owner"])
def test_tenant_scoped_work_refuses_to_start_on_a_role_rls_does_not_bind(
    mode: Any,
    kind: str,
    database_url: str,
    make_role: Callable[..., str],
    superuser: psycopg.Connection[Any],
    probe: None,
) -> None:
    if kind == "superuser":
        url, expected = database_url, "a superuser"
    elif kind == "bypassrls":
        url, expected = url_as(database_url, make_role("LOGIN BYPASSRLS")), "BYPASSRLS"
    else:
        login = make_role("LOGIN")
        owner = login if kind == "owner" else make_role("NOLOGIN", member_of=())
        if owner != login:
            superuser.execute(
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(owner), sql.Identifier(login))
            )
        superuser.execute(
            sql.SQL("ALTER TABLE tenant_probe OWNER TO {}").format(sql.Identifier(owner))
        )
        url, expected = url_as(database_url, login), "the owner of the tables"
    with database_module.Database(_settings(url), warn_if_privileged=False) as db:
        for entry in (db.transaction, db.connection):
            with pytest.raises(TenancyUnavailable) as refused, entry(tenant=TENANT_A):
                pytest.fail("the block ran")
            message = str(refused.value)
            assert "\n" not in message and expected in message, message
            others = {"a superuser", "BYPASSRLS", "the owner of the tables"} - {expected}
            if kind != "superuser":  # a superuser usually has BYPASSRLS too
                reasons = message.partition(", so ")[0]  # the fix after it names all three
                assert not any(other in reasons for other in others), message
            assert isinstance(refused.value, ConfigurationError)
        with db.connection() as conn:  # nothing was begun, and work without a tenant still runs
            assert conn.info.transaction_status == pq.TransactionStatus.IDLE
            assert _current_tenant(conn) in (None, "")
        with db.transaction() as tx:
            execute(tx, "SELECT 1")


def test_the_role_is_checked_once_per_database_and_the_answer_remembered(
    mode: Any,
    app_url: str,
    database_url: str,
    superuser: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    """Counted on the wire; and a role made the tables' owner after the check still passes
    on the Database that checked it (the answer is remembered), not on a new one."""
    role = conninfo_to_dict(app_url)["user"]
    with database_module.Database(_settings(app_url)) as db:
        with db.connection() as conn:  # pool_max_size=1: the one every checkout gets
            pass
        with traced(conn, tmp_path / "checks.trace") as lines:
            for n in range(20):
                entry = db.transaction if n % 2 else db.connection
                with entry(tenant=(TENANT_A, TENANT_B)[n % 2]) as tx:
                    assert tx is conn
                    execute(tx, "SELECT 1")
        checks = _sent(lines, "rolbypassrls")
        assert len(checks) == 1, checks
        superuser.execute(
            sql.SQL("ALTER TABLE tenant_probe OWNER TO {}").format(sql.Identifier(role))
        )
        with db.transaction(tenant=TENANT_A) as tx:  # remembered: not asked again
            # FORCE binds the owner too: still only this tenant's rows.
            assert _seen(tx, TENANT_A) == (str(TENANT_A), ROWS, 0)
    with (
        database_module.Database(_settings(app_url)) as fresh,
        pytest.raises(TenancyUnavailable, match="the owner of the tables"),
        fresh.transaction(tenant=TENANT_A),
    ):
        pass


def test_a_connection_of_the_applications_own_is_checked_too(
    mode: Any, app_url: str, database_url: str, tmp_path: Path
) -> None:
    with database_module.connect(database_url, connect_timeout=2, context="test") as conn:
        with (
            pytest.raises(TenancyUnavailable, match="a superuser"),
            database_module.transaction_on(conn, tenant=TENANT_A),
        ):
            pass
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
    with database_module.connect(app_url, connect_timeout=2, context="test") as conn:
        with traced(conn, tmp_path / "own.trace") as lines:
            for tenant in (TENANT_A, TENANT_B, TENANT_A):
                with database_module.transaction_on(conn, tenant=tenant) as tx:
                    assert _seen(tx, tenant) == (str(tenant), ROWS, 0)
        assert len(_sent(lines, "rolbypassrls")) == 1
        assert _current_tenant(conn) in (None, "")


@pytest.mark.asyncio
async def test_a_task_cancelled_while_begin_is_in_flight_leaves_no_tenant_behind(
    app_url: str,
) -> None:
    """On a connection of the application's own (a pooled one is also rolled back on return):
    BEGIN and the tenant arrive after the cancellation, and are rolled back there and then."""
    params = conninfo_to_dict(app_url)
    with TcpProxy(upstream_port=int(params.get("port") or PG_PORT)) as proxy:
        url = make_conninfo(**{**params, "host": proxy.host, "port": proxy.port})
        conn = await async_database.connect(url, connect_timeout=2, context="test")
        async with conn:
            async with async_database.transaction_on(conn, tenant=TENANT_A):
                pass  # the role's one check, made before the wire slows down
            proxy.add_latency(0.2)
            started = asyncio.Event()

            async def begin() -> None:
                started.set()
                async with async_database.transaction_on(conn, tenant=TENANT_B):
                    pytest.fail("the block ran")

            task = asyncio.create_task(begin())
            await started.wait()
            await asyncio.sleep(0.05)  # BEGIN; set_config(...) is on the wire
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert conn.info.transaction_status == pq.TransactionStatus.IDLE
            proxy.restore()
            row = await (await conn.execute(CURRENT_TENANT)).fetchone()
            assert row is not None and row[0] in (None, "")


# -- 10,000 checkouts alternating tenants, with rollbacks and cancellations ------


class Tally:
    """What the concurrent runs saw; ``wrong`` and ``not_undone`` must stay 0."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wrong = 0  # another tenant's rows seen, or a tenant setting not the block's own
        self.not_undone = 0  # checkouts that saw a rolled back or cancelled write committed
        self.kinds: dict[str, int] = {}
        self.errors: list[BaseException] = []

    def saw(self, tenant: uuid.UUID, seen: tuple[str | None, int, int]) -> None:
        setting, mine, others = seen
        with self.lock:
            self.wrong += others + (setting != str(tenant))
            self.not_undone += mine != ROWS

    def count(self, kind: str) -> None:
        with self.lock:
            self.kinds[kind] = self.kinds.get(kind, 0) + 1


class Injected(Exception):
    """The exception an injected rollback raises inside the block."""


def _plan(n: int) -> tuple[uuid.UUID | str, str]:
    """The n-th checkout's tenant (alternating, as a UUID or its text) and what it does."""
    tenant: uuid.UUID | str = (TENANT_A, TENANT_B)[n % 2]
    if n % 4 >= 2:
        tenant = str(tenant)
    if n % 23 == 0:
        kind = "cancelled"
    elif n % 7 == 0:
        kind = "rolled back"
    elif n % 11 == 0:
        kind = "without a tenant"
    else:
        kind = "read"
    return tenant, kind


def _assert_every_pooled_connection_is_clean(
    settings: list[str | None], superuser: psycopg.Connection[Any], role: str
) -> None:
    """``settings``: the tenant setting each pooled connection, all held at once, shows."""
    assert settings and all(setting in (None, "") for setting in settings), settings
    # A backend whose cancelled statement the server is still winding down can
    # show 'active' for a moment after its connection came back: wait, bounded.
    deadline = time.monotonic() + 5.0
    while True:
        states = superuser.execute(
            "SELECT state FROM pg_stat_activity"
            " WHERE usename = %s AND datname = current_database()",
            [role],
        ).fetchall()
        if [state for (state,) in states] == ["idle"] * len(settings) or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(0.05)
    assert [state for (state,) in states] == ["idle"] * len(settings), states


def test_10000_checkouts_across_threads_never_show_another_tenants_row(
    app_url: str, superuser: psycopg.Connection[Any]
) -> None:
    """8 threads, 4 pooled connections; a rollback is an exception in the block, a
    cancellation a client cancel request for a pg_sleep after a write."""
    threads, pool = 8, 4
    tally = Tally()

    def checkout(db: Database, n: int) -> None:
        tenant, kind = _plan(n)
        me = uuid.UUID(str(tenant))
        entry = db.transaction if n % 3 else db.connection
        if kind == "without a tenant":
            with db.connection() as conn:
                assert _current_tenant(conn) in (None, ""), "a tenant outlived its transaction"
            tally.count(kind)
            return
        try:
            with entry(tenant=tenant) as tx:
                tally.saw(me, _seen(tx, me))
                if kind == "rolled back":
                    tx.execute(DOOMED, [me])
                    raise Injected
                if kind == "cancelled":
                    tx.execute(DOOMED, [me])
                    _cancelled_sleep(tx)
        except Injected:
            pass
        except Unavailable as exc:
            assert kind == "cancelled" and "cancelled" in str(exc), exc
            tally.count("cancelled and rolled back")
        tally.count(kind)

    def run(db: Database, first: int) -> None:
        try:
            for n in range(first, CHECKOUTS, threads):
                checkout(db, n)
        except BaseException as exc:
            tally.errors.append(exc)

    with Database(_settings(app_url, pool_max_size=pool)) as db:
        workers = [threading.Thread(target=run, args=(db, i)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert tally.errors == []
        assert (tally.wrong, tally.not_undone) == (0, 0)
        assert tally.kinds.pop("cancelled and rolled back") == tally.kinds["cancelled"]
        assert sum(tally.kinds.values()) == CHECKOUTS and all(tally.kinds.values()), tally.kinds
        with ExitStack() as stack:
            held = [stack.enter_context(db.connection()) for _ in range(pool)]
            _assert_every_pooled_connection_is_clean(
                [_current_tenant(conn) for conn in held],
                superuser,
                conninfo_to_dict(app_url)["user"],
            )
        with db.connection(tenant=TENANT_A) as tx:  # every injected write was undone
            assert _seen(tx, TENANT_A) == (str(TENANT_A), ROWS, 0)


def _cancelled_sleep(tx: psycopg.Connection[Any]) -> None:
    """A long statement cancelled from another thread (as a client's cancel request is)."""
    done = threading.Event()

    def cancel() -> None:
        while not done.wait(0.002):  # until it lands: a cancel sent before the query is lost
            tx.cancel_safe(timeout=2)

    canceller = threading.Thread(target=cancel)
    canceller.start()
    try:
        tx.execute("SELECT pg_sleep(10)")
    finally:
        done.set()
        canceller.join()


@pytest.mark.asyncio
async def test_10000_checkouts_across_tasks_never_show_another_tenants_row(
    app_url: str, superuser: psycopg.Connection[Any]
) -> None:
    """8 tasks, 4 pooled connections; a cancellation is asyncio.timeout firing in a pg_sleep
    after a write, or (1 read in 10) at whatever await it reaches within a millisecond:
    waiting for a connection, BEGIN, the query, COMMIT. Before AsyncDatabase honoured a
    cancellation psycopg_pool dropped at checkout, some "cancelled" writes committed."""
    tasks, pool = 8, 4
    tally = Tally()
    rng = random.Random(20)

    async def seen(conn: Any, me: uuid.UUID) -> tuple[str | None, int, int]:
        row = await (await conn.execute(SEEN, {"me": me})).fetchone()
        return row[0], row[1], row[2]

    async def checkout(db: AsyncDatabase, n: int) -> None:
        tenant, kind = _plan(n)
        me = uuid.UUID(str(tenant))
        entry = db.transaction if n % 3 else db.connection
        if kind == "without a tenant":
            async with db.connection() as conn:
                row = await (await conn.execute(CURRENT_TENANT)).fetchone()
                assert row is not None and row[0] in (None, ""), "a tenant outlived its transaction"
            tally.count(kind)
            return
        # Cancelled mid-query (pg_sleep), or, for some reads, at any await at all.
        deadline = 0.005 if kind == "cancelled" else rng.choice((None,) * 9 + (0.001,))
        try:
            async with asyncio.timeout(deadline), entry(tenant=tenant) as tx:
                tally.saw(me, await seen(tx, me))
                if kind == "rolled back":
                    await tx.execute(DOOMED, [me])
                    raise Injected
                if kind == "cancelled":
                    await tx.execute(DOOMED, [me])
                    await tx.execute("SELECT pg_sleep(10)")
        except Injected:
            pass
        except TimeoutError:
            tally.count(f"{kind}, timed out")
        tally.count(kind)

    async def run(db: AsyncDatabase, first: int) -> None:
        for n in range(first, CHECKOUTS, tasks):
            await checkout(db, n)

    async with AsyncDatabase(_settings(app_url, pool_max_size=pool)) as db:
        results = await asyncio.gather(*(run(db, i) for i in range(tasks)), return_exceptions=True)
        assert [r for r in results if r is not None] == []
        assert (tally.wrong, tally.not_undone) == (0, 0)
        timed_out = {k: tally.kinds.pop(k) for k in list(tally.kinds) if k.endswith("timed out")}
        assert timed_out.pop("cancelled, timed out") == tally.kinds["cancelled"]
        assert timed_out  # and other checkouts cut wherever their millisecond ran out
        assert sum(tally.kinds.values()) == CHECKOUTS and all(tally.kinds.values()), tally.kinds
        held = []
        for _ in range(pool):  # every pooled connection at once
            manager = db.connection()
            held.append((manager, await manager.__aenter__()))
        try:
            settings = []
            for _, conn in held:
                row = await (await conn.execute(CURRENT_TENANT)).fetchone()
                settings.append(None if row is None else row[0])
            _assert_every_pooled_connection_is_clean(
                settings, superuser, conninfo_to_dict(app_url)["user"]
            )
        finally:
            for manager, _ in held:
                await manager.__aexit__(None, None, None)
        async with db.connection(tenant=TENANT_A) as tx:
            assert await seen(tx, TENANT_A) == (str(TENANT_A), ROWS, 0)
