"""toolkit verify: passes on the real schema, fails loudly on any disagreement."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from uuid import UUID

import pytest

from tests.core.factories import make_agent, make_user
from tests.support.modes import both
from toolkit.catalog import load_bindings
from toolkit.cli import main
from toolkit.db import bind
from toolkit.db.registry import QueryRegistry
from toolkit.db.verify import outer_join_nullable_tables, verify
from toolkit.errors import IntegrityError, QueryDefinitionError
from toolkit.records import Record

drivers = both("toolkit.db.drivers")

SQL = """
-- name: probe.agent :one
-- An agent's identity columns.
SELECT id, name, description, created_at FROM agents
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id;
-- name: probe.count :scalar
-- Count agents.
SELECT count(*) FROM agents WHERE tenant_id = (SELECT toolkit_tenant_or_default());

-- name: probe.broken :one
-- Names a column that does not exist.
SELECT id, nickname FROM agents WHERE id = :id;

-- name: probe.names :optional
-- Agent names and their lengths as arrays (NULL without agents).
SELECT array_agg(name) AS names, array_agg(length(name)) AS lengths FROM agents
WHERE tenant_id = (SELECT toolkit_tenant_or_default());

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


class Arrays(Record):
    names: list[str] | None
    lengths: list[int | None] | None


class ArraysOfWrongItems(Record):
    names: list[int] | None
    lengths: list[int] | None


class ArraysAsScalars(Record):
    names: str | None
    lengths: list[int] | None


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


def test_array_columns_fit_lists_of_items_that_fit(conn, probe_registry) -> None:
    def problems_of(record: type[Record]) -> list[str]:
        found = check(conn, probe_registry, bind.OneOrNone("probe.names", record, ()))
        return [p for p in found if "no function binds it" not in p]

    assert problems_of(Arrays) == []
    assert problems_of(ArraysOfWrongItems) == [
        "sql/probe.sql:14: probe.names: column names is _text, which does not fit "
        "ArraysOfWrongItems.names: list[int] | None"
    ]
    assert problems_of(ArraysAsScalars) == [
        "sql/probe.sql:14: probe.names: column names is _text, which does not fit "
        "ArraysAsScalars.names: str | None"
    ]


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


# An application's outer join: verify judges nullability from the table column
# (ratings.rating is NOT NULL), which a LEFT JOIN's unmatched row does not keep.
RATINGS_TABLE = """
CREATE TABLE agent_ratings (
    agent_id uuid NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    rating integer NOT NULL
)
"""
RATINGS_SQL = """-- The application's ratings of agents.

-- name: ratings.of_agents :many
-- Every agent of an owner with its rating, rated or not.
SELECT a.id, a.name, r.rating
FROM agents a LEFT JOIN agent_ratings r ON r.agent_id = a.id
WHERE a.tenant_id = (SELECT toolkit_tenant_or_default()) AND a.owner_id = :owner_id
ORDER BY a.name;

-- name: ratings.of_agent :one
-- One agent with its rating, rated or not.
SELECT a.id, a.name, r.rating
FROM agents a LEFT JOIN agent_ratings r ON r.agent_id = a.id
WHERE a.tenant_id = (SELECT toolkit_tenant_or_default()) AND a.id = :id;

-- name: ratings.best_of_agent :one
-- One agent with its best rating: an expression, NULL without ratings.
SELECT a.id, a.name, (SELECT max(r.rating) FROM agent_ratings r WHERE r.agent_id = a.id) AS rating
FROM agents a
WHERE a.tenant_id = (SELECT toolkit_tenant_or_default()) AND a.id = :id;
"""


class RatedAgent(Record):
    id: UUID
    name: str
    rating: int


class MaybeRatedAgent(Record):
    id: UUID
    name: str
    rating: int | None


