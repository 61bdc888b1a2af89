"""Bad input gets the toolkit's own error and leaves the database unchanged."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.core.factories import make_agent, make_execution, make_user
from toolkit.errors import InvalidInput, ToolkitError
from toolkit.repositories import (
    agents,
    audit_events,
    checkpoints,
    executions,
    sessions,
    users,
    workflows,
)

TABLES = ("users", "agents", "workflows", "executions", "checkpoints", "sessions", "audit_events")

SQL_INJECTION = [
    "'; DROP TABLE agents; --",
    "' OR '1'='1",
    "1; DELETE FROM users",
    '" OR ""="',
    "admin'--",
    "' UNION SELECT password_hash FROM users --",
    "%' AND 1=(SELECT count(*) FROM pg_sleep(2)) --",
    "$$; DROP TABLE users; $$",
    "\\'; TRUNCATE audit_events; --",
]


def fingerprint(conn) -> dict[str, tuple[int, str]]:
    """Row count and a checksum of every table's content."""
    result = {}
    for table in TABLES:
        row = conn.execute(
            f"SELECT count(*), coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') "
            f"FROM {table} AS t"
        ).fetchone()
        result[table] = (row[0], row[1])
    return result


@pytest.fixture
def seeded(conn):
    owner = make_user(conn, password_hash="hash")
    agent = make_agent(conn, owner, name="Seed agent")
    execution = make_execution(conn)
    return {"owner": owner, "agent": agent, "execution": execution}


def bad_calls(seeded: dict[str, Any]) -> list[tuple[str, Callable[[Any], Any]]]:
    owner = seeded["owner"]
    agent = seeded["agent"]
    long_name = "x" * 201
    return [
        ("non-uuid id", lambda c: agents.get(c, "not-a-uuid")),
        ("int id", lambda c: users.get(c, 12345)),
        ("uuid-ish injection id", lambda c: agents.delete(c, "' OR 1=1 --")),
        (
            "nul in name",
            lambda c: agents.create(
                c, {"owner_id": owner.id, "name": "a\x00b", "type": "assistant"}
            ),
        ),
        (
            "lone surrogate",
            lambda c: users.create(c, {"email": "x@y.zz", "display_name": "\ud800"}),
        ),
        (
            "over-long name",
            lambda c: agents.create(
                c, {"owner_id": owner.id, "name": long_name, "type": "assistant"}
            ),
        ),
        (
            "over-long update",
            lambda c: agents.update(c, agent.id, expected_version=1, name=long_name),
        ),
        ("bool version", lambda c: agents.update(c, agent.id, expected_version=True, name="x")),
        ("text version", lambda c: users.update(c, owner.id, expected_version="1", role="admin")),
        (
            "bad type slug",
            lambda c: agents.create(c, {"owner_id": owner.id, "name": "x", "type": "Bad Type!"}),
        ),
        (
            "unknown field",
            lambda c: agents.create(
                c, {"owner_id": owner.id, "name": "x", "type": "a", "admin": True}
            ),
        ),
        ("unknown filter", lambda c: agents.list(c, {"colour": "red"})),
        ("unknown sort", lambda c: agents.list(c, sort="password_hash")),
        ("injection sort", lambda c: users.list(c, sort="email; DROP TABLE users")),
        ("negative limit", lambda c: agents.list(c, limit=-1)),
        ("zero limit", lambda c: workflows.list(c, limit=0)),
        ("huge limit", lambda c: sessions.list(c, limit=10**9)),
        ("bool limit", lambda c: agents.search(c, "x", limit=True)),
        ("malformed cursor", lambda c: agents.list(c, cursor="!!not base64!!")),
        ("cursor of junk json", lambda c: agents.list(c, cursor="WzEsMiwzXQ")),
        (
            "cursor with bad value",
            lambda c: agents.list(c, cursor=_cursor("created_at", "yesterday-ish")),
        ),
        ("empty search", lambda c: agents.search(c, "")),
        ("huge search", lambda c: agents.search(c, "x" * 10_000)),
        ("nul search", lambda c: users.search(c, "a\x00")),
        ("bad status filter", lambda c: executions.list(c, {"status": "exploded"})),
        ("bad owner filter", lambda c: agents.count(c, {"owner_id": "' OR 1=1"})),
        (
            "deep json",
            lambda c: executions.create(c, {"workflow_id": uuid.uuid4(), "input": _deep(100)}),
        ),
        (
            "nul in json",
            lambda c: executions.create(c, {"workflow_id": uuid.uuid4(), "input": {"k": "\x00"}}),
        ),
        (
            "nan in json",
            lambda c: executions.create(
                c, {"workflow_id": uuid.uuid4(), "input": {"k": float("nan")}}
            ),
        ),
        (
            "huge json",
            lambda c: executions.create(
                c, {"workflow_id": uuid.uuid4(), "input": {"k": "x" * (2 << 20)}}
            ),
        ),
        (
            "negative sequence",
            lambda c: checkpoints.append(
                c, {"execution_id": seeded["execution"].id, "sequence": -1, "state": {}}
            ),
        ),
        ("bad keep", lambda c: checkpoints.prune(c, seeded["execution"].id, keep=0)),
        ("bad worker id", lambda c: executions.claim_next(c, worker_id="")),
        ("bad lease", lambda c: executions.claim_next(c, worker_id="w", lease_seconds=-5)),
        ("bad email", lambda c: users.create(c, {"email": "not-an-email", "display_name": "x"})),
        (
            "bad audit action",
            lambda c: audit_events.record(c, {"action": "DROP TABLE", "entity": "x"}),
        ),
        ("bad ttl", lambda c: sessions.touch(c, uuid.uuid4(), ttl_seconds=0)),
    ]


def _cursor(sort: str, value: str) -> str:
    from toolkit.repositories._common import encode_cursor

    return encode_cursor(sort, False, value, uuid.uuid4())


def _deep(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"k": value}
    return value


def test_every_bad_call_raises_invalid_input_and_changes_nothing(conn, seeded) -> None:
    before = fingerprint(conn)
    for label, call in bad_calls(seeded):
        with pytest.raises(InvalidInput) as caught:
            call(conn)
        assert str(caught.value), label
        assert fingerprint(conn) == before, f"{label} changed the database"


@pytest.mark.parametrize("payload", SQL_INJECTION)
def test_injection_payloads_are_data(conn, seeded, payload: str) -> None:
    before = fingerprint(conn)
    assert agents.search(conn, payload) == []
    assert users.search(conn, payload) == []
    assert workflows.search(conn, payload) == []
    assert sessions.search(conn, payload) == []
    for call in (
        lambda: agents.count(conn, {"type": payload}),
        lambda: agents.list(conn, sort=payload),
        lambda: users.get_by_email(conn, payload),
        lambda: audit_events.list(conn, {"entity": payload}),
    ):
        try:
            result = call()
        except ToolkitError as exc:
            assert isinstance(exc, InvalidInput)
        else:
            assert result in (0, None)
    # Stored as data, it comes back byte for byte.
    stored = agents.create(
        conn, {"owner_id": seeded["owner"].id, "name": payload, "type": "assistant"}
    )
    assert agents.get(conn, stored.id).name == payload
    assert agents.search(conn, payload) == [stored]
    after = fingerprint(conn)
    assert after["agents"][0] == before["agents"][0] + 1
    assert {t: after[t] for t in TABLES if t != "agents"} == {
        t: before[t] for t in TABLES if t != "agents"
    }
