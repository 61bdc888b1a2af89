"""The toolkit's pytest plugin: what the toolkit's own tests get, for an application's.

Installed with the package (entry point ``pytest11``) and inert until a test
asks for one of its fixtures:

``toolkit_database_url``
    The URL of a database of the test's own, copied from a template that is
    migrated once per session with the toolkit's migrations and then the
    application's (``TOOLKIT_MIGRATIONS_PATH``). Dropped after the test.
``toolkit_settings``
    Settings (from the ``TOOLKIT_*`` environment) pointing at that database,
    with this test's own cache namespace and queue prefix.
``toolkit_db``
    An open :class:`~toolkit.db.Database` on it.
``toolkit_cache_namespace`` / ``toolkit_queue_prefix``
    A Redis key prefix and a RabbitMQ name prefix no other test uses.

The server is ``TOOLKIT_TEST_SERVER_URL`` (a libpq URL of any database on
it; default ``postgresql://postgres@127.0.0.1:5432/postgres``); its role
must be allowed to create databases.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from toolkit.config import Settings, load_settings
from toolkit.db.database import Database, connect
from toolkit.db.migrations import migrate

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _server_url() -> str:
    return os.environ.get("TOOLKIT_TEST_SERVER_URL", DEFAULT_SERVER_URL)


def _drop(server: psycopg.Connection[Any], name: str) -> None:
    server.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def toolkit_template_database() -> Iterator[str]:
    """The name of a database migrated once per session (toolkit's, then the application's)."""
    name = f"toolkit_template_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    migrate(make_conninfo(_server_url(), dbname=name))
    try:
        yield name
    finally:
        with connect(_server_url(), connect_timeout=5, context="dropping the template") as server:
            _drop(server, name)


@pytest.fixture
def toolkit_database_url(toolkit_template_database: str) -> Iterator[str]:
    """A fresh copy of the migrated template for this test, dropped afterwards."""
    name = f"toolkit_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    with connect(_server_url(), connect_timeout=5, context="copying the template") as server:
        server.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(toolkit_template_database)
            )
        )
        try:
            yield make_conninfo(_server_url(), dbname=name)
        finally:
            _drop(server, name)


@pytest.fixture
def toolkit_cache_namespace() -> str:
    """A Redis key prefix of this test's own."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def toolkit_queue_prefix() -> str:
    """A RabbitMQ queue and exchange name prefix of this test's own."""
    return f"test-{uuid.uuid4().hex[:12]}."


@pytest.fixture
def toolkit_settings(
    toolkit_database_url: str, toolkit_cache_namespace: str, toolkit_queue_prefix: str
) -> Settings:
    """The ``TOOLKIT_*`` settings, pointed at this test's database, namespace and prefix."""
    return load_settings(
        database_url=toolkit_database_url,
        migration_database_url=toolkit_database_url,
        cache_namespace=toolkit_cache_namespace,
        queue_prefix=toolkit_queue_prefix,
        pool_min_size=0,
        pool_max_size=4,
    )


@pytest.fixture
def toolkit_db(toolkit_settings: Settings) -> Iterator[Database]:
    """An open Database on this test's database (superuser warnings off: it is a test)."""
    with Database(toolkit_settings, warn_if_privileged=False) as database:
        yield database
