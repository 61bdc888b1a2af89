"""Settings from the environment, and the toolkit command."""

from __future__ import annotations

import pytest

from toolkit.cli import main
from toolkit.config import load_settings
from toolkit.errors import ConfigurationError


def test_defaults_reach_a_local_server(monkeypatch) -> None:
    for name in ("TOOLKIT_DATABASE_URL", "TOOLKIT_POOL_MAX_SIZE", "TOOLKIT_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.database_url.startswith("postgresql://postgres@127.0.0.1:5432/")
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.effective_migration_url == settings.database_url


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TOOLKIT_POOL_MAX_SIZE", "lots"),
        ("TOOLKIT_POOL_MAX_SIZE", "0"),
        ("TOOLKIT_POOL_TIMEOUT", "-1"),
        ("TOOLKIT_DATABASE_URL", "mysql://localhost/db"),
        ("TOOLKIT_DATABASE_URL", "host=localhost bogus_option=1"),
        ("TOOLKIT_STATEMENT_TIMEOUT_MS", "soon"),
        ("TOOLKIT_REDIS_URL", "http://localhost"),
    ],
)
def test_a_bad_setting_names_its_variable(monkeypatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable):
        load_settings()


def test_min_size_above_max_size_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("TOOLKIT_POOL_MIN_SIZE", "5")
    monkeypatch.setenv("TOOLKIT_POOL_MAX_SIZE", "2")
    with pytest.raises(ConfigurationError, match="TOOLKIT_POOL_MIN_SIZE"):
        load_settings()


def test_cli_reports_a_bad_setting_on_one_line(monkeypatch, capsys) -> None:
    monkeypatch.setenv("TOOLKIT_POOL_MAX_SIZE", "lots")
    assert main(["verify"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TOOLKIT_POOL_MAX_SIZE" in err


def test_queries_lists_names_with_docs_and_shows_sql(capsys) -> None:
    assert main(["queries"]) == 0
    listing = capsys.readouterr().out
    assert "agents.get" in listing and "Fetch one agent by id." in listing
    assert main(["queries", "show", "users.get_credentials"]) == 0
    shown = capsys.readouterr().out
    assert "-- sql/users.sql:" in shown and "password_hash" in shown
    assert main(["queries", "show", "nope.nothing"]) == 2
    assert "no query named 'nope.nothing'" in capsys.readouterr().err


def test_demo_walks_the_story(database_url, capsys) -> None:
    assert main(["demo", "--database-url", database_url]) == 0
    out = capsys.readouterr().out
    for expected in (
        "user signed up",
        "workflow 'Summarise a paper' published",
        "execution succeeded",
        "audit chain verified",
        "intact",
        "demo complete",
    ):
        assert expected in out


def test_demo_without_a_database_says_so_in_one_line(capsys) -> None:
    code = main(["demo", "--database-url", "postgresql://postgres@127.0.0.1:1/none"])
    out = capsys.readouterr().out
    assert code == 1
    assert (
        out.count("\n") == 1 and "no PostgreSQL answers at" in out and "TOOLKIT_DATABASE_URL" in out
    )
