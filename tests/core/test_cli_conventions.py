"""The ``toolkit`` command's conventions, in-process: its help, its version and its exit codes,
and the migration errors it prints (a failing migration and an unknown ``-- depends:`` name
their files). tests/test_cli_commands.py runs the same through the installed script."""

from __future__ import annotations

import argparse
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.conftest import server_url
from toolkit import DISTRIBUTION, __version__
from toolkit.cli import build_parser, main
from toolkit.db.migrations import migrate
from toolkit.errors import ConfigurationError, DatabaseError

NOWHERE = "postgresql://postgres@127.0.0.1:1/none"
"""A database URL where nothing answers."""


def every_parser(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """``parser`` and each of its subcommands' parsers, with their command words."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from every_parser(sub, (*path, name))


def test_help_has_no_markup_and_every_option_says_what_it_does_and_its_default() -> None:
    parsers = list(every_parser(build_parser()))
    assert len(parsers) > 10
    top = parsers[0][1].format_help()
    description = top.split("\n\n")[1]
    assert description.startswith("Migrate, inspect and run"), top
    assert "exit codes: 0 success; 1 " in " ".join(top.split())
    for path, parser in parsers:
        shown = parser.format_help()
        assert not re.search(r"``|:(class|func|data|meth):`", shown), (path, shown)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
                continue
            where = (path, action.option_strings or action.dest)
            assert action.help, f"{where} has no help"
            text = " ".join(shown.split())
            if action.default not in (None, False, [], argparse.SUPPRESS):
                assert f"(default: {action.default})" in text, where
            elif action.option_strings and action.nargs != 0:
                # Not given, it falls back to something: the help says what.
                assert re.search(r"default|override", action.help), where


def test_every_command_is_defined_and_registered_in_toolkit_commands() -> None:
    handlers = {
        path: parser.get_default("handler")
        for path, parser in every_parser(build_parser())
        if parser.get_default("handler") is not None
    }
    assert sorted(" ".join(path) for path in handlers) == [
        "audit anchor",
        "audit verify",
        "demo",
        "maintain",
        "migrate",
        "queries",
        "relay",
        "rollback",
        "storage sweep",
        "verify",
        "worker",
    ]
    for path, handler in handlers.items():
        assert handler.__module__.startswith("toolkit.commands."), (path, handler.__module__)


def test_version_is_the_distributions_even_with_a_bad_setting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOOLKIT_POOL_MAX_SIZE", "abc")
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"toolkit {__version__} ({DISTRIBUTION})\n"
    assert __version__ != "0+unknown"


def test_usage_errors_exit_2_and_runtime_failures_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as unknown_option:
        main(["migrate", "--no-such-option"])
    assert unknown_option.value.code == 2
    assert main(["rollback", "--count", "0", "--database-url", NOWHERE]) == 2
    assert "rollback count must be" in capsys.readouterr().err
    assert main(["queries", "show"]) == 2
    assert "needs a query name" in capsys.readouterr().err
    # Nothing answers at the URL: the command ran and failed.
    for command in (["migrate"], ["migrate", "--status"], ["verify"]):
        assert main([*command, "--database-url", NOWHERE]) == 1, command
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "nothing answers there" in err, err


@pytest.fixture
def app_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "app-migrations"
    folder.mkdir()
    return folder


@pytest.fixture
def scratch_url() -> Iterator[str]:
    """A database of this test's own, not yet created; dropped afterwards."""
    name = f"toolkit_conv_{uuid.uuid4().hex[:10]}"
    yield server_url(name)
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def applied_app_migrations(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT migration_id FROM _yoyo_migration WHERE migration_id LIKE 'app-%' "
            "ORDER BY migration_id"
        )
        return [row[0] for row in rows]


def test_a_failing_migration_names_its_id_and_file(database_url: str, app_folder: Path) -> None:
    (app_folder / "app-0001.fine.sql").write_text("CREATE TABLE app_fine (id int);\n")
    broken = app_folder / "app-0002.broken.sql"
    broken.write_text("CREATE TABLE app_broken (id int);\nCREAT TABLE app_typo (id int);\n")
    (app_folder / "app-0003.later.sql").write_text("CREATE TABLE app_later (id int);\n")
    with pytest.raises(DatabaseError) as failed:
        migrate(database_url, app_folders=[app_folder])
    message = str(failed.value)
    assert f"migration app-0002.broken ({broken}) failed" in message, message
    assert 'syntax error at or near "CREAT"' in message
    assert applied_app_migrations(database_url) == ["app-0001.fine"]


def test_an_unknown_depends_id_is_named_with_the_file_that_needs_it(
    scratch_url: str, app_folder: Path
) -> None:
    needy = app_folder / "app-0001.needy.sql"
    needy.write_text(
        "-- depends: 0001.core-schema app-0000.missing\nCREATE TABLE app_needy (id int);\n"
    )
    with pytest.raises(ConfigurationError) as refused:
        migrate(scratch_url, app_folders=[app_folder])
    message = str(refused.value)
    assert str(needy) in message and "'app-0000.missing'" in message, message
    assert "'0001.core-schema'" not in message, "a known id is not reported"
    with psycopg.connect(server_url(), autocommit=True) as conn:
        name = conninfo_to_dict(scratch_url)["dbname"]
        created = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
    assert created is None, "refused before anything was created"
