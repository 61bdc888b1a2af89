"""Typed repository functions, one module per entity.

Each function takes a connection (or a transaction) first and never commits
on its own: ``agents.get(conn, agent_id)``.
"""

from toolkit.db.patterns import UNSET, Audit, Unset
from toolkit.repositories import (
    agents,
    audit_events,
    checkpoints,
    executions,
    sessions,
    users,
    workflows,
)

__all__ = [
    "UNSET",
    "Audit",
    "Unset",
    "agents",
    "audit_events",
    "checkpoints",
    "executions",
    "sessions",
    "users",
    "workflows",
]
