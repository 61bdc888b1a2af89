"""Typed repository functions, one module per entity.

Each function takes a connection (or a transaction) first and never commits
on its own: ``agents.get(conn, agent_id)``. What they return and take is in
:mod:`toolkit.repositories.records`; a write given ``audit=Audit(actor_id)``
records its audit event in the same transaction.
"""

from toolkit.db.patterns import UNSET, Unset
from toolkit.repositories import (
    agents,
    audit_events,
    checkpoints,
    executions,
    memberships,
    records,
    sessions,
    tenants,
    users,
    workflows,
)
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
    "records",
    "sessions",
    "tenants",
    "users",
    "workflows",
]
