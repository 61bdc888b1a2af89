"""toolkit verify: passes on the real schema, fails loudly on any disagreement."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import pytest

from toolkit.catalog import load_bindings
from toolkit.cli import main
from toolkit.db import bind
from toolkit.db.registry import QueryRegistry
from toolkit.db.verify import verify
from toolkit.records import Record

SQL = """
-- name: probe.agent :one
-- An agent's identity columns.
SELECT id, name, description, created_at FROM agents WHERE id = :id;

-- name: probe.count :scalar
-- Count agents.
SELECT count(*) FROM agents;

-- name: probe.broken :one
-- Names a column that does not exist.
SELECT id, nickname FROM agents WHERE id = :id;

-- name: probe.untyped :scalar
-- A parameter whose type nothing determines.
SELECT :anything IS NULL;
"""


class Good(Record):
    id: UUID
    name: str
    description: str | None
    created_at: datetime


class WrongOrder(Record):
    name: str
    id: UUID
    description: str | None
    created_at: datetime


class WrongType(Record):
    id: UUID
    name: int
    description: str | None
    created_at: datetime


class NotOptional(Record):
    id: UUID
    name: str
    description: str
    created_at: datetime


class Broken(Record):
    id: UUID
    nickname: str


@pytest.fixture
def probe_registry(monkeypatch):
    queries = QueryRegistry()
    queries.load_text(SQL, "sql/probe.sql")
    monkeypatch.setattr(bind, "registry", lambda: queries)
    before = list(bind.BINDINGS)
    yield queries
    bind.BINDINGS[:] = before


def check(conn, queries, *bindings) -> list[str]:
    return [str(p) for p in verify(conn, bindings, queries)]


def test_the_toolkit_queries_agree_with_the_schema(conn) -> None:
    problems = verify(conn, load_bindings())
    assert problems == [], "\n".join(map(str, problems))
    assert len(load_bindings()) >= 60


def test_a_matching_record_passes(conn, probe_registry) -> None:
    problems = check(
        conn,
        probe_registry,
        bind.One("probe.agent", Good, ("id",), entity="probe"),
        bind.Scalar("probe.count", int, ()),
    )
    assert [p for p in problems if "no function binds it" not in p] == []


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (WrongOrder, "do not match WrongOrder fields"),
        (WrongType, "column name is text, which does not fit WrongType.name: int"),
        (NotOptional, "column description can be NULL, but NotOptional.description is str"),
    ],
)
def test_a_disagreeing_record_is_reported_with_file_line_and_types(
    conn, probe_registry, record, expected
) -> None:
    problems = check(conn, probe_registry, bind.One("probe.agent", record, ("id",), entity="probe"))
    assert any(
        p.startswith("sql/probe.sql:2: probe.agent: ") and expected in p for p in problems
    ), problems


def test_unpreparable_queries_and_scalar_types_are_reported(conn, probe_registry) -> None:
    problems = check(
        conn,
        probe_registry,
        bind.One("probe.broken", Broken, ("id",), entity="probe"),
        bind.Scalar("probe.count", str, ()),
        bind.Scalar("probe.untyped", bool, ("anything",)),
    )
    text = "\n".join(problems)
    assert 'column "nickname" does not exist' in text
    assert "column count is int8, which does not fit str" in text
    assert "could not determine data type of parameter $1" in text
    assert "sql/probe.sql:2: probe.agent: no function binds it" in text


def test_cli_verify_exits_zero_when_all_agree(database_url, capsys) -> None:
    assert main(["verify", "--database-url", database_url]) == 0
    assert "queries agree with the schema" in capsys.readouterr().out


def test_cli_verify_exits_non_zero_on_a_mismatch(database_url, conn, capsys) -> None:
    conn.execute("ALTER TABLE agents ALTER COLUMN description TYPE varchar(4000)")
    conn.execute("ALTER TABLE agents RENAME COLUMN is_active TO enabled")
    assert main(["verify", "--database-url", database_url]) == 1
    out = capsys.readouterr().out
    assert "sql/agents.sql" in out and 'column "is_active" does not exist' in out
