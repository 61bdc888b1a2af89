"""Storage keys start with the tenant, and the file store reads, writes and deletes only there.

Two tenants store files through one Storage (local disk, memory, moto's S3
server) as a LOGIN role in toolkit_app, so row-level security binds every
query: each key lives in its tenant's area (``t/<tenant>/``); a tenant
cannot reach another's file by id (its row is not visible: NotFound) nor
through a row of its own whose key the superuser rewrote to point at the
other's object (TenantMismatch before a byte is read or deleted); a
transaction of another tenant is refused; each tenant's sweep touches its
own area only. Single-workspace use (the superuser, no tenant) keeps the
layout it had before tenants. Every test runs against the sync FileStore
and the AsyncFileStore (tests/support/modes.py).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.core.factories import make_user
from tests.support.modes import Mode, both, execute
from toolkit.commands import storage as storage_commands
from toolkit.config import load_settings
from toolkit.errors import InvalidInput, NotFound, TenantMismatch, TenantRequired
from toolkit.repositories.records import User
from toolkit.storage import FileStore as SyncFileStore
from toolkit.storage import Storage, open_storage
from toolkit.storage.keys import file_key, staging_key
from toolkit.storage.protocol import SweepReport
from toolkit.tenants import DEFAULT_TENANT

from .test_filestore import LATER, backend_of, objects

pytestmark = pytest.mark.usefixtures("mode")

database = both("toolkit.db.database")
filestore = both("toolkit.storage.filestore")
files = both("toolkit.storage.repository")
Database = Any  # a Database, or an AsyncDatabase used through sync calls
FileStore = Any

TENANT_A = UUID("aaaaaaaa-0000-4000-8000-00000000000a")
TENANT_B = UUID("bbbbbbbb-0000-4000-8000-00000000000b")
A_BYTES = b"# A's report\n\nA's numbers.\n"
B_BYTES = b"# B's report\n\nB's numbers.\n"


@pytest.fixture(scope="session")
def app_url(storage_database_url: str) -> Iterator[str]:
    """The storage tests' database as a LOGIN member of toolkit_app (no BYPASSRLS, owns nothing)."""
    role = f"toolkit_storage_app_{os.getpid()}"
    with psycopg.connect(storage_database_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL(
                "DO $$ BEGIN CREATE ROLE {} LOGIN IN ROLE toolkit_app; "
                "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
            ).format(sql.Identifier(role))
        )
    yield make_conninfo(**(conninfo_to_dict(storage_database_url) | {"user": role}))
    with psycopg.connect(storage_database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture
def tenants(superuser: psycopg.Connection[Any]) -> None:
    """TENANT_A and TENANT_B exist (the superuser's files table was emptied for this test)."""
    for tenant, name in ((TENANT_A, "a"), (TENANT_B, "b")):
        superuser.execute(
            "INSERT INTO tenants (id, name) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING",
            [tenant, name],
        )


@pytest.fixture
def app_db(app_url: str, tenants: None, mode: Mode) -> Iterator[Database]:
    """A pool of the application role: a Database, or an AsyncDatabase through sync calls."""
    settings = load_settings(
        database_url=app_url, pool_min_size=0, pool_max_size=2, pool_timeout=5.0
    )
    with database.Database(settings) as made:
        yield made


@pytest.fixture
def store(storage: Storage, mode: Mode) -> Iterator[FileStore]:
    """A store of the default tenant, as an application builds it once."""
    with filestore.FileStore(storage, max_bytes=1 << 20) as made:
        yield made


def member_of(app_db: Database, tenant: UUID) -> User:
    """A user with a membership in ``tenant`` (files' owners are a tenant's members)."""
    with app_db.transaction(tenant=tenant) as tx:
        return make_user(tx)


def stored_pair(app_db: Database, store: FileStore) -> tuple[Any, Any]:
    """One file stored by TENANT_A and one by TENANT_B, through the same store's tenant views."""
    a_row = store.for_tenant(TENANT_A).store(
        app_db, A_BYTES, owner_id=member_of(app_db, TENANT_A).id, purpose="generated"
    )
    b_row = store.for_tenant(TENANT_B).store(
        app_db, B_BYTES, owner_id=member_of(app_db, TENANT_B).id, purpose="generated"
    )
    return a_row, b_row


def test_each_tenants_keys_start_with_its_tenant_and_read_back(
    app_db: Database, store: FileStore, superuser: psycopg.Connection[Any]
) -> None:
    store_a = store.for_tenant(TENANT_A)
    owner = member_of(app_db, TENANT_A)
    a_row = store_a.store(app_db, A_BYTES, owner_id=owner.id, purpose="generated")
    b_row = store.for_tenant(str(TENANT_B)).store(
        app_db, B_BYTES, owner_id=member_of(app_db, TENANT_B).id, purpose="attachment"
    )
    assert store_a.tenant == TENANT_A and store.tenant is None
    assert a_row.key == f"t/{TENANT_A}/{owner.id}/generated/{a_row.id}"
    assert b_row.key.startswith(f"t/{TENANT_B}/")
    assert sorted(objects(backend_of(store))) == sorted([a_row.key, b_row.key])
    assert store_a.read(a_row) == A_BYTES
    with store_a.open(a_row) as stream:
        assert stream.read() == A_BYTES
    assert store.for_tenant(TENANT_B).read(b_row) == B_BYTES
    assert store_a.url(a_row)
    # The row's tenant, which row-level security enforces, is the one its key names.
    rows = superuser.execute("SELECT tenant_id, key FROM files").fetchall()
    assert len(rows) == 2
    assert all(key.startswith(f"t/{tenant}/") for tenant, key in rows)
    with pytest.raises(InvalidInput, match="tenant must be a UUID"):
        store.for_tenant(None)


def test_a_tenant_cannot_reach_another_tenants_file_by_id(
    app_db: Database, store: FileStore
) -> None:
    a_row, b_row = stored_pair(app_db, store)
    store_a = store.for_tenant(TENANT_A)
    with app_db.connection(tenant=TENANT_A) as conn:
        with pytest.raises(NotFound):
            files.get(conn, b_row.id)
        assert files.list(conn).items == [a_row]
    with pytest.raises(NotFound):
        store_a.delete(app_db, b_row.id)
    with app_db.connection(tenant=TENANT_A) as conn, pytest.raises(NotFound):
        store_a.promote(conn, b_row)
    # B's file is whole.
    assert sorted(objects(backend_of(store))) == sorted([a_row.key, b_row.key])
    with app_db.connection(tenant=TENANT_B) as conn:
        assert files.get(conn, b_row.id) == b_row
    assert store.for_tenant(TENANT_B).read(b_row) == B_BYTES


def test_a_row_pointing_into_another_tenants_area_is_refused_before_any_byte(
    app_db: Database, store: FileStore, superuser: psycopg.Connection[Any]
) -> None:
    a_row, b_row = stored_pair(app_db, store)
    # The superuser swaps the two rows' keys (a forged or corrupted row on each side).
    with superuser.transaction():
        superuser.execute("UPDATE files SET key = 'moving' WHERE id = %s", [b_row.id])
        superuser.execute("UPDATE files SET key = %s WHERE id = %s", [b_row.key, a_row.id])
        superuser.execute("UPDATE files SET key = %s WHERE id = %s", [a_row.key, b_row.id])
    for tenant, row, other in ((TENANT_A, a_row, b_row), (TENANT_B, b_row, a_row)):
        tenant_store = store.for_tenant(tenant)
        with app_db.connection(tenant=tenant) as conn:
            forged = files.get(conn, row.id)
        assert forged.key == other.key
        calls = {
            "read": lambda s=tenant_store, f=forged: s.read(f, verify=False),
            "open": lambda s=tenant_store, f=forged: s.open(f, verify=False),
            "url": lambda s=tenant_store, f=forged: s.url(f),
            "delete": lambda s=tenant_store, f=forged: s.delete(app_db, f.id),
        }
        for name, call in calls.items():
            with pytest.raises(
                TenantMismatch, match="not one of this tenant's file keys"
            ) as caught:
                call()
                pytest.fail(f"{name} followed a key into another tenant's area")
            message = str(caught.value)
            assert str(row.id) in message and other.key not in message
            assert str(TENANT_A) not in message and str(TENANT_B) not in message
    # Nothing was deleted: both objects, and both rows (the refused delete rolled back).
    assert sorted(objects(backend_of(store))) == sorted([a_row.key, b_row.key])
    assert superuser.execute("SELECT count(*) FROM files").fetchone() == (2,)


def test_a_transaction_or_a_staged_file_of_another_tenant_is_refused(
    app_db: Database, store: FileStore
) -> None:
    store_a, store_b = store.for_tenant(TENANT_A), store.for_tenant(TENANT_B)
    staged = store_a.stage(A_BYTES, owner_id=member_of(app_db, TENANT_A).id, purpose="attachment")
    assert staged.staging_key == f"t/{TENANT_A}/_staging/{staged.id}"
    with app_db.transaction(tenant=TENANT_B) as tx:
        with pytest.raises(
            TenantMismatch, match="the transaction's tenant is not the file store's"
        ):
            store_a.record(tx, staged)
        with pytest.raises(TenantMismatch, match="staged for another tenant"):
            store_b.record(tx, staged)
    with app_db.connection() as bare:  # no tenant: the default tenant's, not A's
        with pytest.raises(TenantMismatch, match="the transaction's tenant"):
            store_a.promote(bare, staged)
        with pytest.raises(TenantMismatch, match="the transaction's tenant"):
            store_a.sweep(bare)
    with app_db.transaction(tenant=TENANT_A) as tx:
        recorded = store_a.record(tx, staged)
    with app_db.connection(tenant=TENANT_A) as conn:
        assert store_a.promote(conn, recorded).key == staged.key
    assert store_a.read(recorded) == A_BYTES


def test_each_tenants_sweep_touches_its_own_area_only(
    app_db: Database, db: Database, store: FileStore, superuser: psycopg.Connection[Any]
) -> None:
    store_a, store_b = store.for_tenant(TENANT_A), store.for_tenant(TENANT_B)
    owner_a, owner_b = member_of(app_db, TENANT_A), member_of(app_db, TENANT_B)
    backend = backend_of(store)
    never_recorded = store_a.stage(b"rolled back", owner_id=owner_a.id, purpose="attachment")
    kept = store_b.store(app_db, B_BYTES, owner_id=owner_b.id, purpose="generated")
    orphan = file_key(owner_b.id, "generated", uuid4(), tenant=TENANT_B)
    backend.put(orphan, b"row deleted, bytes not yet")
    # A staged row of A's whose key was rewritten to point into B's area.
    misplaced = store_a.stage(b"must not land in B", owner_id=owner_a.id, purpose="attachment")
    with app_db.transaction(tenant=TENANT_A) as tx:
        store_a.record(tx, misplaced)
    planted = file_key(owner_b.id, "attachment", misplaced.id, tenant=TENANT_B)
    superuser.execute("UPDATE files SET key = %s WHERE id = %s", [planted, misplaced.id])
    everything = sorted(objects(backend))
    # The default tenant's sweep (the superuser, no tenant) and B's leave A's area alone...
    with db.connection() as conn:
        assert store.sweep(conn, grace_seconds=0, now=LATER) == SweepReport()
    with app_db.connection(tenant=TENANT_B) as conn:
        report_b = store_b.sweep(conn, grace_seconds=0, now=LATER)
    assert report_b.orphans == [orphan]
    assert report_b.staged_without_row == report_b.misplaced_rows == []
    assert sorted(objects(backend)) == sorted(set(everything) - {orphan})
    # ...and A's sweep leaves B's: it reports the misplaced row and moves nothing into B's area.
    with app_db.connection(tenant=TENANT_A) as conn:
        report_a = store_a.sweep(conn, grace_seconds=0, now=LATER)
    assert report_a.staged_without_row == [never_recorded.staging_key]
    assert report_a.misplaced_rows == [misplaced.id]
    assert report_a.promoted == report_a.orphans == report_a.lost_rows == []
    assert not backend.exists(planted)
    assert backend._exists_internal(misplaced.staging_key)
    # Promoting it by hand is refused too: A's bytes never land in B's area.
    with (
        app_db.connection(tenant=TENANT_A) as conn,
        pytest.raises(TenantMismatch, match="not one of this tenant's file keys"),
    ):
        store_a.promote(conn, misplaced)
    assert not backend.exists(planted)
    assert backend._exists_internal(misplaced.staging_key)
    assert store_b.read(kept) == B_BYTES


def test_single_workspace_use_keeps_its_layout_and_stays_out_of_tenants_areas(
    app_db: Database, db: Database, store: FileStore
) -> None:
    with db.connection() as conn:
        owner = make_user(conn)
    row = store.store(db, b"single workspace\n", owner_id=owner.id, purpose="generated")
    assert row.key == f"{owner.id}/generated/{row.id}"
    assert objects(backend_of(store)) == [row.key]
    assert store.read(row) == b"single workspace\n"
    # The default tenant is a tenant like the others to the application role.
    default = store.for_tenant(DEFAULT_TENANT)
    with app_db.connection(tenant=DEFAULT_TENANT) as conn:
        assert default.read(files.get(conn, row.id)) == b"single workspace\n"
    a_row, _ = stored_pair(app_db, store)
    with pytest.raises(TenantMismatch):
        store.read(a_row)
    with pytest.raises(TenantMismatch):
        store.for_tenant(TENANT_A).read(row)
    # The application role without a tenant is refused by the database, not shown nothing.
    with pytest.raises(TenantRequired):
        store.store(app_db, b"x", owner_id=owner.id, purpose="generated")
    assert default.delete(app_db, row.id) == row
    assert not backend_of(store).exists(row.key)


def test_the_door_knows_each_transactions_tenant_and_forgets_it(app_db: Database) -> None:
    with app_db.transaction(tenant=TENANT_A) as tx:
        assert database.tenant_of(tx) == TENANT_A
    with app_db.transaction() as tx:
        assert database.tenant_of(tx) is None
    with app_db.connection() as conn:
        with database.transaction_on(conn, tenant=TENANT_B):
            assert database.tenant_of(conn) == TENANT_B
        assert database.tenant_of(conn) is None
        # A transaction begun other than through the door carries no tenant, nor B's.
        execute(conn, "BEGIN")
        assert database.tenant_of(conn) is None
        execute(conn, "ROLLBACK")


@pytest.mark.parametrize("mode", ["sync"], indirect=True)  # the command is sync
def test_the_sweep_command_sweeps_one_tenants_area(
    app_url: str, tenants: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"file://{tmp_path}/files"
    with SyncFileStore(open_storage(url), tenant=TENANT_A) as sync_store:
        staged = sync_store.stage(b"never recorded", owner_id=uuid4(), purpose="generated")
        parser = argparse.ArgumentParser()
        storage_commands.register(parser.add_subparsers(dest="command"))
        common = ["--database-url", app_url, "--storage-url", url, "--grace-seconds", "0"]
        default = parser.parse_args(["storage", "sweep", *common])
        with pytest.raises(TenantRequired):  # the default tenant's rows need a tenant here
            default.handler(default)
        tenant_a = parser.parse_args(["storage", "sweep", "--tenant", str(TENANT_A), *common])
        assert tenant_a.handler(tenant_a) == 0
        assert "1 staged object(s) without a row removed" in capsys.readouterr().out
        assert not sync_store.storage._exists_internal(staged.staging_key)
        assert staging_key(staged.id, tenant=TENANT_A) == staged.staging_key
