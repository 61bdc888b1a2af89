"""Bad input gets the toolkit's own error and leaves the database unchanged."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.core.factories import make_agent, make_execution, make_user
from tests.reliability.test_fuzz_repositories import fingerprint
from toolkit.errors import MAX_SHOWN, IntegrityError, InvalidInput, ToolkitError
from toolkit.repositories import (
    Audit,
    agents,
    audit_events,
    checkpoints,
    executions,
    sessions,
    users,
    workflows,
)

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
        # mypy refuses both (the keywords are typed from AgentUpdate); at run time too:
        (
            "unknown update field",
            lambda c: agents.update(c, agent.id, expected_version=1, colour="red"),  # type: ignore[call-arg]
        ),
        (
            "create-only update field",
            lambda c: agents.update(c, agent.id, expected_version=1, owner_id=owner.id),  # type: ignore[call-arg]
        ),
        (
            "not an audit",
            lambda c: agents.update(c, agent.id, expected_version=1, name="x", audit="me"),  # type: ignore[typeddict-item]
        ),
        (
            "audit details not a mapping",
            lambda c: agents.delete(c, agent.id, audit=Audit(owner.id, details=["x"])),  # type: ignore[arg-type]
        ),
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
    from toolkit.db.patterns import encode_cursor

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
    assert after["public.agents"][0] == before["public.agents"][0] + 1
    others = set(before) - {"public.agents"}
    assert {t: after[t] for t in others} == {t: before[t] for t in others}


# Values deeper than the interpreter can recurse (the message builder once
# called repr() on them and raised RecursionError instead of InvalidInput).

DEEP = 5000


def _deep_calls(seeded: dict[str, Any]) -> list[tuple[str, Callable[[Any], Any]]]:
    owner, agent = seeded["owner"], seeded["agent"]
    deep_dict, deep_list = _deep(DEEP), _deep_list(DEEP)
    return [
        (
            "agent config",
            lambda c: agents.create(
                c, {"owner_id": owner.id, "name": "x", "type": "a", "config": deep_dict}
            ),
        ),
        (
            "agent config in a known key",
            lambda c: agents.create(
                c, {"owner_id": owner.id, "name": "x", "type": "a", "config": {"tools": deep_list}}
            ),
        ),
        (
            "agent config update",
            lambda c: agents.update(c, agent.id, expected_version=1, config=deep_dict),
        ),
        (
            "bulk agent config",
            lambda c: agents.create_many(
                c, [{"owner_id": owner.id, "name": "x", "type": "a", "config": deep_dict}]
            ),
        ),
        (
            "session state",
            lambda c: sessions.create(
                c, {"user_id": owner.id, "agent_id": agent.id, "state": deep_dict}
            ),
        ),
        (
            "workflow definition",
            lambda c: workflows.create(
                c, {"owner_id": owner.id, "name": "x", "definition": deep_dict}
            ),
        ),
        (
            "workflow step params",
            lambda c: workflows.create(
                c,
                {
                    "owner_id": owner.id,
                    "name": "x",
                    "definition": {"steps": [{"name": "a", "action": "b", "params": deep_dict}]},
                },
            ),
        ),
        (
            "execution input",
            lambda c: executions.create(c, {"workflow_id": uuid.uuid4(), "input": deep_list}),
        ),
        ("deep id", lambda c: agents.get(c, deep_dict)),
        ("deep filter", lambda c: agents.list(c, {"type": deep_dict})),
        ("deep sort", lambda c: agents.list(c, sort=deep_dict)),
        ("deep limit", lambda c: users.search(c, "x", limit=deep_list)),
        ("huge int limit", lambda c: agents.list(c, limit=10**5000)),
        (
            "huge int in config",
            lambda c: agents.update(
                c, agent.id, expected_version=1, config={"max_tokens": 10**5000}
            ),
        ),
    ]


def test_deeply_nested_input_is_invalid_input_with_a_short_message(conn, seeded) -> None:
    before = fingerprint(conn)
    for label, call in _deep_calls(seeded):
        with pytest.raises(InvalidInput) as caught:
            call(conn)
        message = str(caught.value)
        assert len(message) < 400, f"{label}: {len(message)} characters"
        value = caught.value.value
        assert value is None or len(value) <= MAX_SHOWN, f"{label}: value {len(value)} characters"
        assert fingerprint(conn) == before, f"{label} changed the database"


def _deep_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


# Rows written outside the toolkit: read tolerantly, written strictly.


def test_unknown_jsonb_keys_written_outside_are_kept_on_read(conn, superuser, seeded) -> None:
    owner, agent = seeded["owner"], seeded["agent"]
    workflow = workflows.create(conn, {"owner_id": owner.id, "name": "odd definition"})
    superuser.execute(
        'UPDATE agents SET config = config || \'{"added_by_v2": {"x": 1}}\' WHERE id = %s',
        (agent.id,),
    )
    superuser.execute(
        "UPDATE workflows SET definition = "
        '\'{"steps": [{"name": "a", "action": "b", "retries": 3}], "v": 2}\' '
        "WHERE id = %s",
        (workflow.id,),
    )
    for _ in range(3):
        make_agent(conn, owner)  # the odd row sits inside a page of good ones

    read = agents.get(conn, agent.id)
    assert read.config.model_extra == {"added_by_v2": {"x": 1}}
    assert read.config.model_dump()["added_by_v2"] == {"x": 1}
    page = agents.list(conn, {"owner_id": owner.id}, limit=10)
    assert len(page.items) == 4 and agent.id in {a.id for a in page.items}
    assert agents.search(conn, agent.name) == [read]
    definition = workflows.get(conn, workflow.id).definition
    assert definition.model_extra == {"v": 2}
    assert definition.steps[0].model_extra == {"retries": 3}
    assert [w.id for w in workflows.list(conn, {"owner_id": owner.id}).items] == [workflow.id]


def test_unknown_jsonb_keys_are_rejected_on_write(conn, superuser, seeded) -> None:
    owner, agent = seeded["owner"], seeded["agent"]
    superuser.execute(
        'UPDATE agents SET config = \'{"model": "m", "stray": 1}\' WHERE id = %s',
        (agent.id,),
    )
    read = agents.get(conn, agent.id)
    before = fingerprint(conn)
    writes = [
        lambda: agents.update(conn, agent.id, expected_version=read.version, config=read.config),
        lambda: agents.update(conn, agent.id, expected_version=read.version, config={"stray": 1}),
        lambda: agents.create(
            conn, {"owner_id": owner.id, "name": "x", "type": "a", "config": read.config}
        ),
        lambda: agents.create(
            conn, {"owner_id": owner.id, "name": "x", "type": "a", "config": {"modle": "typo"}}
        ),
        lambda: workflows.create(
            conn,
            {
                "owner_id": owner.id,
                "name": "x",
                "definition": {"steps": [{"name": "a", "action": "b", "retries": 3}]},
            },
        ),
    ]
    for write in writes:
        with pytest.raises(InvalidInput, match="unknown key"):
            write()
    assert fingerprint(conn) == before
    # Without the unknown key the same config writes.
    clean = read.config.model_dump(exclude=set(read.config.model_extra or {}))
    updated = agents.update(conn, agent.id, expected_version=read.version, config=clean)
    assert updated.config.model_extra == {} and updated.config.model == "m"


def test_a_stored_value_of_the_wrong_type_is_a_toolkit_error(conn, superuser, seeded) -> None:
    agent = seeded["agent"]
    superuser.execute(
        'UPDATE agents SET config = \'{"tools": "not a list"}\' WHERE id = %s', (agent.id,)
    )
    with pytest.raises(IntegrityError, match=r"AgentConfig.*tools") as caught:
        agents.get(conn, agent.id)
    assert len(str(caught.value)) < 400
    with pytest.raises(IntegrityError):
        agents.list(conn)