@pytest.fixture
def ratings_app(tmp_path, monkeypatch, superuser):
    """An application's SQL folder and table, loaded the way TOOLKIT_SQL_PATH loads them."""
    superuser.execute(RATINGS_TABLE)
    folder = tmp_path / "sql"
    folder.mkdir()
    (folder / "ratings.sql").write_text(RATINGS_SQL)
    queries = QueryRegistry.with_application([folder])
    monkeypatch.setattr(bind, "registry", lambda: queries)
    before = list(bind.BINDINGS)
    yield folder / "ratings.sql"
    bind.BINDINGS[:] = before


def test_a_null_from_an_outer_join_in_a_non_optional_field_raises_integrity_error(
    mode, conn, superuser, ratings_app
) -> None:
    owner = make_user(conn)
    rated = make_agent(conn, owner, name="a-rated")
    unrated = make_agent(conn, owner, name="b-unrated")
    superuser.execute("INSERT INTO agent_ratings VALUES (%s, 4)", [rated.id])
    many = bind.Many("ratings.of_agents", RatedAgent, ("owner_id",))
    one = bind.One("ratings.of_agent", RatedAgent, ("id",), entity="agent")

    # The rated agent reads as before; the unrated one is refused, naming query and column.
    assert drivers.run(conn, one, rated.id, id=rated.id).rating == 4
    where = rf"{re.escape(str(ratings_app))}:\d+: "
    with pytest.raises(IntegrityError, match=where + r"ratings\.of_agents .*column rating\b"):
        drivers.run(conn, many, owner_id=owner.id)
    with pytest.raises(
        IntegrityError, match=where + r"ratings\.of_agent returned NULL in column rating"
    ) as raised:
        drivers.run(conn, one, unrated.id, id=unrated.id)
    assert "RatedAgent.rating is int (not Optional)" in str(raised.value)
    assert str(unrated.id) not in str(raised.value) and "b-unrated" not in str(raised.value)

    # An expression verify cannot judge (no outer join in sight) is checked too.
    best = bind.One("ratings.best_of_agent", RatedAgent, ("id",), entity="agent")
    assert drivers.run(conn, best, rated.id, id=rated.id).rating == 4
    with pytest.raises(IntegrityError, match=r"best_of_agent returned NULL in column rating"):
        drivers.run(conn, best, unrated.id, id=unrated.id)

    # Declared Optional, the same rows read, None for the unrated agent.
    maybe = bind.Many("ratings.of_agents", MaybeRatedAgent, ("owner_id",))
    assert [a.rating for a in drivers.run(conn, maybe, owner_id=owner.id)] == [4, None]


def test_verify_flags_a_non_optional_field_from_the_nullable_side_of_an_outer_join(
    conn, ratings_app
) -> None:
    queries = bind.registry()
    problems = check(
        conn,
        queries,
        bind.Many("ratings.of_agents", RatedAgent, ("owner_id",)),
        bind.One("ratings.of_agent", MaybeRatedAgent, ("id",), entity="agent"),
    )
    problems = [p for p in problems if "no function binds it" not in p]
    assert problems == [
        f"{ratings_app}:3: ratings.of_agents: column rating comes from agent_ratings on the "
        "nullable side of an outer join and can be NULL, but RatedAgent.rating is int "
        "(make it Optional, or COALESCE it)"
    ]


@pytest.mark.parametrize(
    ("sql", "nullable"),
    [
        ("SELECT a.id FROM agents a LEFT OUTER JOIN agent_ratings r ON true", ["agent_ratings"]),
        ("SELECT a.id FROM agents a LEFT JOIN agents b ON b.owner_id = a.id", []),
        ("SELECT a.id FROM agents a RIGHT JOIN users u ON u.id = a.owner_id", ["agents"]),
        ("SELECT 1 FROM public.agents a FULL JOIN users u ON true", ["public.agents", "users"]),
        ("SELECT 'x LEFT JOIN users' FROM agents -- LEFT JOIN users", []),
        ("SELECT s.id FROM agents a LEFT JOIN (SELECT id FROM users) s ON true", []),
        ("SELECT 1 FROM agents a LEFT JOIN LATERAL jsonb_each(a.config) e ON true", []),
    ],
)
def test_outer_join_reading_is_conservative(sql: str, nullable: list[str]) -> None:
    queries = QueryRegistry()
    queries.load_text(f"-- name: probe.q :many\n-- Doc.\n{sql};", "sql/probe.sql")
    assert outer_join_nullable_tables(queries["probe.q"]) == nullable


