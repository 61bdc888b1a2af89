"""Every list query's filter and keyset ORDER BY is served by an index.

The tables are seeded, analysed, and each list query is explained with each
filter alone, none, and all together, on its first page and after a cursor,
for every whitelisted sort and both directions: the statement the driver
sends for that call (the variant for the filters given). Each is explained
twice: planned with the call's values, and as a generic plan, which a
prepared variant may settle on. A plan that sorts the output of a
sequential scan of the table (a full sort) fails.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest
from psycopg import sql

from toolkit.catalog import load_bindings
from toolkit.db.bind import Many

SEED = """
INSERT INTO tenants (name) SELECT 'Tenant ' || g FROM generate_series(1, 2000) AS g;

INSERT INTO users (email, display_name, role)
SELECT 'u' || g || '@example.com', 'User ' || g, (ARRAY['admin', 'member', 'viewer'])[1 + g % 3]
FROM generate_series(1, 2000) AS g;

-- users.create makes each user's membership in the tenant; a raw insert does it here.
INSERT INTO memberships (user_id) SELECT id FROM users;

INSERT INTO agents (owner_id, name, type, is_active)
SELECT u.ids[1 + g % 2000], 'Agent ' || g, 'type' || (g % 20), g % 10 <> 0
FROM generate_series(1, 40000) AS g, (SELECT array_agg(id) AS ids FROM users) AS u;

INSERT INTO workflows (owner_id, name, status)
SELECT u.ids[1 + g % 2000], 'Workflow ' || g, (ARRAY['draft', 'published', 'archived'])[1 + g % 3]
FROM generate_series(1, 10000) AS g, (SELECT array_agg(id) AS ids FROM users) AS u;

INSERT INTO executions (workflow_id, status, finished_at)
SELECT w.ids[1 + g % 10000], s.status,
    CASE WHEN s.status IN ('succeeded', 'failed', 'cancelled') THEN now() END
FROM generate_series(1, 40000) AS g, (SELECT array_agg(id) AS ids FROM workflows) AS w,
    LATERAL (
        SELECT (ARRAY['pending', 'running', 'succeeded', 'failed', 'cancelled'])[1 + g % 5]
            AS status
    ) AS s;

INSERT INTO sessions (user_id, agent_id, expires_at)
SELECT owner_id, id, now() + interval '1 day' FROM agents WHERE name LIKE 'Agent %0';

INSERT INTO audit_events (actor_id, action, entity, entity_id, prev_hash, hash)
SELECT owner_id, 'agent.created', (ARRAY['agent', 'user', 'workflow'])[1 + n % 3], id, '', ''
FROM (SELECT owner_id, id, row_number() OVER () AS n FROM agents LIMIT 5000) AS a;

INSERT INTO files (owner_id, purpose, key, size, content_type, sha256, execution_id, session_id)
SELECT u.ids[1 + g % 2000], (ARRAY['attachment', 'generated'])[1 + g % 2], 'k' || g, g,
    'text/plain', repeat('a', 64),
    CASE WHEN g % 4 = 0 THEN e.ids[1 + g % 40000] END,
    CASE WHEN g % 4 = 1 THEN s.ids[1 + g % 4000] END
FROM generate_series(1, 20000) AS g, (SELECT array_agg(id) AS ids FROM users) AS u,
    (SELECT array_agg(id) AS ids FROM executions) AS e,
    (SELECT array_agg(id) AS ids FROM sessions) AS s;
