# Generated from toolkit/aio/repositories/memberships.py by tools/async_to_sync.py: do not edit.
# Edit the async source and run `tox -e generate`.
"""Memberships: which users belong to the current tenant (queries in ``sql/memberships.sql``).

Users are shared identities: one person may belong to several tenants. A
tenant sees the users with a membership in it, and its agents, workflows,
sessions and files may name only those. ``users.create`` makes a new user's
membership in the transaction's tenant; :func:`add` puts an existing user
(of another tenant, say) in it too, and :func:`remove` takes one out::

    # Ada, a user of Acme, joins Globex, and Globex sees her from then on:
    with db.transaction(tenant=globex) as tx:
        memberships.add(tx, ada.id)
        users.get(tx, ada.id)

Every function acts on the transaction's tenant (on a connection the
policies do not bind, without a tenant: the default tenant).
"""

from __future__ import annotations

import builtins
from uuid import UUID

from toolkit.db.bind import Exec, Many, One
from toolkit.db.database import Connection
from toolkit.db.drivers import run
from toolkit.db.patterns import (
    DEFAULT_LIMIT,
    AuditWrite,
    atomic,
    check_limit,
    delete_row,
    parse_id,
    record_audit,
)
from toolkit.repositories.records import Membership

_ENTITY = "membership"
"""The name of a membership in errors and audit actions."""

_add = One("memberships.add", Membership, ("user_id",), entity=_ENTITY)
_list = Many("memberships.list", Membership, ("after_user_id", "limit"))
_remove = Exec("memberships.remove", ("id",))  # delete_row passes the user id as id


def add(conn: Connection, user_id: UUID | str, *, audit: AuditWrite | None = None) -> Membership:
    """Make an existing user a member of the current tenant, and return the membership.

    Conflict if the user is a member already. A ``user_id`` that names no
    user is InvalidReference when the transaction commits: the key is
    checked then, since ``create_user()`` writes a membership before its
    user (on a bare connection this call is its own transaction).
    """
    key = parse_id(user_id, "user_id")
    with atomic(conn):
        added = run(conn, _add, key, user_id=key)
        record_audit(conn, audit, f"{_ENTITY}.created", key)
    return added


def list(
    conn: Connection,
    *,
    after_user_id: UUID | str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> builtins.list[Membership]:
    """The current tenant's memberships in user id order, after ``after_user_id`` if given
    (pass the last one's ``user_id`` on for the next page). ``users.list`` lists the same
    people as users."""
    after = None if after_user_id is None else parse_id(after_user_id, "after_user_id")
    return run(conn, _list, after_user_id=after, limit=check_limit(limit))


def remove(conn: Connection, user_id: UUID | str, *, audit: AuditWrite | None = None) -> None:
    """Take a user out of the current tenant; NotFound if they are not a member.

    The user's agents, workflows (with their executions and checkpoints),
    sessions and file records in this tenant are deleted with the membership
    (the foreign keys cascade); their stored objects stay until the tenant's
    ``FileStore.sweep`` removes them as orphans. The user, and their
    memberships and rows in other tenants, stay. Audited as
    ``membership.deleted`` of the user's id (``add``: ``membership.created``).
    """
    delete_row(conn, _remove, entity=_ENTITY, key=parse_id(user_id, "user_id"), audit=audit)
