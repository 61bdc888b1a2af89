"""Tenants: the id every unit of tenant-scoped work carries, and the SQL that sets it.

The tenant travels with the transaction, never beyond it: the one door
(:func:`toolkit.aio.db.database.transaction_on`, under
``Database.transaction(tenant=...)`` and ``Database.connection(tenant=...)``)
sends BEGIN and a transaction-local :data:`TENANT_SETTING` in one round
trip, so the setting ends with the transaction's COMMIT or ROLLBACK and a
pooled connection handed back carries none (a session-level ``SET`` would
leak to the next checkout, and be lost behind a transaction-mode pooler).
Row-level security policies read it through ``public.toolkit_tenant()``,
which raises SQLSTATE :data:`TENANT_REQUIRED_SQLSTATE` when none is set:
a query without a tenant fails (:class:`~toolkit.errors.TenantRequired`),
it does not come back empty.

No I/O here.
"""

from __future__ import annotations

from toolkit.tenants import DEFAULT_TENANT, tenant_id

__all__ = [
    "BEGIN_AS_TENANT",
    "CURRENT_TENANT",
    "DEFAULT_TENANT",
    "TENANT_REQUIRED_SQLSTATE",
    "TENANT_SETTING",
    "tenant_id",
]

TENANT_SETTING = "toolkit.tenant_id"
"""The transaction-local setting holding the current tenant's id (the text of a UUID)."""

TENANT_REQUIRED_SQLSTATE = "TN001"
"""What ``public.toolkit_tenant()`` raises when a tenant-owned table is used without a tenant."""

BEGIN_AS_TENANT = f"BEGIN; SELECT pg_catalog.set_config('{TENANT_SETTING}', {{tenant}}, true)"
"""BEGIN and the tenant, sent as one simple query (one round trip).

``{tenant}`` is filled with ``psycopg.sql.Literal`` of a :func:`tenant_id`'s
text; ``true`` makes the setting transaction-local.
"""

CURRENT_TENANT = f"SELECT pg_catalog.current_setting('{TENANT_SETTING}', true)"
"""The current tenant's id as text: NULL, or '' once a transaction that set one has ended."""
