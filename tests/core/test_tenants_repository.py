"""Tenants and memberships through their repositories, as the application role.

Every test but the operator's runs as a fresh LOGIN role in toolkit_app (no
BYPASSRLS, owns nothing), so row level security binds it; each tenant is
made the way an application signs one up: ``tenants.create`` in a
transaction of the new tenant. Sync and async (tests/support/modes.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from tests.conftest import url_as
from tests.support.modes import both
from toolkit.config import load_settings
from toolkit.errors import Conflict, InvalidReference, NotFound, TenantMismatch, TenantRequired
from toolkit.repositories import Audit
from toolkit.repositories.records import Tenant

pytestmark = pytest.mark.usefixtures("mode")
agents = both("toolkit.repositories.agents")
audit_events = both("toolkit.repositories.audit_events")
memberships = both("toolkit.repositories.memberships")
tenants = both("toolkit.repositories.tenants")
users = both("toolkit.repositories.users")

DEFAULT_TENANT = uuid.UUID(int=0)


@pytest.fixture
def app_db(mode: Any, database_url: str, make_role: Callable[..., str]) -> Iterator[Any]:
    """A pool of this test's database as a fresh application login (RLS binds it)."""
    settings = load_settings(
        database_url=url_as(database_url, make_role("LOGIN")),
        pool_min_size=0,
        pool_max_size=2,
        pool_timeout=10.0,
    )
    with both("toolkit.db.database").Database(settings) as database:
        yield database


def sign_up(app_db: Any, name: str) -> Tenant:
    """A new tenant, created in its own transaction with its first user (as an app would)."""
    new_id = uuid.uuid4()
    with app_db.transaction(tenant=new_id) as tx:
        tenant = tenants.create(tx, {"name": name})
        users.create(tx, {"email": f"owner-{new_id.hex[:8]}@example.com", "display_name": name})
    return tenant


def test_sign_up_creates_the_tenant_in_its_own_transaction(
    app_db: Any, superuser: psycopg.Connection[Any]
) -> None:
    new_id = uuid.uuid4()
    with app_db.transaction(tenant=new_id) as tx:
        tenant = tenants.create(tx, {"name": "Acme"})
        owner = users.create(tx, {"email": "ada@acme.example.com", "display_name": "Ada"})
        tenants.rename(tx, new_id, "Acme Corp", audit=Audit(owner.id))
    assert (tenant.id, tenant.name) == (new_id, "Acme")
    with app_db.transaction(tenant=new_id) as tx:
        assert tenants.get(tx, new_id) == tenant.model_copy(update={"name": "Acme Corp"})
        assert [t.id for t in tenants.list(tx).items] == [new_id]
        assert tenants.count(tx) == 1
        assert users.get(tx, owner.id) == owner
        assert [m.user_id for m in memberships.list(tx)] == [owner.id]
        renamed = audit_events.list(tx, {"entity": "tenant"}).items
        assert [(e.action, e.entity_id, e.details) for e in renamed] == [
            ("tenant.updated", new_id, {"fields": ["name"]})
        ]
    # The same id given explicitly is the same sign-up.
    second = uuid.uuid4()
    with app_db.transaction(tenant=second) as tx:
        assert tenants.create(tx, {"id": str(second), "name": "Globex"}).id == second
    stored = superuser.execute(
        "SELECT id, name FROM tenants WHERE id = ANY(%s) ORDER BY name", [[new_id, second]]
    ).fetchall()
    assert stored == [(new_id, "Acme Corp"), (second, "Globex")]


def test_creating_a_tenant_whose_id_is_not_the_transactions_is_refused(
    app_db: Any, superuser: psycopg.Connection[Any]
) -> None:
    mine, other = uuid.uuid4(), uuid.uuid4()
    with pytest.raises(TenantMismatch) as refused, app_db.transaction(tenant=mine) as tx:
        tenants.create(tx, {"id": other, "name": "Hijack"})
    assert refused.value.table == "tenants"
    assert str(other) not in str(refused.value) and "Hijack" not in str(refused.value)
    with pytest.raises(TenantRequired), app_db.connection() as conn:
        tenants.create(conn, {"name": "Nobody's"})
    count = superuser.execute(
        "SELECT count(*) FROM tenants WHERE id = ANY(%s) OR name IN ('Hijack', 'Nobody''s')",
        [[mine, other]],
    ).fetchone()
    assert count == (0,)
    sign_up(app_db, "Taken")
    taken = superuser.execute("SELECT id FROM tenants WHERE name = 'Taken'").fetchone()
    assert taken is not None
    with pytest.raises(Conflict), app_db.transaction(tenant=taken[0]) as tx:
        tenants.create(tx, {"name": "Taken again"})


