"""Fixtures for the LangGraph and LangChain integrations (``tox -e integrations``).

They need the ``langgraph`` and ``langchain`` extras and the peer test
packages (``langgraph-checkpoint-conformance``, ``langchain-tests``); a
missing one fails collection loudly. The default test environments leave
this folder out (``--ignore=tests/integrations``) instead of skipping it.

PostgreSQL comes from the shared fixtures (a fresh migrated database per
test); Redis is the real one at 127.0.0.1:6379, one namespace per test.
Tenant-scoped tests connect as a LOGIN role of their own in ``toolkit_app``
(:func:`app_login`), which row-level security binds.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
import pytest_asyncio
import redis
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pytest_postgresql.janitor import DatabaseJanitor

from toolkit.cache import CacheClient
from toolkit.config import Settings, load_settings
from toolkit.integrations.langgraph import ToolkitCheckpointSaver

REDIS_URL = "redis://127.0.0.1:6379/0"
HEALTHY_TIMEOUT = 2.0
TENANT_A = uuid.UUID("aaaaaaaa-0000-4000-8000-00000000000a")
TENANT_B = uuid.UUID("bbbbbbbb-0000-4000-8000-00000000000b")


@dataclass
class PeerTally:
    """Tests of the peer suites that ran, by suite, for the closing summary."""

    passed: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)

    def add(self, suite: str, passed: int, failed: int) -> None:
        self.passed[suite] = self.passed.get(suite, 0) + passed
        self.failed[suite] = self.failed.get(suite, 0) + failed


TALLY = PeerTally()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Count the langchain-tests standard tests as they finish."""
    if report.when != "call" or "::TestToolkitLLMCache" not in report.nodeid:
        return
    suite = "langchain-tests " + ("async" if "Async" in report.nodeid else "sync")
    TALLY.add(suite, int(report.passed), int(report.failed))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TALLY.passed and not TALLY.failed:
        return
    terminalreporter.section("peer suites")
    for suite in sorted(set(TALLY.passed) | set(TALLY.failed)):
        terminalreporter.write_line(
            f"{suite}: {TALLY.passed.get(suite, 0)} passed, {TALLY.failed.get(suite, 0)} failed"
        )


@pytest.fixture(scope="session")
def shared_settings(pg_server: Any) -> Iterator[Settings]:
    """One migrated database for the tests that isolate themselves by thread id.

    Creating a database per test costs a second or more on a busy machine;
    the conformance suite and most storage tests use fresh uuid thread ids,
    so they share this one (dropped at the end of the session).
    """
    janitor = DatabaseJanitor(
        user=pg_server.user,
        host=pg_server.host,
        port=pg_server.port,
        password=pg_server.password,
        dbname=f"{pg_server.dbname}_lg_shared",
        template_dbname=pg_server.template_dbname,
    )
    janitor.drop()
    janitor.init()
    url = make_conninfo(
        host=pg_server.host, port=pg_server.port, user=pg_server.user, dbname=janitor.dbname
    )
    yield load_settings(database_url=url, pool_min_size=0, pool_max_size=4, pool_timeout=5.0)
    janitor.drop()


@contextmanager
def app_login(database_url: str, tenants: Sequence[uuid.UUID] = ()) -> Iterator[Settings]:
    """Settings for ``database_url`` as a new LOGIN role in toolkit_app, dropped afterwards.

    The role has no BYPASSRLS and owns nothing, so row-level security binds
    it. The ``tenants`` rows are written as the superuser (``database_url``'s
    role) first. Roles are cluster-wide: each gets a name of its own.
    """
    role = f"lg_app_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as superuser:
        superuser.execute(
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE toolkit_app").format(sql.Identifier(role))
        )
        for tenant in tenants:
            superuser.execute(
                "INSERT INTO tenants (id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                [tenant, f"tenant {tenant}"],
            )
    params = conninfo_to_dict(database_url)
    params["user"] = role
    try:
        yield load_settings(
            database_url=make_conninfo(**params), pool_min_size=0, pool_max_size=4, pool_timeout=5.0
        )
    finally:
        with psycopg.connect(database_url, autocommit=True) as superuser:
            superuser.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
def saver(settings: Settings) -> Iterator[ToolkitCheckpointSaver]:
    """A checkpointer on this test's own database (sync use)."""
    with ToolkitCheckpointSaver.from_settings(settings) as made:
        yield made


@pytest_asyncio.fixture
async def asaver(settings: Settings) -> AsyncIterator[ToolkitCheckpointSaver]:
    """A checkpointer on this test's own database (async use)."""
    async with ToolkitCheckpointSaver.from_settings(settings) as made:
        yield made


@pytest.fixture(scope="session")
def redis_up() -> None:
    """Fail (never skip) when the Redis the cache tests need does not answer."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RuntimeError(f"the LangChain cache tests need Redis at {REDIS_URL}: {exc}") from exc
    finally:
        client.close()


@pytest.fixture
def cache_client(redis_up: None) -> Iterator[CacheClient]:
    """A CacheClient under a namespace of this test's own, emptied afterwards."""
    namespace = f"t-lc-{uuid.uuid4().hex[:12]}"
    client = CacheClient.from_url(
        REDIS_URL,
        namespace=namespace,
        connect_timeout=HEALTHY_TIMEOUT,
        socket_timeout=HEALTHY_TIMEOUT,
    )
    yield client
    client.clear()
    client.close()
