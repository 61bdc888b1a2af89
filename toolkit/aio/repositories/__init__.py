"""Typed repository functions, one module per entity, awaited.

The same functions as :mod:`toolkit.repositories`, taking an
``AsyncConnection`` (or an async transaction) first::

    agent = await agents.get(conn, agent_id)
"""

from toolkit.aio.repositories import (
    agents,
    audit_events,
    checkpoints,
    executions,
    memberships,
    sessions,
    tenants,
    users,
    workflows,
)
from toolkit.db.inputs import UNSET, Unset
from toolkit.repositories.audit import Audit

__all__ = [
    "UNSET",
    "Audit",
    "Unset",
    "agents",
    "audit_events",
    "checkpoints",
    "executions",
    "memberships",
    "sessions",
    "tenants",
    "users",
    "workflows",
]