# One-column queries bound to a plain type: rows are the column's values.
NAMES_SQL = """-- An application's one-column queries.

-- name: names.of_owner :many
-- The names of an owner's agents.
SELECT name FROM agents
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND owner_id = :owner_id ORDER BY name;
-- name: names.configs :many
-- The configs of an owner's agents.
SELECT config FROM agents
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND owner_id = :owner_id ORDER BY name;
-- name: names.of_agent :one
-- One agent's name.
SELECT name FROM agents WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id;

-- name: names.descriptions :many
-- Descriptions: a nullable column.
SELECT description FROM agents
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND owner_id = :owner_id ORDER BY name;
-- name: names.identities :many
-- Two columns.
SELECT id, name FROM agents
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND owner_id = :owner_id ORDER BY name;
"""


@pytest.fixture
def names_app(tmp_path, monkeypatch):
    """An application's SQL folder of one-column queries, loaded like TOOLKIT_SQL_PATH's."""
    folder = tmp_path / "sql"
    folder.mkdir()
    (folder / "names.sql").write_text(NAMES_SQL)
    queries = QueryRegistry.with_application([folder])
    monkeypatch.setattr(bind, "registry", lambda: queries)
    before = list(bind.BINDINGS)
    yield folder / "names.sql"
    bind.BINDINGS[:] = before


def test_a_one_column_query_bound_to_a_plain_type_returns_its_values(mode, conn, names_app) -> None:
    owner = make_user(conn)
    first = make_agent(conn, owner, name="a-first", config={"max_tokens": 1})
    make_agent(conn, owner, name="b-second", config={"max_tokens": 2})
    names = bind.Many("names.of_owner", str, ("owner_id",))
    configs = bind.Many("names.configs", dict, ("owner_id",))
    name = bind.One("names.of_agent", str, ("id",), entity="agent")

    assert drivers.run(conn, names, owner_id=owner.id) == ["a-first", "b-second"]
    assert [c["max_tokens"] for c in drivers.run(conn, configs, owner_id=owner.id)] == [1, 2]
    assert drivers.run(conn, name, first.id, id=first.id) == "a-first"

    # NULL cannot be told from "no row" in a plain type: refused, naming query and column.
    descriptions = bind.Many("names.descriptions", str, ("owner_id",))
    with pytest.raises(IntegrityError, match=r"names\.descriptions returned NULL in column"):
        drivers.run(conn, descriptions, owner_id=owner.id)
    # More than one column has no single value to return.
    identities = bind.Many("names.identities", str, ("owner_id",))
    with pytest.raises(QueryDefinitionError, match=r"names\.identities returns columns"):
        drivers.run(conn, identities, owner_id=owner.id)


def test_verify_checks_a_one_column_query_bound_to_a_plain_type(conn, names_app) -> None:
    problems = check(
        conn,
        bind.registry(),
        bind.Many("names.of_owner", str, ("owner_id",)),
        bind.Many("names.configs", dict, ("owner_id",)),
        bind.One("names.of_agent", int, ("id",), entity="agent"),
        bind.Many("names.descriptions", str, ("owner_id",)),
        bind.Many("names.identities", str, ("owner_id",)),
    )
    problems = [p for p in problems if "no function binds it" not in p]
    where = str(names_app)
    assert problems == [
        f"{where}:11: names.of_agent: column name is text, which does not fit int",
        f"{where}:15: names.descriptions: column description can be NULL, but the query is "
        "bound to str: bind a record with an Optional field, or COALESCE it",
        f"{where}:19: names.identities: returns columns ['id', 'name'], but is bound to str, "
        "which takes one column: bind a record whose fields are the columns",
    ]


