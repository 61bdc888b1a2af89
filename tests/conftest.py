"""Shared fixtures: the real PostgreSQL the machine runs, one fresh database per test.

The schema is migrated once into a template database (pytest-postgresql's
noproc fixtures: the server is already running and cannot be started as
root); each test gets its own database, a copy of the template or a used copy
brought back to exactly a fresh copy's state under a new name
(tests/support/database_copies.py), so tests cannot see each other's rows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
import venv
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pytest_postgresql import factories

from tests.support.database_copies import DatabaseCopies
from tests.support.modes import Mode, both, running
from tests.support.pgbouncer import POOLER_SETTINGS, THROUGH_PGBOUNCER
from toolkit import DISTRIBUTION
from toolkit.config import Settings, load_settings
from toolkit.db import migrate

# The suite reads no .env file: one left in the checkout would change what it tests
# (tests of .env itself set TOOLKIT_ENV_FILE). Subprocesses inherit this.
os.environ["TOOLKIT_ENV_FILE"] = ""

PG_HOST = os.environ.get("TOOLKIT_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TOOLKIT_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("TOOLKIT_TEST_PG_USER", "postgres")
# One name per test process, so parallel tox environments never collide.
TEST_DB = f"toolkit_test_{os.getpid()}"

if THROUGH_PGBOUNCER:
    # Before any settings are read: what the toolkit needs behind a transaction pooler.
    os.environ.update(POOLER_SETTINGS)


def server_url(dbname: str = "postgres") -> str:
    """A libpq URL for ``dbname`` on the test server."""
    return make_conninfo(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname)


def _require_postgres() -> None:
    try:
        with psycopg.connect(server_url(), connect_timeout=3):
            return
    except psycopg.Error as exc:
        pytest.exit(
            f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} as {PG_USER} ({exc}); "
            "start it: pg_ctlcluster --skip-systemctl-redirect 15 main start",
            returncode=3,
        )


def _load_schema(**params: Any) -> None:
    keys = ("host", "port", "user", "password", "dbname")
    migrate(make_conninfo(**{k: params[k] for k in keys if params.get(k) not in (None, "")}))


pg_server = factories.postgresql_noproc(
    host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=TEST_DB, load=[_load_schema]
)


# TOOLKIT_TEST_FRESH_DATABASES=1: a CREATE DATABASE per test, never a copy
# brought back (to compare, or to rule the reuse out when chasing a failure).
_REUSE_COPIES = os.environ.get("TOOLKIT_TEST_FRESH_DATABASES", "") != "1"


@pytest.fixture(scope="session")
def _database_copies(pg_server: Any) -> Iterator[DatabaseCopies]:
    copies = DatabaseCopies(pg_server.template_dbname, server_url, reuse=_REUSE_COPIES)
    yield copies
    copies.close()
    _COPIES_MADE.append(copies)


_COPIES_MADE: list[DatabaseCopies] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How the tests' databases were made: the counts behind the suite's run time."""
    for copies in _COPIES_MADE:
        reasons = "; ".join(f"{why}: {count}" for why, count in sorted(copies.not_reused.items()))
        terminalreporter.write_line(
            f"test databases: {copies.created} made by CREATE DATABASE, {copies.reused} "
            f"brought back to a fresh copy's state, {copies.dropped} dropped"
            + (f" (not brought back: {reasons})" if reasons else "")
        )


@pytest.fixture
def pg_client(_database_copies: DatabaseCopies) -> Iterator[psycopg.Connection[Any]]:
    """A connection to this test's own copy of the migrated template."""
    name = _database_copies.take()
    try:
        with psycopg.connect(server_url(name)) as connection:
            yield connection
    finally:
        _database_copies.give_back(name)


@pytest.fixture(scope="session", autouse=True)
def _postgres_is_up(request: pytest.FixtureRequest) -> None:
    needs_postgres = any("pg_client" in item.fixturenames for item in request.session.items)
    if needs_postgres:
        _require_postgres()


