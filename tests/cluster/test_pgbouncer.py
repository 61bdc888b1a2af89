"""The toolkit behind PgBouncer 1.18 in transaction mode: a private PgBouncer on a
free loopback port in front of the test server, started and stopped here.

* psycopg prepares a query on the server after ``prepare_threshold`` runs on
  one connection; behind a transaction pooler the next transaction may run on
  another server connection (the statement is missing) or a second client's
  statement of the same name lands on the same one (it already exists), so
  repository calls fail once the threshold is passed. With
  ``TOOLKIT_PREPARE_THRESHOLD=off`` the same workload has no error;
* the ``options`` startup parameter that carries ``TOOLKIT_STATEMENT_TIMEOUT_MS``
  is refused by PgBouncer: one ConfigurationError says what to set instead;
* ``migrate`` through the pooler leaves no advisory lock behind on a pooled
  server connection (the migration lock belongs to a transaction, not a session).

Each scenario runs with the sync and the async API. The whole suite also runs
through a PgBouncer with ``TOOLKIT_TEST_THROUGH_PGBOUNCER=1`` (tests/conftest.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.cluster.conftest import Row
from tests.core.factories import make_agent
from tests.reliability.private_servers import (
    PrivatePgBouncer,
    pgbouncer_available,
    private_pgbouncer,
)
from tests.support.modes import both
from toolkit.config import load_settings
from toolkit.db import migrate
from toolkit.db.migrations import MIGRATION_LOCK_KEY
from toolkit.errors import ConfigurationError, ToolkitError

pytestmark = [
    pytest.mark.usefixtures("mode"),
    pytest.mark.skipif(
        not pgbouncer_available(), reason="needs pgbouncer, root and the postgres user"
    ),
]
agents = both("toolkit.repositories.agents")
database_module = both("toolkit.db.database")

CALLS = 200
"""Repository calls per scenario, alternating between two pools: far past the threshold."""


@pytest.fixture
def bouncer(direct_database_url: str) -> Iterator[PrivatePgBouncer]:
    """A PgBouncer in transaction mode with ONE server connection per database: every
    client's transactions share it, so a statement one client prepared is seen by the
    other (which then fails to prepare its own of the same name) and vice versa."""
    params = conninfo_to_dict(direct_database_url)
    with private_pgbouncer(str(params["host"]), int(params["port"]), pool_size=1) as running:
        yield running


@pytest.fixture
def wide_bouncer(direct_database_url: str) -> Iterator[PrivatePgBouncer]:
    """A PgBouncer in transaction mode with up to 20 server connections per database."""
    params = conninfo_to_dict(direct_database_url)
    with private_pgbouncer(str(params["host"]), int(params["port"])) as running:
        yield running


def _through(bouncer: PrivatePgBouncer, direct_database_url: str) -> str:
    return make_conninfo(direct_database_url, host="127.0.0.1", port=bouncer.port)


def _alternating_gets(url: str, prepare_threshold: str) -> tuple[int, list[str]]:
    """``CALLS`` gets of one agent, alternating between two pools (two client connections);
    how many raised, and their distinct messages."""
    settings = load_settings(
        database_url=url,
        pool_min_size=1,
        pool_max_size=1,
        statement_timeout_ms=0,
        prepare_threshold=prepare_threshold,
    )
    errors: list[str] = []
    with (
        database_module.Database(settings, warn_if_privileged=False) as first,
        database_module.Database(settings, warn_if_privileged=False) as second,
    ):
        with first.connection() as conn:
            agent = make_agent(conn)
        for call in range(CALLS):
            pool = first if call % 2 == 0 else second
            try:
                with pool.connection() as conn:
                    assert agents.get(conn, agent.id) == agent
            except ToolkitError as exc:
                errors.append(str(exc))
    return len(errors), sorted(set(errors))


@pytest.mark.parametrize("prepare_threshold", ["5", "off"])
def test_prepared_statements_fail_through_pgbouncer_unless_turned_off(
    bouncer: PrivatePgBouncer, direct_database_url: str, prepare_threshold: str, mode: Any, report
) -> None:
    started = time.monotonic()
    failed, messages = _alternating_gets(_through(bouncer, direct_database_url), prepare_threshold)
    report(
        Row(
            scenario=f"PgBouncer transaction mode, prepare_threshold={prepare_threshold} "
            f"({mode.name})",
            operations=CALLS,
            errors_surfaced=failed,
            stale_reads=None,
            lost=None,
            applied_twice=None,
            time_to_recover=f"n/a ({time.monotonic() - started:.1f} s run)",
        )
    )
    if prepare_threshold == "off":
        assert failed == 0, messages
    else:
        # The reason the setting exists: psycopg's automatic preparation breaks here.
        assert failed > 0
        assert all("prepared statement" in m for m in messages), messages


def test_a_statement_timeout_through_pgbouncer_is_refused_with_the_fix(
    wide_bouncer: PrivatePgBouncer, direct_database_url: str
) -> None:
    settings = load_settings(
        database_url=_through(wide_bouncer, direct_database_url), statement_timeout_ms=30_000
    )
    with (
        pytest.raises(ConfigurationError) as raised,
        database_module.Database(settings, warn_if_privileged=False),
    ):
        pass
    message = str(raised.value)
    assert "unsupported startup parameter: options" in message
    assert "TOOLKIT_STATEMENT_TIMEOUT_MS=0" in message and "ALTER ROLE" in message


def test_migrate_through_pgbouncer_leaves_no_advisory_lock_behind(
    wide_bouncer: PrivatePgBouncer, direct_database_url: str, superuser: psycopg.Connection[Any]
) -> None:
    # The lock's transaction holds one server connection for the run, yoyo another.
    through = _through(wide_bouncer, direct_database_url)
    for _ in range(2):  # a lock left behind would make the second run wait for it
        result = migrate(through)
        assert result.applied == ()
        held = superuser.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
            "AND ((classid::bigint << 32) | objid::bigint) = %s",
            [MIGRATION_LOCK_KEY],
        ).fetchone()
        assert held == (0,)