def test_a_binding_to_something_not_a_class_is_refused_naming_the_query(names_app) -> None:
    with pytest.raises(QueryDefinitionError, match=r"names\.of_owner is bound to list\[str\]"):
        bind.Many("names.of_owner", list[str], ("owner_id",))


def test_a_scalar_bound_to_a_union_is_checked_not_crashed_on(conn, probe_registry) -> None:
    problems = check(conn, probe_registry, bind.Scalar("probe.count", str | None, ()))
    assert "sql/probe.sql:6: probe.count: column count is int8, which does not fit str | None" in (
        problems
    )


NAMES_MODULE = """
from toolkit.db.bind import Many, One

of_owner = Many("names.of_owner", {result}, ("owner_id",))
configs = Many("names.configs", dict, ("owner_id",))
of_agent = One("names.of_agent", str, ("id",), entity="agent")
descriptions = Many("names.descriptions", str, ("owner_id",))
identities = Many("names.identities", str, ("owner_id",))
"""


@pytest.mark.parametrize(
    ("result", "returncode", "expected"),
    [
        ("str", 1, "names.descriptions: column description can be NULL"),
        ("list[str]", 2, "names.of_owner is bound to list[str], which is not a class"),
    ],
)
def test_cli_verify_of_one_column_bindings_prints_no_traceback(
    tmp_path, database_url, result, returncode, expected
) -> None:
    """``toolkit verify`` in its own process, on an application binding one-column queries."""
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "names.sql").write_text(NAMES_SQL)
    (tmp_path / "names_app.py").write_text(NAMES_MODULE.format(result=result))
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("TOOLKIT_")}
    env = {
        **inherited,
        "TOOLKIT_DATABASE_URL": database_url,
        "TOOLKIT_SQL_PATH": str(tmp_path / "sql"),
        "TOOLKIT_APP_MODULES": "names_app",
        "TOOLKIT_ENV_FILE": "",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parents[2])]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "toolkit", "verify"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    assert done.returncode == returncode, output
    assert expected in output, output


def test_verify_reports_a_tenant_owned_table_the_database_does_not_guard(conn) -> None:
    """A table with tenant_id needs RLS on, FORCEd, and a policy per verb; a view over it
    needs security_invoker. toolkit_make_tenant_owned() gives a table all of it."""
    from toolkit.db.verify import tenancy_problems

    def problems() -> list[str]:
        return [str(p) for p in tenancy_problems(conn) if "verify_probe" in str(p)]

    conn.execute(
        "CREATE TABLE verify_probe (id int PRIMARY KEY, tenant_id uuid NOT NULL "
        "DEFAULT toolkit_tenant_or_default() REFERENCES tenants)"
    )
    assert problems() == [
        "table verify_probe: tenancy: has tenant_id but row level security is off",
        "table verify_probe: tenancy: no policy for SELECT, INSERT, UPDATE, DELETE",
    ]
    conn.execute("ALTER TABLE verify_probe ENABLE ROW LEVEL SECURITY")
    conn.execute(
        "CREATE POLICY p ON verify_probe FOR SELECT USING (tenant_id = (SELECT toolkit_tenant()))"
    )
    assert problems() == [
        "table verify_probe: tenancy: row level security is not FORCEd: its owner bypasses it",
        "table verify_probe: tenancy: no policy for INSERT, UPDATE, DELETE",
    ]
    conn.execute("DROP POLICY p ON verify_probe")
    conn.execute("SELECT toolkit_make_tenant_owned('verify_probe')")
    assert problems() == []
    conn.execute("CREATE VIEW verify_probe_view AS SELECT id FROM verify_probe")
    assert problems() == [
        "view verify_probe_view: tenancy: reads tenant-owned verify_probe with its owner's "
        "rights, bypassing the policies: ALTER VIEW ... SET (security_invoker = true)"
    ]
    conn.execute("ALTER VIEW verify_probe_view SET (security_invoker = true)")
    assert problems() == []