def test_create_many_writes_into_the_tenant_and_refuses_another_tenants_owner(
    app_db: Any, superuser: psycopg.Connection[Any]
) -> None:
    acme, globex = sign_up(app_db, "Acme"), sign_up(app_db, "Globex")
    with app_db.transaction(tenant=acme.id) as tx:
        (mine,) = [m.user_id for m in memberships.list(tx)]
    with app_db.transaction(tenant=globex.id) as tx:
        (theirs,) = [m.user_id for m in memberships.list(tx)]
    with app_db.transaction(tenant=acme.id) as tx:
        bulk = [{"owner_id": mine, "name": f"bulk {i}", "type": "bulk"} for i in range(3)]
        assert agents.create_many(tx, bulk) == 3
    with app_db.connection(tenant=acme.id) as conn:
        assert agents.create_many(conn, [{"owner_id": mine, "name": "bulk 3", "type": "bulk"}]) == 1
    # An owner of another tenant, after a good row: the statement writes neither.
    stolen = [
        {"owner_id": mine, "name": "fine", "type": "bulk"},
        {"owner_id": theirs, "name": "stolen", "type": "bulk"},
    ]
    with pytest.raises(InvalidReference) as refused, app_db.transaction(tenant=acme.id) as tx:
        agents.create_many(tx, stolen)
    assert str(theirs) not in str(refused.value) and "stolen" not in str(refused.value)
    with pytest.raises(TenantRequired), app_db.connection() as conn:
        agents.create_many(conn, [{"owner_id": mine, "name": "nobody's", "type": "bulk"}])
    rows = superuser.execute(
        "SELECT tenant_id, owner_id, name FROM agents ORDER BY name"
    ).fetchall()
    assert rows == [(acme.id, mine, f"bulk {i}") for i in range(4)]


def test_a_tenant_sees_and_renames_only_itself(
    app_db: Any, superuser: psycopg.Connection[Any]
) -> None:
    acme, globex = sign_up(app_db, "Acme"), sign_up(app_db, "Globex")
    with app_db.transaction(tenant=acme.id) as tx:
        with pytest.raises(NotFound):
            tenants.get(tx, globex.id)
        with pytest.raises(NotFound):
            tenants.get(tx, DEFAULT_TENANT)
        with pytest.raises(NotFound):
            tenants.rename(tx, globex.id, "Owned")
        assert [t.id for t in tenants.list(tx).items] == [acme.id]
        assert tenants.count(tx) == 1
    names = dict(superuser.execute("SELECT id, name FROM tenants").fetchall())
    assert names[globex.id] == "Globex"
    with app_db.connection() as conn, pytest.raises(TenantRequired):
        tenants.get(conn, acme.id)


def test_an_existing_user_added_to_a_second_workspace_is_visible_there(app_db: Any) -> None:
    acme, globex = sign_up(app_db, "Acme"), sign_up(app_db, "Globex")
    with app_db.transaction(tenant=acme.id) as tx:
        ada = users.create(tx, {"email": "ada@example.com", "display_name": "Ada"})
    with app_db.transaction(tenant=globex.id) as tx:
        with pytest.raises(NotFound):
            users.get(tx, ada.id)
        (globex_owner,) = users.list(tx).items
        joined = memberships.add(tx, ada.id, audit=Audit(globex_owner.id))
        assert (joined.tenant_id, joined.user_id) == (globex.id, ada.id)
        assert users.get(tx, ada.id) == ada
        agents.create(tx, {"owner_id": ada.id, "name": "Ada's", "type": "assistant"})
        (event,) = audit_events.list(tx, {"entity": "membership"}).items
        assert (event.action, event.actor_id, event.entity_id) == (
            "membership.created",
            globex_owner.id,
            ada.id,
        )
    with app_db.transaction(tenant=globex.id) as tx:
        listed = memberships.list(tx)
        assert {m.user_id for m in listed} == {globex_owner.id, ada.id}
        assert {m.tenant_id for m in listed} == {globex.id}
        assert listed == sorted(listed, key=lambda m: m.user_id)
        (first,) = memberships.list(tx, limit=1)
        assert memberships.list(tx, after_user_id=first.user_id) == listed[1:]
    with pytest.raises(Conflict), app_db.transaction(tenant=globex.id) as tx:
        memberships.add(tx, ada.id)
    with app_db.transaction(tenant=acme.id) as tx:  # still Acme's, and Acme sees only its own
        assert users.get(tx, ada.id) == ada
        assert globex_owner.id not in {m.user_id for m in memberships.list(tx)}


