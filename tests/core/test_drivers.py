"""The drivers run bindings: what ``run`` and ``copy`` return for each kind, sync and async.

Bindings are values (issue 18, item 3): they import no driver and cannot be
called; ``toolkit.db.run`` / ``await toolkit.aio.db.run`` run them.
"""

from __future__ import annotations

from uuid import UUID

import pytest

from tests.core.factories import make_agent, make_user
from tests.support.modes import both
from toolkit.db import bind
from toolkit.db.registry import QueryRegistry
from toolkit.errors import InvalidInput, NotFound, QueryDefinitionError
from toolkit.records import Record

# Every test runs against toolkit.db and toolkit.aio.db (tests/support/modes.py).
pytestmark = pytest.mark.usefixtures("mode")
db_api = both("toolkit.db")  # run and copy, as an application reaches them

SQL = """
-- name: probe.get :one
-- An agent's id and name.
SELECT id, name FROM agents WHERE id = :id;

-- name: probe.find :optional
-- An agent's id and name, if there is one.
SELECT id, name FROM agents WHERE id = :id;

-- name: probe.rename :returning
-- Rename an agent; its id and new name.
UPDATE agents SET name = :name WHERE id = :id RETURNING id, name;

-- name: probe.of_owner :many
-- An owner's agents, sorted.
-- sort: name text
SELECT id, name FROM agents WHERE owner_id = :owner_id AND {keyset} ORDER BY {order} LIMIT :limit;

-- name: probe.count :scalar
-- How many agents an owner has.
SELECT count(*) FROM agents WHERE owner_id = :owner_id;

-- name: probe.deactivate :exec
-- Deactivate an owner's agents.
UPDATE agents SET is_active = false WHERE owner_id = :owner_id;

-- name: probe.load :copy
-- Bulk-load agents.
COPY agents (owner_id, name, type) FROM STDIN;

-- name: probe.add_many :exec
-- Add agents named by an array; a literal that looks like a placeholder stays literal.
INSERT INTO agents (owner_id, name, type, description)
SELECT :owner_id, batch.name, 'many', '%(owner_id)s'
FROM unnest(:names::text[]) AS batch (name);

-- name: probe.sorted_by :scalar
-- A parameter named like run's own keyword.
SELECT :sort::text;
"""


class Named(Record):
    id: UUID
    name: str


@pytest.fixture
def probe(monkeypatch, conn):
    """An owner with agents a-first and b-second, then the probe queries in place of
    the registry (rows first: the repositories bind the real queries on import)."""
    owner = make_user(conn)
    first = make_agent(conn, owner, name="a-first")
    second = make_agent(conn, owner, name="b-second")
    queries = QueryRegistry()
    queries.load_text(SQL, "sql/probe.sql")
    monkeypatch.setattr(bind, "registry", lambda: queries)
    before = list(bind.BINDINGS)
    yield owner, first, second
    bind.BINDINGS[:] = before


def test_run_returns_what_each_kind_returns(conn, probe) -> None:
    owner, first, second = probe
    missing = UUID(int=0)

    one = bind.One("probe.get", Named, ("id",), entity="probe")
    assert db_api.run(conn, one, first.id, id=first.id) == Named(id=first.id, name="a-first")

    optional = bind.OneOrNone("probe.find", Named, ("id",))
    assert db_api.run(conn, optional, id=second.id) == Named(id=second.id, name="b-second")
    assert db_api.run(conn, optional, id=missing) is None

    returning = bind.Returning("probe.rename", Named, ("id", "name"))
    renamed = db_api.run(conn, returning, id=second.id, name="c-renamed")
    assert renamed == Named(id=second.id, name="c-renamed")
    assert db_api.run(conn, returning, id=missing, name="x") is None

    many = bind.Many("probe.of_owner", Named, ("owner_id", "limit"))
    page = {"owner_id": owner.id, "limit": 10, "after_value": None, "after_id": None}
    ascending = db_api.run(conn, many, sort="name", **page)
    assert [a.name for a in ascending] == ["a-first", "c-renamed"]
    descending = db_api.run(conn, many, sort="name", descending=True, **page)
    assert [a.name for a in descending] == ["c-renamed", "a-first"]

    count = bind.Scalar("probe.count", int, ("owner_id",))
    assert db_api.run(conn, count, owner_id=owner.id) == 2

    deactivate = bind.Exec("probe.deactivate", ("owner_id",))
    assert db_api.run(conn, deactivate, owner_id=owner.id) == 2
    assert db_api.run(conn, deactivate, owner_id=missing) == 0

    load = bind.Copy("probe.load")
    rows = [(owner.id, f"loaded-{n}", "assistant") for n in range(3)]
    assert db_api.copy(conn, load, iter(rows)) == 3
    assert db_api.run(conn, count, owner_id=owner.id) == 5