NOTES_TABLE = """
CREATE TABLE notes (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id uuid NOT NULL DEFAULT toolkit_tenant_or_default() REFERENCES tenants (id),
    body text NOT NULL
);
SELECT toolkit_make_tenant_owned('notes');
CREATE TABLE note_kinds (name text PRIMARY KEY);
"""
NOTES_SQL = """-- An application's notes, a tenant-owned table.

-- name: notes.mine :many
-- The notes of the transaction's tenant.
SELECT id, body FROM notes WHERE tenant_id = (SELECT toolkit_tenant_or_default());

-- name: notes.everyone :many
-- Every note: relies on the policies alone.
SELECT id, body FROM notes;

-- name: notes.counted :scalar
-- Notes read inside a subquery, still unscoped.
SELECT count(*) FROM (SELECT n.id FROM note_kinds AS k, notes AS n) AS s;

-- name: notes.sweep :exec
-- A cross-tenant sweep, run by a role the policies do not bind.
-- tenant: all
DELETE FROM notes WHERE body = '';

-- name: notes.add :returning
-- A note of the transaction's tenant: the column default names it.
INSERT INTO notes (body) VALUES (:body) RETURNING id;

-- name: notes.kinds :many
-- A table that is not tenant-owned.
SELECT name FROM note_kinds;
"""


class Note(Record):
    id: UUID
    body: str


class NoteKind(Record):
    name: str


class NoteId(Record):
    id: UUID


def test_verify_reports_a_query_on_a_tenant_owned_table_that_names_no_tenant(
    conn, superuser, tmp_path, monkeypatch
) -> None:
    """A query that reads a tenant-owned table must name its tenant, or declare itself
    cross-tenant with '-- tenant: all'; an INSERT (its tenant is the column default) and
    a query on another table pass. The toolkit's own queries pass (the test above)."""
    superuser.execute(NOTES_TABLE)
    folder = tmp_path / "sql"
    folder.mkdir()
    (folder / "notes.sql").write_text(NOTES_SQL)
    queries = QueryRegistry.with_application([folder])
    monkeypatch.setattr(bind, "registry", lambda: queries)
    monkeypatch.setattr(bind, "BINDINGS", list(bind.BINDINGS))  # the bindings below, undone
    problems = check(
        conn,
        queries,
        bind.Many("notes.mine", Note, ()),
        bind.Many("notes.everyone", Note, ()),
        bind.Scalar("notes.counted", int, ()),
        bind.Exec("notes.sweep", ()),
        bind.Returning("notes.add", NoteId, ("body",)),
        bind.Many("notes.kinds", NoteKind, ()),
    )
    problems = [p for p in problems if "notes" in p and "no function binds it" not in p]
    advice = (
        "but names no tenant: filter by tenant_id = (SELECT toolkit_tenant_or_default()), "
        "or declare a deliberately cross-tenant query with '-- tenant: all'"
    )
    path = folder / "notes.sql"
    assert problems == [
        f"{path}:7: notes.everyone: reads tenant-owned notes {advice}",
        f"{path}:11: notes.counted: reads tenant-owned notes {advice}",
    ]


def test_a_tenant_scope_other_than_all_is_refused_naming_file_and_line() -> None:
    queries = QueryRegistry()
    with pytest.raises(
        QueryDefinitionError, match=r"sql/x\.sql:3: x\.y: unknown tenant scope 'some'"
    ):
        queries.load_text("-- name: x.y :many\n-- Doc.\n-- tenant: some\nSELECT 1;\n", "sql/x.sql")
    queries.load_text("-- name: x.z :many\n-- Doc.\n-- tenant: all\nSELECT 1;\n", "sql/x.sql")
    assert queries["x.z"].all_tenants
