"""What mypy says about a repository ``update``: its keywords are typed from the
entity's one declaration of them (``AgentUpdate`` and the like, in
``toolkit.repositories.records``), sync and async.

A field the entity does not patch, a value of the wrong type, another
entity's field or a missing ``expected_version`` is a type error; at run
time the first is InvalidInput too (tests/core/test_bad_input.py). Runs in
``tox -e lint`` (it needs mypy).
"""

from __future__ import annotations

from pathlib import Path

from tests.support.mypy_snippets import mypy_errors

SNIPPET = """
from uuid import UUID

import toolkit.aio.repositories as aio
from toolkit.db import Connection
from toolkit.aio.db import AsyncConnection
from toolkit.repositories import UNSET, Audit, agents, sessions, users, workflows
from toolkit.repositories.records import Agent, Session

key = UUID(int=0)


def sync(conn: Connection) -> Agent:
    agents.update(conn, key, expected_version=1, name="x", description=None, audit=Audit())
    agents.update(conn, key, expected_version=1, description=UNSET, config={"model": "m"})
    users.update(conn, key, expected_version=1, role="admin", is_active=False)
    workflows.update(conn, key, expected_version=1, agent_id=None, definition={"steps": []})
    sessions.update(conn, key, expected_version=1, title=None, state={"k": 1})
    agents.update(conn, key, expected_version=1, colour="red")  # E: no such field
    agents.update(conn, key, expected_version=1, owner_id=key)  # E: created, never patched
    agents.update(conn, key, expected_version=1, is_active="yes")  # E: not a bool
    users.update(conn, key, expected_version=1, name="x")  # E: an agent's field
    agents.update(conn, key, name="x")  # E: expected_version is required
    return agents.update(conn, key, expected_version=1, audit=None)


async def run_async(conn: AsyncConnection) -> Session:
    await aio.agents.update(conn, key, expected_version=1, name="x")
    await aio.sessions.update(conn, key, expected_version=1, name="x")  # E: an agent's field
    return await aio.sessions.update(conn, key, expected_version=1, title="t")
"""


def test_update_keywords_are_typed_from_the_entitys_declaration(tmp_path: Path) -> None:
    errors = mypy_errors(SNIPPET, tmp_path, "update_types_snippet.py")
    assert len(errors.expected) == 6
    assert errors.found == errors.expected, errors.output