"""


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes.extend(plan_nodes(child))
    return nodes


def full_sorts(plan: dict[str, Any], empty: frozenset[str] = frozenset()) -> list[str]:
    """Sort nodes fed by a sequential scan of a whole table (not of an ``empty`` partition)."""
    found = []
    for node in plan_nodes(plan):
        if node["Node Type"] in ("Sort", "Incremental Sort"):
            scans = [
                n
                for n in plan_nodes(node)
                if n["Node Type"] == "Seq Scan" and n["Relation Name"] not in empty
            ]
            found.extend(f"Sort over Seq Scan on {scan['Relation Name']}" for scan in scans)
    return found


@pytest.fixture
def seeded_conn(conn):
    conn.execute(SEED)
    conn.execute("ANALYZE")
    return conn


def sample_filter_values(conn) -> dict[str, Any]:
    row = conn.execute(
        "SELECT a.owner_id, a.id, w.id FROM agents AS a, workflows AS w LIMIT 1"
    ).fetchone()
    return {
        "type": "type3",
        "is_active": True,
        "owner_id": row[0],
        "role": "admin",
        "status": "pending",
        "workflow_id": row[2],
        "user_id": row[0],
        "agent_id": row[1],
        "entity": "agent",
        "entity_id": row[1],
        "actor_id": row[0],
        "purpose": "attachment",
        "execution_id": conn.execute("SELECT id FROM executions LIMIT 1").fetchone()[0],
        "session_id": conn.execute("SELECT id FROM sessions LIMIT 1").fetchone()[0],
    }


def test_list_queries_never_sort_a_whole_table(seeded_conn) -> None:
    assert list_query_problems(seeded_conn) == []


def test_the_check_catches_a_missing_index(seeded_conn) -> None:
    seeded_conn.execute("DROP INDEX agents_created_at_idx, agents_active_created_at_idx")
    seeded_conn.execute("DROP INDEX agents_name_idx")
    problems = list_query_problems(seeded_conn)
    assert any(p.startswith("agents.list filters=() sort=name") for p in problems), problems


CURSOR_AT = {"timestamptz": "2000-01-01T00:00:00+00:00", "text": "m", "float8": "0.5"}
"""A value after which a page starts, per sort type (a cursor's after_value)."""


def explained(conn, statement: str, params: dict[str, Any], *, generic: bool) -> dict[str, Any]:
    """The plan of ``statement`` with ``params``: planned with them, or as a generic plan."""
    if not generic:
        row = conn.execute(f"EXPLAIN (FORMAT JSON) {statement}", params, prepare=False).fetchone()
    else:
        names: list[str] = []
        native = re.sub(
            r"%\((\w+)\)s",
            lambda m: (
                f"${(names.append(m[1]) if m[1] not in names else None) or names.index(m[1]) + 1}"
            ),
            statement,
        )
        conn.execute(f"PREPARE plan_probe AS {native}", prepare=False)
        conn.execute("SET plan_cache_mode = force_generic_plan")
        try:
            arguments = ", ".join(
                "NULL" if params[name] is None else sql.Literal(str(params[name])).as_string(conn)
                for name in names
            )
            row = conn.execute(
                f"EXPLAIN (FORMAT JSON) EXECUTE plan_probe({arguments})", prepare=False
            ).fetchone()
        finally:
            conn.execute("RESET plan_cache_mode", prepare=False)
            conn.execute("DEALLOCATE plan_probe", prepare=False)
    return (row[0] if isinstance(row[0], list) else json.loads(row[0]))[0]["Plan"]


def empty_partitions(conn) -> frozenset[str]:
    """The partitions ANALYZE found empty (the weeks to come of a partitioned table): the
    planner costs an empty table as ten pages, and sorting what a scan of one yields sorts
    nothing."""
    rows = conn.execute(
        "SELECT relname FROM pg_class WHERE relispartition AND relkind = 'r' AND reltuples = 0"
    ).fetchall()
    return frozenset(name for (name,) in rows)


def list_query_problems(conn) -> list[str]:
    values = sample_filter_values(conn)
    empty = empty_partitions(conn)
    list_bindings = [b for b in load_bindings() if isinstance(b, Many) and b.query.sortable]
    assert len(list_bindings) >= 6
    failures = []
    checked = 0
    for binding in list_bindings:
        filters = [p for p in binding.params if p not in ("limit", "after_value", "after_id")]
        combos = [()] + [(f,) for f in filters] + [tuple(filters)]
        for combo, column, descending, after, generic in itertools.product(
            combos, binding.query.sort_columns, (False, True), (False, True), (False, True)
        ):
            params: dict[str, Any] = {f: (values[f] if f in combo else None) for f in filters}
            params |= {"limit": 51, "after_value": None, "after_id": None}
            if after:
                params |= {
                    "after_value": CURSOR_AT[column.sql_type],
                    "after_id": values["agent_id"],
                }
            # What the driver sends for this call: the variant for the filters it gives.
            statement = binding.statement_for(params, column.column, descending)
            plan = explained(conn, statement, params, generic=generic)
            checked += 1
            for problem in full_sorts(plan, empty):
                where = (
                    f"filters={combo} sort={column.column} desc={descending} "
                    f"cursor={after} {'generic' if generic else 'custom'} plan"
                )
                failures.append(f"{binding.name} {where}: {problem}")
    assert checked > 200
    return failures
