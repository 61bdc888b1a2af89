"""Small helpers that create the rows tests need."""

from __future__ import annotations

import itertools
from typing import Any

from tests.support.modes import both
from toolkit.repositories.records import Agent, Execution, User, Workflow

# Sync or async repositories, as the running test's mode says.
agents = both("toolkit.repositories.agents")
executions = both("toolkit.repositories.executions")
users = both("toolkit.repositories.users")
workflows = both("toolkit.repositories.workflows")
Connection = Any  # a Connection, or an AsyncConnection in an async run

_counter = itertools.count()


def make_user(conn: Connection, **overrides: Any) -> User:
    n = next(_counter)
    data = {"email": f"user{n}@example.com", "display_name": f"User {n}"} | overrides
    return users.create(conn, data)


def make_agent(conn: Connection, owner: User | None = None, **overrides: Any) -> Agent:
    owner = owner or make_user(conn)
    n = next(_counter)
    data = {"owner_id": owner.id, "name": f"Agent {n}", "type": "assistant"} | overrides
    return agents.create(conn, data)


def make_workflow(conn: Connection, owner: User | None = None, **overrides: Any) -> Workflow:
    owner = owner or make_user(conn)
    n = next(_counter)
    data = {"owner_id": owner.id, "name": f"Workflow {n}"} | overrides
    return workflows.create(conn, data)


def make_execution(
    conn: Connection, workflow: Workflow | None = None, **overrides: Any
) -> Execution:
    workflow = workflow or make_workflow(conn)
    return executions.create(conn, {"workflow_id": workflow.id} | overrides)
