"""Settings from the environment, and the toolkit command."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from toolkit.cli import main
from toolkit.config import UnknownSettingWarning, load_settings
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


SECRET = "s3cr3t-Pa55"


def test_passwords_never_appear_in_the_repr_of_settings() -> None:
    settings = load_settings(
        database_url=f"postgresql://app:{SECRET}@db.internal:5432/toolkit?sslmode=require",
        migration_database_url=f"host=db.internal dbname=toolkit user=owner password='{SECRET}'",
        redis_url=f"redis://:{SECRET}@cache.internal:6379/0",
        amqp_url=f"amqp://app:{SECRET}@mq.internal:5672/%2F",
    )
    for shown in (repr(settings), str(settings)):
        assert SECRET not in shown
        assert "postgresql://app:***@db.internal:5432/toolkit?sslmode=require" in shown
        assert "password=***" in shown
    assert settings.database_url.count(SECRET) == 1  # the value itself is intact


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://u:p%40ss@h:5/db", "postgresql://u:***@h:5/db"),
        (
            "postgresql://h/db?password=zz&sslmode=require",
            "postgresql://h/db?password=***&sslmode=require",
        ),
        ("dbname=a password='p w\\' x' user=b", "dbname=a password=*** user=b"),
        ("dbname=a password = plain user=b", "dbname=a password = *** user=b"),
        # What urllib splits differently from libpq, which reads up to the first "@".
        ("postgresql://u:p#ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p?ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p/ss@h/db", "postgresql://u:***@h/db"),
        ("redis://h/0?password=pw&x=a:b@c", "redis://***@c"),
        (
            "postgresql://h/db?sslpassword=a#b&pass%77ord=c&sslmode=require",
            "postgresql://h/db?sslpassword=***&pass%77ord=***&sslmode=require",
        ),
        ("dbname=a sslpassword='x y' user=b", "dbname=a sslpassword=*** user=b"),
        ("dbname=a password=two words user=b", "dbname=a password=*** user=b"),
        ("host='unterminated password=pw", "host='unterminated password=***"),
        ("memory://u:pw@x", "memory://u:***@x"),
    ],
)
def test_mask_password_covers_every_place_a_password_can_be(url: str, masked: str) -> None:
    from toolkit.config import mask_password

    assert mask_password(url) == masked


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:p#ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p%40ss@h/db?sslpassword=x", "postgresql://u:***@h/db?sslpassword=***"),
        ("host=h password='a b' sslpassword=c#d", "host=h password=*** sslpassword=***"),
        ("postgresql://u:p@ss@h/db", "(URL not shown"),  # libpq would take "ss@h" for the host
        ("postgresql://u:p/ss@h/db", "(URL not shown"),  # ... and "p" for the port
        ("host=h password=two words", "(URL not shown"),  # libpq cannot parse it
    ],
)
def test_mask_conninfo_shows_what_libpq_reads_with_its_secrets_masked(url: str, shown: str) -> None:
    from toolkit.db.conninfo import mask_conninfo

    assert mask_conninfo(url).startswith(shown)


@pytest.mark.parametrize("url", ["postgresql://u:p@ss@h/db", "postgresql://u:p/ss@h/db"])
def test_an_at_sign_libpq_would_misread_is_refused_without_the_url(url: str) -> None:
    from toolkit.db.conninfo import describe_target

    for refuse in (lambda: load_settings(database_url=url), lambda: describe_target(url)):
        with pytest.raises(ConfigurationError, match="percent-encode '@' as %40") as info:
            refuse()
        assert "ss@h" not in str(info.value)


def test_a_missing_database_is_one_line_with_the_fix_and_no_password(capsys) -> None:
    url = f"postgresql://postgres:{SECRET}@127.0.0.1:5432/toolkit_never_created"
    assert main(["relay", "--once", "--database-url", url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and SECRET not in err
    assert 'database "toolkit_never_created"' in err and "run `toolkit migrate`" in err


@pytest.mark.parametrize(
    "url",
    [
        "host=localhost bogus_option=1",
        f"postgresql://u:{SECRET}@h/db?bogus=1",
        f"host='unterminated password={SECRET}",
        # libpq's own reasons quote these pieces of the password: not shown either.
        f"host=h dbname=d password=unquoted {SECRET}",
        f"postgresql://u:a {SECRET}@h/db",
    ],
)
def test_a_malformed_database_url_is_one_line_at_first_use(url: str, capsys) -> None:
    from toolkit.db import Database

    settings = load_settings(database_url=url)
    with pytest.raises(ConfigurationError, match="is not a libpq URL or conninfo string"):
        Database(settings)
    for command in (["verify"], ["migrate"], ["relay", "--once"]):
        assert main([*command, "--database-url", url]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and SECRET not in err and "not a libpq URL" in err


DOT_ENV = """
# the application's local settings
TOOLKIT_DATABASE_URL=postgresql://app:dotenv-secret@db.internal/app
TOOLKIT_POOL_MAX_SIZE=7
TOOLKIT_REDIS_URL=redis://from-dotenv:6379/0
"""


@pytest.fixture
def dot_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A .env in a fresh current directory, read as an application's would be."""
    for name in ("TOOLKIT_DATABASE_URL", "TOOLKIT_POOL_MAX_SIZE", "TOOLKIT_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("TOOLKIT_ENV_FILE")  # the suite's conftest turns .env off
    monkeypatch.chdir(tmp_path)
    path = tmp_path / ".env"
    path.write_text(DOT_ENV)
    return path


def test_dot_env_is_read_below_the_environment_and_options(
    dot_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOOLKIT_POOL_MAX_SIZE", "3")
    settings = load_settings(redis_url="redis://from-option:6379/0")
    assert settings.database_url == "postgresql://app:dotenv-secret@db.internal/app"
    assert settings.pool_max_size == 3  # the environment wins over .env
    assert settings.redis_url == "redis://from-option:6379/0"  # an option wins over both
    assert "dotenv-secret" not in repr(settings) and "app:***@db.internal" in repr(settings)


def test_toolkit_env_file_names_another_file_or_none(
    dot_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOOLKIT_ENV_FILE", "")
    assert load_settings().pool_max_size == 10
    other = dot_env.with_name("staging.env")
    other.write_text("TOOLKIT_POOL_MAX_SIZE=5\n")
    monkeypatch.setenv("TOOLKIT_ENV_FILE", str(other))
    assert load_settings().pool_max_size == 5


def test_a_bad_value_in_dot_env_names_its_variable_not_its_value(dot_env: Path) -> None:
    dot_env.write_text("TOOLKIT_DATABASE_URL=mysql://u:dotenv-secret@h/db\n")
    with pytest.raises(ConfigurationError, match="TOOLKIT_DATABASE_URL") as raised:
        load_settings()
    assert "dotenv-secret" not in str(raised.value)


def test_a_misspelt_variable_is_named_with_the_closest_setting(
    dot_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOOLKIT_DATABSE_URL", "postgresql://postgres@127.0.0.1/x")
    dot_env.write_text("TOOLKIT_POOL_MAXSIZE=3\nTOOLKIT_NOTHING_LIKE_IT=1\n")
    with pytest.warns(UnknownSettingWarning) as caught:
        load_settings()
    messages = sorted(str(warning.message) for warning in caught)
    assert messages == [
        "TOOLKIT_DATABSE_URL (in the environment) is not a toolkit setting and is ignored; "
        "did you mean TOOLKIT_DATABASE_URL?",
        "TOOLKIT_NOTHING_LIKE_IT (in .env) is not a toolkit setting and is ignored",
        "TOOLKIT_POOL_MAXSIZE (in .env) is not a toolkit setting and is ignored; "
        "did you mean TOOLKIT_POOL_MAX_SIZE?",
    ]


@pytest.mark.parametrize(
    "variable",
    [
        "TOOLKIT_ENV_FILE",
        "TOOLKIT_TEST_SERVER_URL",
        "TOOLKIT_TEST_PG_HOST",
        "TOOLKIT_RELIABILITY_OPERATIONS",
        "TOOLKIT_FUZZ_EXAMPLES",
        "TOOLKIT_BENCH_URL",
        "toolkit_pool_max_size",
    ],
)
def test_variables_read_elsewhere_are_not_warned_about(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "1" if variable != "TOOLKIT_ENV_FILE" else "")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownSettingWarning)
        load_settings()


def test_the_cli_names_a_misspelt_variable_once_on_stderr(
    database_url: str, tmp_path: Path
) -> None:
    env = {**os.environ, "TOOLKIT_DATABSE_URL": database_url}
    ran = subprocess.run(
        [sys.executable, "-m", "toolkit", "migrate", "--status", "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
        env=env,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr == (
        "toolkit: warning: TOOLKIT_DATABSE_URL (in the environment) is not a toolkit setting "
        "and is ignored; did you mean TOOLKIT_DATABASE_URL?\n"
    )
    assert "applied  toolkit" in ran.stdout
