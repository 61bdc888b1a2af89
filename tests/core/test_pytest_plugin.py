"""The pytest plugin in a project of its own: ini options and the async fixture."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "evaluations"

INI = """
[pytest]
pythonpath = .
toolkit_sql_path = sql
toolkit_migrations_path = migrations
toolkit_app_modules = evaluations.repository
toolkit_application_name = named-in-ini
asyncio_default_fixture_loop_scope = function
"""

TESTS = """
import os
from pathlib import Path

import pytest

from toolkit.config import default_settings
from toolkit.db.bind import registry


def test_the_ini_options_are_the_settings(toolkit_settings):
    here = Path.cwd()
    assert toolkit_settings.sql_folders == (here / "sql",)
    assert toolkit_settings.migration_folders == (here / "migrations",)
    assert default_settings().app_module_names == ("evaluations.repository",)
    assert toolkit_settings.application_name == os.environ["EXPECTED_APPLICATION_NAME"]
    assert "evaluations.get" in registry()


@pytest.mark.asyncio
async def test_the_async_fixture_is_on_the_tests_database(toolkit_async_db, toolkit_db):
    async with toolkit_async_db.connection() as conn:
        # The application's table: migrated from the ini's migrations folder.
        await conn.execute("SELECT execution_id, metric, score, passed FROM evaluations")
        await conn.execute("CREATE TABLE made_async (id int)")
    with toolkit_db.connection() as conn:
        assert conn.execute("SELECT count(*) FROM made_async").fetchone()[0] == 0
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A project with the example application, configured by its pytest.ini alone."""
    for name in (
        "TOOLKIT_SQL_PATH",
        "TOOLKIT_MIGRATIONS_PATH",
        "TOOLKIT_APP_MODULES",
        "TOOLKIT_APPLICATION_NAME",
    ):
        monkeypatch.delenv(name, raising=False)
    for folder in ("evaluations", "sql", "migrations"):
        shutil.copytree(
            EXAMPLE / folder, pytester.path / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    pytester.makeini(INI)
    pytester.makepyfile(test_project=TESTS)
    return pytester


def test_ini_options_configure_the_plugin_and_the_async_fixture_works(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXPECTED_APPLICATION_NAME", "named-in-ini")
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_an_environment_variable_wins_over_its_ini_option(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOOLKIT_APPLICATION_NAME", "named-in-env")
    monkeypatch.setenv("EXPECTED_APPLICATION_NAME", "named-in-env")
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-k", "ini_options")
    result.assert_outcomes(passed=1)
