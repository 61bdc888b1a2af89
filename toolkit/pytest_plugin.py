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

``toolkit_async_db``
    An open :class:`~toolkit.aio.db.AsyncDatabase` on the same database as
    ``toolkit_db``, for ``async def`` tests run by pytest-asyncio (the plugin
    does not need pytest-asyncio; without it this fixture fails, saying so).
    Its event loop is pytest-asyncio's ``asyncio_default_fixture_loop_scope``.

The server is ``TOOLKIT_TEST_SERVER_URL`` (a libpq URL of any database on
it; default ``postgresql://postgres@127.0.0.1:5432/postgres``); its role
must be allowed to create databases.

Every setting can also be given as a pytest ini option, named like its
variable in lower case: ``toolkit_sql_path``, ``toolkit_migrations_path``,
``toolkit_app_modules``, ``toolkit_database_url``, … and
``toolkit_test_server_url``. Folder options are relative to the ini file.
An environment variable that is set wins over its ini option; the plugin
exports the others as ``TOOLKIT_*`` variables for the session (so the
settings, and any ``toolkit`` command a test runs, see them) and removes
them at its end. Both win over a ``.env`` file.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, NoReturn

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from toolkit.aio.db.database import AsyncDatabase
from toolkit.config import ENV_PREFIX, Settings, default_settings, load_settings
from toolkit.db.database import Database, connect
from toolkit.db.migrations import migrate

try:  # optional: only toolkit_async_db needs it
    import pytest_asyncio
except ImportError:  # pragma: no cover - the test extra installs it
    pytest_asyncio = None  # type: ignore[assignment]

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SERVER_URL_VARIABLE = "TOOLKIT_TEST_SERVER_URL"
_FOLDER_SETTINGS = frozenset({"sql_path", "migrations_path"})
_exported: list[str] = []


def _ini_variables() -> dict[str, str]:
    """Each ini option the plugin adds, mapped to its environment variable."""
    variables = {f"toolkit_{name}": ENV_PREFIX + name.upper() for name in Settings.model_fields}
    variables[SERVER_URL_VARIABLE.lower()] = SERVER_URL_VARIABLE
    return variables


def pytest_addoption(parser: pytest.Parser) -> None:
    """An ini option for every setting, and for the test server."""
    for option, variable in _ini_variables().items():
        if option.removeprefix("toolkit_") in _FOLDER_SETTINGS:
            parser.addini(option, f"folders for {variable}, relative to the ini file", "paths")
        else:
            parser.addini(option, f"the value of {variable} unless the environment sets it")


def pytest_configure(config: pytest.Config) -> None:
    """Export the ini options whose variable the environment does not set."""
    for option, variable in _ini_variables().items():
        value = config.getini(option)
        if variable in os.environ or not value:
            continue
        if isinstance(value, list):  # folders: already resolved against the ini file
            value = os.pathsep.join(str(folder) for folder in value)
        os.environ[variable] = str(value)
        _exported.append(variable)
    if _exported:
        default_settings.cache_clear()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Take the exported variables back out of the environment."""
    while _exported:
        os.environ.pop(_exported.pop(), None)
    default_settings.cache_clear()


def _server_url() -> str:
    return os.environ.get(SERVER_URL_VARIABLE, DEFAULT_SERVER_URL)


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


if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def toolkit_async_db(toolkit_settings: Settings) -> AsyncIterator[AsyncDatabase]:
        """An open AsyncDatabase on this test's database (the one ``toolkit_db`` opens)."""
        async with AsyncDatabase(toolkit_settings, warn_if_privileged=False) as database:
            yield database

else:  # pragma: no cover - the test extra installs pytest-asyncio

    @pytest.fixture
    def toolkit_async_db() -> NoReturn:
        """Fails: an async fixture needs pytest-asyncio."""
        raise pytest.UsageError("toolkit_async_db needs pytest-asyncio: pip install pytest-asyncio")
