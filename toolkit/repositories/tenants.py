# Generated from toolkit/aio/repositories/tenants.py by tools/async_to_sync.py: do not edit.
# Edit the async source and run `tox -e generate`.
"""Tenants: the workspaces every tenant-owned row belongs to (queries in ``sql/tenants.sql``).

Row level security shows a tenant only its own row. Signing up is creating
the tenant in a transaction of that tenant, with its first user::

    new_id = uuid.uuid4()
    with db.transaction(tenant=new_id) as tx:
        # The tenant's id is the transaction's: new_id.
        tenant = tenants.create(tx, {"name": "Acme"})
        owner = users.create(tx, {"email": ..., "display_name": ...})

A tenant's transaction may create only its own row (another id is
TenantMismatch). An operator's connection, which the policies do not bind,
sees every tenant and creates one with the id given, or a new one. Tenants have no version
and are never deleted here (their rows would have to go first).
"""

from __future__ import annotations

from uuid import UUID

from toolkit.db.bind import One
from toolkit.db.database import Connection
from toolkit.db.drivers import run
from toolkit.db.patterns import (
    AuditWrite,
    Entity,
    atomic,
    parse_id,
    record_audit,
    validate_patch,
)
from toolkit.repositories.records import Tenant, TenantCreate, TenantFilter

_entity = Entity(
    "tenants", Tenant, TenantFilter, TenantCreate, audit_fields=("name",), delete=False
)
_rename = One("tenants.rename", Tenant, ("id", "name"), entity=_entity.entity)

create, get, list, count = _entity.create, _entity.get, _entity.list, _entity.count


def rename(
    conn: Connection, tenant_id: UUID | str, name: str, *, audit: AuditWrite | None = None
) -> Tenant:
    """Give a tenant a new name; NotFound if the caller cannot see it (another tenant)."""
    key = parse_id(tenant_id, "tenant_id")
    checked = validate_patch(TenantCreate, {"name": name})["name"]
    with atomic(conn):
        renamed = run(conn, _rename, key, id=key, name=checked)
        record_audit(conn, audit, f"{_entity.entity}.updated", key, {"fields": ["name"]})
    return renamed