def test_adding_a_user_that_does_not_exist_is_an_invalid_reference(
    app_db: Any, superuser: psycopg.Connection[Any]
) -> None:
    acme = sign_up(app_db, "Acme")
    nobody = uuid.uuid4()
    # The key is deferred (create_user() writes a membership before its user): checked at COMMIT.
    with pytest.raises(InvalidReference), app_db.transaction(tenant=acme.id) as tx:
        memberships.add(tx, nobody)
    with pytest.raises(InvalidReference), app_db.connection(tenant=acme.id) as conn:
        memberships.add(conn, nobody)
    found = superuser.execute("SELECT count(*) FROM memberships WHERE user_id = %s", [nobody])
    assert found.fetchone() == (0,)


def test_removing_a_membership_removes_that_users_rows_in_that_tenant_only(
    app_db: Any, superuser: psycopg.Connection[Any]
) -> None:
    acme, globex = sign_up(app_db, "Acme"), sign_up(app_db, "Globex")
    agent = {"name": "Helper", "type": "assistant"}
    with app_db.transaction(tenant=acme.id) as tx:
        ada = users.create(tx, {"email": "ada@example.com", "display_name": "Ada"})
        in_acme = agents.create(tx, {**agent, "owner_id": ada.id})
    with app_db.transaction(tenant=globex.id) as tx:
        memberships.add(tx, ada.id)
        in_globex = agents.create(tx, {**agent, "owner_id": ada.id})
        (owner,) = [u for u in users.list(tx).items if u.id != ada.id]
        owners = agents.create(tx, {**agent, "owner_id": owner.id})
    with app_db.transaction(tenant=globex.id) as tx:
        memberships.remove(tx, ada.id, audit=Audit(owner.id))
        with pytest.raises(NotFound):
            agents.get(tx, in_globex.id)
        with pytest.raises(NotFound):
            users.get(tx, ada.id)
        assert agents.get(tx, owners.id) == owners
        (event,) = audit_events.list(tx, {"entity": "membership"}).items
        assert (event.action, event.entity_id) == ("membership.deleted", ada.id)
        with pytest.raises(NotFound):
            memberships.remove(tx, ada.id)
    with app_db.transaction(tenant=acme.id) as tx:
        assert agents.get(tx, in_acme.id) == in_acme
        assert users.get(tx, ada.id) == ada
        with pytest.raises(NotFound):  # Acme cannot remove Globex's owner, not its member
            memberships.remove(tx, owner.id)
    rows = superuser.execute(
        "SELECT tenant_id, count(*) FROM agents WHERE owner_id = %s GROUP BY 1", [ada.id]
    ).fetchall()
    assert rows == [(acme.id, 1)]


def test_an_operator_connection_creates_tenants_and_sees_them_all(conn: Any) -> None:
    """As the superuser (no policies, no tenant): a given or a new id; memberships are the
    default tenant's, as every tenant-owned row written without a tenant."""
    given = uuid.uuid4()
    made = tenants.create(conn, {"id": given, "name": "Given"})
    fresh = tenants.create(conn, {"name": "Fresh"})
    assert made.id == given and fresh.id not in (given, DEFAULT_TENANT)
    assert tenants.get(conn, fresh.id) == fresh
    assert tenants.count(conn) == 3
    assert {t.id for t in tenants.list(conn).items} == {DEFAULT_TENANT, given, fresh.id}
    assert tenants.rename(conn, given, "Renamed").name == "Renamed"
    ada = users.create(conn, {"email": "ada@example.com", "display_name": "Ada"})
    (member,) = memberships.list(conn)
    assert (member.tenant_id, member.user_id) == (DEFAULT_TENANT, ada.id)
    memberships.remove(conn, ada.id)
    assert memberships.list(conn) == []
    assert memberships.add(conn, ada.id).tenant_id == DEFAULT_TENANT
    with pytest.raises(InvalidReference):  # a bare connection: the call is its own transaction
        memberships.add(conn, uuid.uuid4())