# Text that psycopg's text format for arrays must quote or escape, and NULL.
AWKWARD_NAMES = ['say "hi"', "back\\slash", "{braces}, commas", "NULL", "ünï ☃", "100%", None]


def test_run_many_sends_binary_arrays_and_counts_every_statement(conn, probe, superuser) -> None:
    owner = make_user(conn)
    add_many = bind.Exec("probe.add_many", ("owner_id", "names"))
    # Placeholders become binary; the literal '%(owner_id)s' (sent as '%%(owner_id)s') does not.
    assert "%(names)b" in add_many.binary_statement_text()
    assert "'%%(owner_id)s'" in add_many.binary_statement_text()
    names = [n for n in AWKWARD_NAMES if n is not None]
    batches = ({"owner_id": owner.id, "names": names[start : start + 2]} for start in (0, 2, 4))
    assert db_api.run_many(conn, add_many, batches) == len(names)
    assert db_api.run_many(conn, add_many, []) == 0
    query = "SELECT name, description FROM agents WHERE owner_id = %s"
    stored = superuser.execute(query, (owner.id,)).fetchall()
    assert sorted(stored) == sorted((name, "%(owner_id)s") for name in names)
    with pytest.raises(InvalidInput, match=r"probe\.add_many: null value in column"):
        db_api.run_many(conn, add_many, [{"owner_id": owner.id, "names": AWKWARD_NAMES}])
    with pytest.raises(QueryDefinitionError, match=r"missing \['names'\]"):
        db_api.run_many(conn, add_many, [{"owner_id": owner.id}])


def test_not_found_names_the_key_or_else_the_values(conn, probe) -> None:
    one = bind.One("probe.get", Named, ("id",), entity="probe")
    missing = UUID(int=0)
    with pytest.raises(NotFound) as keyed:
        db_api.run(conn, one, "the key", id=missing)
    assert (keyed.value.entity, keyed.value.key) == ("probe", "the key")
    with pytest.raises(NotFound) as unkeyed:
        db_api.run(conn, one, id=missing)
    assert unkeyed.value.key == {"id": missing}


def test_a_binding_is_a_value_and_calling_it_says_how_to_run_it(conn, probe) -> None:
    one = bind.One("probe.get", Named, ("id",), entity="probe")
    with pytest.raises(QueryDefinitionError) as called:
        one(conn, UUID(int=0), id=UUID(int=0))  # type: ignore[arg-type]
    message = str(called.value)
    assert message.startswith("sql/probe.sql:2: probe.get is a binding, a value: run it with ")
    assert "toolkit.db.run(conn, binding, ...)" in message
    assert "await toolkit.aio.db.run(conn, binding, ...)" in message
    assert not hasattr(one, "acall")


def test_a_parameter_named_like_runs_own_keywords_is_refused_when_bound(probe) -> None:
    with pytest.raises(QueryDefinitionError, match=r"probe\.sorted_by takes parameter\(s\) sort"):
        bind.Scalar("probe.sorted_by", str, ("sort",))
