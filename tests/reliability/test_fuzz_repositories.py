"""Hostile input, fuzzed: hypothesis throws arbitrary arguments at every public
repository function. Only the toolkit's documented exceptions escape, and a
rejected call leaves the database exactly as it was (row counts and a
checksum of every table)."""

from __future__ import annotations

import os
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.core.factories import make_agent, make_execution, make_user
from tests.core.test_bad_input import fingerprint
from toolkit.errors import (
    Conflict,
    IllegalTransition,
    InvalidInput,
    InvalidReference,
    NotFound,
    StaleVersion,
)
from toolkit.repositories import (
    agents,
    audit_events,
    checkpoints,
    executions,
    sessions,
    users,
    workflows,
)

DOCUMENTED = (InvalidInput, NotFound, Conflict, InvalidReference, StaleVersion, IllegalTransition)
# tox -e reliability runs 300 examples a property; the default run 25.
EXAMPLES = int(os.environ.get("TOOLKIT_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)

# Any code point, lone surrogates and NUL included.
hostile_text = st.one_of(
    st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=50),
    st.sampled_from(["", "\x00", "\ud800", "a\x00b", "x" * 100_000, "'; DROP TABLE users; --"]),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | hostile_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(hostile_text, children, max_size=4)
    ),
    max_leaves=20,
)
anything = st.one_of(
    hostile_text,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.none(),
    st.booleans(),
    st.uuids(),
    st.uuids().map(str),
    json_values,
)


def payloads(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts with the real fields (each either plausible or hostile) and stray keys."""
    known = st.fixed_dictionaries(
        {}, optional={name: strategy | anything for name, strategy in fields.items()}
    )
    stray = st.dictionaries(hostile_text, anything, max_size=2)
    return st.tuples(known, stray | st.just({})).map(lambda pair: {**pair[1], **pair[0]})


def call_and_check(conn, call) -> None:
    before = fingerprint(conn)
    try:
        call()
    except DOCUMENTED:
        assert fingerprint(conn) == before
    # Any other exception escapes and fails the property.


@FUZZ
@given(data=st.data())
def test_create_functions(conn, data) -> None:
    owner = make_user(conn)
    execution = make_execution(conn)
    agent = make_agent(conn, owner)
    plausible_id = st.sampled_from([owner.id, agent.id, execution.id, uuid.uuid4()])
    cases = [
        (users.create, {"email": st.emails(), "display_name": hostile_text, "role": hostile_text}),
        (
            agents.create,
            {
                "owner_id": plausible_id,
                "name": hostile_text,
                "type": hostile_text,
                "config": st.fixed_dictionaries(
                    {}, optional={"model": hostile_text, "temperature": st.floats()}
                ),
                "description": hostile_text,
            },
        ),
        (
            workflows.create,
            {"owner_id": plausible_id, "name": hostile_text, "definition": json_values},
        ),
        (executions.create, {"workflow_id": plausible_id, "input": json_values}),
        (
            checkpoints.append,
            {"execution_id": plausible_id, "sequence": st.integers(), "state": json_values},
        ),
        (
            sessions.create,
            {
                "user_id": plausible_id,
                "agent_id": plausible_id,
                "title": hostile_text,
                "ttl_seconds": st.integers(),
            },
        ),
        (
            audit_events.record,
            {"action": hostile_text, "entity": hostile_text, "details": json_values},
        ),
    ]
    for create, fields in cases:
        payload = data.draw(payloads(fields), label=create.__module__)
        call_and_check(conn, lambda create=create, payload=payload: create(conn, payload))


@FUZZ
@given(data=st.data())
def test_reads_updates_and_lists(conn, data) -> None:
    owner = make_user(conn)
    agent = make_agent(conn, owner)
    key = data.draw(st.one_of(anything, st.just(agent.id)), label="key")
    text = data.draw(anything, label="text")
    number = data.draw(st.one_of(st.integers(), anything), label="number")
    filters = data.draw(
        st.one_of(
            st.none(),
            st.dictionaries(hostile_text, anything, max_size=3),
            payloads({"type": hostile_text, "owner_id": st.uuids()}),
        )
    )
    cursor = data.draw(st.one_of(st.none(), hostile_text), label="cursor")
    sort = data.draw(st.one_of(st.sampled_from(["created_at", "name"]), hostile_text), label="sort")
    calls = [
        lambda: agents.get(conn, key),
        lambda: users.get_by_email(conn, text),
        lambda: agents.search(conn, text, limit=number),
        lambda: users.search(conn, text),
        lambda: agents.list(conn, filters, sort=sort, limit=number, cursor=cursor),
        lambda: agents.count(conn, filters),
        lambda: executions.list(conn, filters, cursor=cursor),
        lambda: audit_events.list(conn, filters, limit=number),
        lambda: agents.update(conn, key, expected_version=agent.version, name=text),
        lambda: agents.update(conn, agent.id, expected_version=number, description=text),
        lambda: workflows.publish(conn, key),
        lambda: executions.claim_next(conn, worker_id=text, lease_seconds=number),
        lambda: checkpoints.prune(conn, key, keep=number),
        lambda: sessions.touch(conn, key, ttl_seconds=number),
        lambda: agents.delete(conn, key),
    ]
    for call in calls:
        call_and_check(conn, call)