@pytest.fixture(scope="session")
def pgbouncer_port() -> Iterator[int | None]:
    """With TOOLKIT_TEST_THROUGH_PGBOUNCER=1, the port of a private PgBouncer in
    transaction mode in front of the test server, started for the session; else None."""
    if not THROUGH_PGBOUNCER:
        yield None
        return
    from tests.reliability.private_servers import pgbouncer_available, private_pgbouncer

    if not pgbouncer_available():
        pytest.exit(
            "TOOLKIT_TEST_THROUGH_PGBOUNCER=1 needs pgbouncer, root and the postgres user "
            "(apt-get install -y pgbouncer)",
            returncode=3,
        )
    with private_pgbouncer(PG_HOST, PG_PORT) as bouncer:
        yield bouncer.port


@pytest.fixture
def database_url(pg_client: psycopg.Connection[Any], pgbouncer_port: int | None) -> str:
    """The URL of this test's own freshly migrated database (through PgBouncer in that mode)."""
    info = pg_client.info
    if pgbouncer_port is not None:
        return make_conninfo(
            host="127.0.0.1", port=pgbouncer_port, user=info.user, dbname=info.dbname
        )
    return make_conninfo(host=info.host, port=info.port, user=info.user, dbname=info.dbname)


@pytest.fixture
def direct_database_url(pg_client: psycopg.Connection[Any]) -> str:
    """This test's database reached directly, never through a pooler."""
    info = pg_client.info
    return make_conninfo(host=info.host, port=info.port, user=info.user, dbname=info.dbname)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return load_settings(
        database_url=database_url, pool_min_size=0, pool_max_size=4, pool_timeout=2.0
    )


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> Iterator[Mode]:
    """The API a dual-mode test runs against (see tests/support/modes.py)."""
    with running(Mode(request.param)) as chosen:
        yield chosen


def _mode_of(request: pytest.FixtureRequest) -> Mode | None:
    if "mode" in request.fixturenames:
        chosen: Mode = request.getfixturevalue("mode")
        return chosen
    return None


@pytest.fixture
def db(settings: Settings, request: pytest.FixtureRequest) -> Iterator[Any]:
    """This test's pool: a Database, or in an async run an AsyncDatabase used through sync calls."""
    _mode_of(request)  # the run's mode is chosen before the pool is made
    database = both("toolkit.db.database").Database(settings, warn_if_privileged=False)
    with database:
        yield database


@pytest.fixture
def conn(db: Any) -> Iterator[Any]:
    """A pooled connection: a Connection, or in an async run an AsyncConnection."""
    with db.connection() as connection:
        yield connection


@pytest.fixture
def superuser(direct_database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A separate autocommit connection for inspecting and tampering (direct, never pooled)."""
    with psycopg.connect(direct_database_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def make_role(superuser: psycopg.Connection[Any]) -> Iterator[Callable[..., str]]:
    """Make a role (roles are cluster-wide: a unique name, dropped afterwards); returns its name.

    ``make("LOGIN")`` is an application login: a member of toolkit_app, no
    BYPASSRLS, owning nothing, so row level security binds it.
    """
    made: list[str] = []

    def make(*attributes: str, member_of: tuple[str, ...] = ("toolkit_app",)) -> str:
        name = f"tenancy_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        statement = sql.SQL("CREATE ROLE {} {}").format(
            sql.Identifier(name), sql.SQL(" ".join(attributes))
        )
        superuser.execute(statement)
        made.append(name)
        for group in member_of:
            superuser.execute(
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(name))
            )
        return name

    yield make
    for name in reversed(made):
        superuser.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        superuser.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def url_as(database_url: str, role: str) -> str:
    """``database_url`` with ``role`` as its user."""
    params = conninfo_to_dict(database_url)
    params["user"] = role
    return make_conninfo(**params)


# -- the packaged toolkit (marker "packaging", tox -e package) ---------------

ROOT = Path(__file__).resolve().parents[1]


def run_ok(
    *args: str | Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; fail the test, with its output, unless it exits 0."""
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from this checkout, once per session."""
    out = tmp_path_factory.mktemp("wheel")
    run_ok(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, ROOT, cwd=out)
    (built,) = out.glob(f"{DISTRIBUTION.replace('-', '_')}-*.whl")
    return built


@pytest.fixture(scope="session")
def installed_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel and its ``embedded`` extra installed, once per session."""
    env_dir = tmp_path_factory.mktemp("installed") / "venv"
    venv.create(env_dir, with_pip=True)
    pip = (env_dir / "bin" / "python", "-m", "pip")
    run_ok(*pip, "install", "-q", f"{wheel}[embedded]", cwd=env_dir)
    return env_dir
