"""The example application, tested through the toolkit's pytest plugin.

Run by ``tox -e example`` (``pytest examples/evaluations/tests``): this
folder's pytest.ini points the plugin's ``toolkit_sql_path``,
``toolkit_migrations_path`` and ``toolkit_app_modules`` at this folder, so the
plugin's template database holds the toolkit's tables and this application's,
migrated once per session and copied for each test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import typing
import uuid
from pathlib import Path

import psycopg
import pytest
from evaluations import repository as evaluations

from toolkit.aio.db import AsyncDatabase
from toolkit.aio.repositories import users as async_users
from toolkit.db import Connection, Database
from toolkit.errors import InvalidInput, InvalidReference, NotFound, QueryDefinitionError
from toolkit.repositories import executions, users, workflows
from toolkit.repositories.records import Execution

APP = Path(__file__).resolve().parents[1]


@pytest.fixture
def conn(toolkit_db) -> Connection:
    with toolkit_db.connection() as connection:
        yield connection


@pytest.fixture
def execution(conn: Connection) -> Execution:
    owner = users.create(conn, {"email": f"{uuid.uuid4().hex}@example.com", "display_name": "E"})
    workflow = workflows.create(conn, {"owner_id": owner.id, "name": "evaluated"})
    return executions.create(conn, {"workflow_id": workflow.id})


def toolkit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed ``toolkit`` command, run from a folder outside the checkout."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("toolkit")), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd="/",
        # The plugin exported the ini options as TOOLKIT_* variables; the command run
        # from "/" also needs to import the application (pytest.ini's pythonpath).
        env={**os.environ, "PYTHONPATH": str(APP), **(env or {})},
    )


def test_the_application_table_is_migrated_after_the_toolkits(toolkit_database_url) -> None:
    listed = toolkit("migrate", "--status", "--database-url", toolkit_database_url)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[-2] == "applied  app      evaluations-0001.table"
    assert all(" toolkit " in line for line in lines[:-2])


def test_verify_checks_the_applications_queries_too(toolkit_database_url) -> None:
    checked = toolkit("verify", "--database-url", toolkit_database_url)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    origins = {line.split()[0]: line.split()[1] for line in toolkit("queries").stdout.splitlines()}
    assert origins["evaluations.get"] == "app" and origins["agents.get"] == "toolkit"
    assert f"verify: {len(origins)} queries agree" in checked.stdout


def test_verify_names_the_applications_file_and_line_when_a_query_breaks(
    toolkit_database_url, tmp_path: Path
) -> None:
    broken = tmp_path / "sql"
    shutil.copytree(APP / "sql", broken)
    sql_file = broken / "evaluations.sql"
    text = sql_file.read_text()
    sql_file.write_text(text.replace("WHERE id = :id;", "WHERE id = :id AND grade > 0;", 1))
    line = text.splitlines().index("-- name: evaluations.get :one") + 1
    checked = toolkit(
        "verify", "--database-url", toolkit_database_url, env={"TOOLKIT_SQL_PATH": str(broken)}
    )
    assert checked.returncode == 1
    assert f"{sql_file}:{line}: evaluations.get: " in checked.stdout
    assert 'column "grade" does not exist' in checked.stdout


def test_a_query_name_defined_twice_names_both_places(tmp_path: Path) -> None:
    twin = tmp_path / "more"
    twin.mkdir()
    (twin / "again.sql").write_text("-- name: evaluations.get :one\n-- Again.\nSELECT 1;\n")
    listed = toolkit(
        "queries", env={"TOOLKIT_SQL_PATH": os.pathsep.join([str(APP / "sql"), str(twin)])}
    )
    assert listed.returncode == 2
    assert f"{twin / 'again.sql'}:1: duplicate query name 'evaluations.get'" in listed.stderr
    assert f"first defined at {APP / 'sql' / 'evaluations.sql'}:" in listed.stderr


def test_the_command_run_from_the_application_folder_reads_its_dot_env() -> None:
    only_dot_env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TOOLKIT_")}
    listed = subprocess.run(
        [sys.executable, "-m", "toolkit", "queries"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=APP,
        env=only_dot_env,
    )
    assert listed.returncode == 0, listed.stderr
    assert "evaluations.pass_rate" in listed.stdout


def test_create_get_list_and_delete(conn: Connection, execution: Execution) -> None:
    made = [
        evaluations.create(
            conn,
            {"execution_id": execution.id, "metric": "faithfulness", "score": s, "passed": s > 0.5},
        )
        for s in (0.9, 0.2, 0.7)
    ]
    assert evaluations.get(conn, made[0].id) == made[0]
    first = evaluations.list(conn, {"execution_id": execution.id}, sort="score", limit=2)
    assert [e.score for e in first.items] == [0.2, 0.7]
    rest = evaluations.list(
        conn, {"execution_id": execution.id}, sort="score", limit=2, cursor=first.next_cursor
    )
    assert [e.score for e in rest.items] == [0.9] and rest.next_cursor is None
    assert evaluations.pass_rate(conn, "faithfulness") == pytest.approx(2 / 3)
    evaluations.delete(conn, made[1].id)
    with pytest.raises(NotFound):
        evaluations.get(conn, made[1].id)


@pytest.mark.parametrize(
    "bad",
    [
        {"metric": "Faithfulness", "score": 0.5, "passed": True},
        {"metric": "ok", "score": 1.5, "passed": True},
        {"metric": "ok", "score": float("nan"), "passed": True},
        {"metric": "ok", "score": 0.5, "passed": True, "unknown": 1},
    ],
)
def test_bad_input_is_refused_before_the_database(
    conn: Connection, execution: Execution, bad: dict[str, object]
) -> None:
    with pytest.raises(InvalidInput):
        evaluations.create(conn, {"execution_id": execution.id, **bad})
    assert evaluations.list(conn).items == []


def test_an_unknown_execution_is_an_invalid_reference(conn: Connection) -> None:
    with pytest.raises(InvalidReference):
        evaluations.create(
            conn, {"execution_id": uuid.uuid4(), "metric": "ok", "score": 0.5, "passed": True}
        )


def test_the_application_role_may_use_the_applications_table(
    toolkit_database_url, execution: Execution, conn: Connection
) -> None:
    login = f"eval_app_{uuid.uuid4().hex[:8]}"
    conn.execute(f'CREATE ROLE "{login}" LOGIN IN ROLE toolkit_app')
    try:
        as_app = psycopg.conninfo.make_conninfo(toolkit_database_url, user=login)
        with psycopg.connect(as_app, autocommit=True) as app:
            made = evaluations.create(
                app, {"execution_id": execution.id, "metric": "ok", "score": 1, "passed": True}
            )
            assert evaluations.get(app, made.id) == made
    finally:
        conn.execute(f'DROP OWNED BY "{login}"; DROP ROLE "{login}"')


def test_bindings_fail_at_import_when_they_disagree_with_the_sql() -> None:
    from toolkit.db.bind import One

    with pytest.raises(QueryDefinitionError, match=r"evaluations\.sql:.*does not use parameter"):
        One("evaluations.get", evaluations.Evaluation, ("id", "extra"), entity="x")


@pytest.mark.asyncio
async def test_the_async_fixture_shares_the_tests_database(
    toolkit_async_db: AsyncDatabase, toolkit_db: Database
) -> None:
    async with toolkit_async_db.connection() as conn:
        made = await async_users.create(conn, {"email": "async@example.com", "display_name": "A"})
    with toolkit_db.connection() as conn:
        assert users.get(conn, made.id) == made


def test_metrics_lists_each_evaluated_metric_once(conn: Connection, execution: Execution) -> None:
    for metric, score in (("recall", 0.5), ("accuracy", 0.9), ("recall", 0.7)):
        evaluations.create(
            conn, {"execution_id": execution.id, "metric": metric, "score": score, "passed": True}
        )
    assert evaluations.metrics(conn) == ["accuracy", "recall"]


def test_the_repository_annotations_resolve_although_it_exports_list() -> None:
    """The module exports ``list = _entity.list``: its own annotations must still resolve."""
    functions = [
        value
        for value in vars(evaluations).values()
        if callable(value) and getattr(value, "__module__", None) == evaluations.__name__
    ]
    assert evaluations.metrics in functions
    for function in functions:
        typing.get_type_hints(function)
    assert typing.get_type_hints(evaluations.metrics)["return"] == list[str]
