"""Audit anchors: the chain checked in Python against heads stored outside the database.

Each attack is made by a superuser with the append-only trigger disabled,
as an owner could: rewrite a row and re-chain every later hash with the
database's own function, delete the newest rows, replace the hash function.
The database's own check (``audit_events.verify_chain``) passes after each;
the anchors catch each and name it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from tests.conftest import ROOT, url_as
from tests.storage.conftest import s3_admin, s3_endpoint  # noqa: F401 - fixtures
from toolkit.audit_anchors import (
    ANCHOR_PREFIX,
    Anchor,
    FindingKind,
    anchor_keys,
    anchor_prefix,
    read_anchor,
    store_anchor,
    verify,
    write_anchor,
)
from toolkit.config import load_settings
from toolkit.db import Database
from toolkit.db.tenancy import DEFAULT_TENANT
from toolkit.errors import Conflict, IntegrityError
from toolkit.repositories import audit_events
from toolkit.storage import LocalStorage, S3Storage, Storage

# Values whose jsonb text form differs from Python's json.dumps: key order, spacing,
# numbers kept as written, escapes, non-ASCII text.
ODD_DETAILS: list[Any] = [
    {"b": 1, "a": [1, 2.50, {"zz": None, "y": True}]},
    {"n": 0.0000001, "big": 123456789012345678901234567890, "neg": -0.0},
    {"text": 'quote " backslash \\ tab \t newline \n bell \u0007', "ü": "日本 ✓ 😀"},
    {},
    {"nested": {"deeper": {"deepest": [[], {}, ""]}}},
    {"e": 1e300},
]


def _record_events(conn: Any, count: int) -> list[Any]:
    actor = uuid.uuid4()
    return [
        audit_events.record(
            conn,
            {
                "action": "thing.happened",
                "entity": "thing",
                "entity_id": uuid.uuid4() if n % 2 else None,
                "actor_id": actor if n % 3 else None,
                "details": ODD_DETAILS[n % len(ODD_DETAILS)],
            },
        )
        for n in range(count)
    ]


def _tamper(superuser: Any) -> None:
    superuser.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update")


def _rechain(superuser: Any, from_seq: int, tenant: UUID = DEFAULT_TENANT) -> None:
    """Recompute prev_hash and hash of every row of ``tenant``'s chain from ``from_seq`` on with
    the database's function."""
    (last,) = superuser.execute(
        "SELECT max(seq) FROM audit_events WHERE tenant_id = %s", [tenant]
    ).fetchone()
    where = {"seq": 0, "tenant": tenant}
    for seq in range(from_seq, last + 1):
        where["seq"] = seq
        superuser.execute(
            "UPDATE audit_events SET prev_hash = coalesce((SELECT hash FROM audit_events "
            "WHERE tenant_id = %(tenant)s AND seq = %(seq)s - 1), '\\x'::bytea) "
            "WHERE tenant_id = %(tenant)s AND seq = %(seq)s",
            where,
        )
        superuser.execute(
            "UPDATE audit_events SET hash = audit_event_hash("
            "prev_hash, seq, id, actor_id, action, entity, entity_id, details, created_at) "
            "WHERE tenant_id = %(tenant)s AND seq = %(seq)s",
            where,
        )


@pytest.fixture
def anchors(tmp_path: Path) -> Storage:
    return LocalStorage(tmp_path / "anchors")


def test_an_intact_chain_verifies_against_its_anchor(conn, anchors) -> None:
    _record_events(conn, 12)
    result = write_anchor(conn, anchors)
    assert result is not None
    assert result.protection == "create-only"
    assert result.anchor.sequence == 12
    assert result.anchor.key.startswith(ANCHOR_PREFIX)
    assert result.anchor.row_digests and len(result.anchor.row_digests) == 12
    _record_events(conn, 3)
    second = write_anchor(conn, anchors)
    assert second is not None
    # The second anchor carries digests of the rows since the first only.
    assert (second.anchor.digests_from, len(second.anchor.row_digests)) == (13, 3)
    report = verify(conn, anchors)
    assert report.ok, report.findings
    assert (report.rows_checked, report.head_sequence, report.anchors_checked) == (15, 15, 2)
    assert anchor_keys(anchors) == [result.anchor.key, second.anchor.key]


def test_an_empty_chain_writes_no_anchor_and_an_unanchored_chain_fails(conn, anchors) -> None:
    assert write_anchor(conn, anchors) is None
    _record_events(conn, 2)
    report = verify(conn, anchors)
    assert report.kinds() == {FindingKind.UNANCHORED}


def test_a_rewritten_middle_row_rechained_is_named(conn, superuser, anchors) -> None:
    events = _record_events(conn, 8)
    assert write_anchor(conn, anchors) is not None
    _tamper(superuser)
    superuser.execute(
        "UPDATE audit_events SET details = '{\"n\": 99}' WHERE id = %s", [events[4].id]
    )
    _rechain(superuser, events[4].seq)
    # The database's own check is fooled: every hash agrees with its function.
    assert audit_events.verify_chain(conn).ok
    report = verify(conn, anchors)
    assert report.kinds() == {FindingKind.REWRITTEN}
    finding = report.first(FindingKind.REWRITTEN)
    assert finding is not None and finding.sequence == events[4].seq == 5
    assert "row 5 was rewritten" in finding.message
    # And no new anchor is written over the rewritten chain (anchoring checks from the
    # previous anchor's row on, so it names that row; verify names the first one).
    with pytest.raises(IntegrityError, match="refusing to anchor: rewritten at seq 8"):
        write_anchor(conn, anchors)
    assert len(anchor_keys(anchors)) == 1


def test_deleted_newest_rows_are_a_truncated_tail(conn, superuser, anchors) -> None:
    _record_events(conn, 7)
    assert write_anchor(conn, anchors) is not None
    _tamper(superuser)
    superuser.execute("DELETE FROM audit_events WHERE seq > 4")
    assert audit_events.verify_chain(conn).ok
    report = verify(conn, anchors)
    assert report.kinds() == {FindingKind.TRUNCATED}
    finding = report.first(FindingKind.TRUNCATED)
    assert finding is not None and finding.sequence == 5
    assert "rows 5..7 were deleted" in finding.message
    with pytest.raises(IntegrityError, match="truncated"):
        write_anchor(conn, anchors)


def test_a_replaced_hash_function_is_named(conn, superuser, anchors) -> None:
    _record_events(conn, 5)
    assert write_anchor(conn, anchors) is not None
    _tamper(superuser)
    superuser.execute(
        """
        CREATE OR REPLACE FUNCTION audit_event_hash(
            prev_hash bytea, seq bigint, id uuid, actor_id uuid, action text,
            entity text, entity_id uuid, details jsonb, created_at timestamptz
        ) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
            SELECT sha256(prev_hash || convert_to(seq::text || action, 'UTF8'))
        $$
        """
    )
    _rechain(superuser, 1)
    assert audit_events.verify_chain(conn).ok
    report = verify(conn, anchors)
    replaced = report.first(FindingKind.HASH_FUNCTION_REPLACED)
    assert replaced is not None and replaced.sequence == 1
    assert "5 row(s) from seq 1" in replaced.message
    # The stored hashes differ from the anchored ones too.
    assert FindingKind.REWRITTEN in report.kinds()
    assert FindingKind.EDITED not in report.kinds()


def test_a_row_edited_in_place_without_rechaining_is_edited_not_replaced(
    conn, superuser, anchors
) -> None:
    events = _record_events(conn, 4)
    assert write_anchor(conn, anchors) is not None
    _tamper(superuser)
    superuser.execute(
        "UPDATE audit_events SET action = 'thing.hidden' WHERE id = %s", [events[1].id]
    )
    report = verify(conn, anchors)
    assert report.kinds() == {FindingKind.EDITED}
    edited = report.first(FindingKind.EDITED)
    assert edited is not None and edited.sequence == 2


def test_the_anchor_store_is_create_only(conn, anchors) -> None:
    _record_events(conn, 3)
    result = write_anchor(conn, anchors)
    assert result is not None
    before = anchors.get(result.anchor.key)
    forged = type(result.anchor)(**{**result.anchor.__dict__, "hash": "0" * 64})
    with pytest.raises(Conflict, match="already exists"):
        store_anchor(anchors, forged, key=result.anchor.key)
    assert anchors.get(result.anchor.key) == before
    assert read_anchor(anchors, result.anchor.key).hash == result.anchor.hash


def test_a_forged_anchor_added_to_the_store_is_reported(conn, anchors) -> None:
    _record_events(conn, 3)
    result = write_anchor(conn, anchors)
    assert result is not None
    later = result.anchor.anchored_at + timedelta(seconds=1)
    forged = type(result.anchor)(
        **{**result.anchor.__dict__, "hash": "ab" * 32, "key": "", "anchored_at": later}
    )
    store_anchor(anchors, forged)
    anchors.put(f"{ANCHOR_PREFIX}garbage.json", b"{not json", allowed_types=None)
    report = verify(conn, anchors)
    assert report.kinds() == {FindingKind.REWRITTEN, FindingKind.BAD_ANCHOR}


def test_on_s3_with_object_lock_anchors_get_retention(conn, s3_endpoint, s3_admin) -> None:  # noqa: F811
    _record_events(conn, 3)
    locked, plain = f"lock-{uuid.uuid4().hex[:12]}", f"plain-{uuid.uuid4().hex[:12]}"
    s3_admin.create_bucket(Bucket=locked, ObjectLockEnabledForBucket=True)
    s3_admin.create_bucket(Bucket=plain)
    with S3Storage(locked, "audit", endpoint_url=s3_endpoint, region="us-east-1") as storage:
        result = write_anchor(conn, storage, retention_days=2, retention_mode="GOVERNANCE")
        assert result is not None and result.protection.startswith("GOVERNANCE retention until")
        head = s3_admin.head_object(Bucket=locked, Key=f"audit/{result.anchor.key}")
        assert head["ObjectLockMode"] == "GOVERNANCE"
        # The locked version cannot be deleted without bypassing governance.
        with pytest.raises(s3_admin.exceptions.ClientError, match="AccessDenied"):
            s3_admin.delete_object(
                Bucket=locked, Key=f"audit/{result.anchor.key}", VersionId=head["VersionId"]
            )
        assert verify(conn, storage).ok
    with S3Storage(plain, "audit", endpoint_url=s3_endpoint, region="us-east-1") as storage:
        result = write_anchor(conn, storage)
        assert result is not None and result.protection.startswith("create-only")
        with pytest.raises(Conflict):
            store_anchor(storage, result.anchor, key=result.anchor.key)


def _toolkit(
    *args: str, database_url: str, anchor_folder: Path
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TOOLKIT_AUDIT_ANCHOR_URL": f"file://{anchor_folder}",
        "TOOLKIT_STORAGE_URL": f"file://{anchor_folder.parent / 'files'}",
    }
    return subprocess.run(
        [sys.executable, "-m", "toolkit.cli", "audit", *args, "--database-url", database_url],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_audit_commands_exit_0_when_intact_and_1_with_findings(
    conn, superuser, database_url, tmp_path
) -> None:
    folder = tmp_path / "anchor-store"
    _record_events(conn, 4)
    anchored = _toolkit("anchor", database_url=database_url, anchor_folder=folder)
    assert anchored.returncode == 0, anchored.stderr
    assert "audit anchor: seq 4 hash" in anchored.stdout and "create-only" in anchored.stdout
    assert len(list((folder / "audit-anchors").glob("*.json"))) == 1
    intact = _toolkit("verify", database_url=database_url, anchor_folder=folder)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "4 rows recomputed and linked; 1 anchor(s) agree" in intact.stdout
    _tamper(superuser)
    superuser.execute("DELETE FROM audit_events WHERE seq = 4")
    broken = _toolkit("verify", database_url=database_url, anchor_folder=folder)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "truncated at seq 4" in broken.stdout
    refused = _toolkit("anchor", database_url=database_url, anchor_folder=folder)
    assert refused.returncode == 1  # a runtime finding, not a usage error
    assert "refusing to anchor" in refused.stderr


def test_a_bad_anchor_url_is_named_as_such(database_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "toolkit.cli", "audit", "verify", "--database-url", database_url],
        env={**os.environ, "TOOLKIT_AUDIT_ANCHOR_URL": "ftp://anchors"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().endswith("use file://, memory://, s3:// or pyfs:")
    assert "TOOLKIT_AUDIT_ANCHOR_URL: unsupported scheme" in done.stderr


def test_verify_inside_a_transaction_survives_a_hash_function_that_fails(
    db, conn, superuser, anchors
) -> None:
    # The optional consult of the database's audit_event_hash runs under a
    # savepoint inside the caller's transaction: its failure must not abort it.
    events = _record_events(conn, 3)
    assert write_anchor(conn, anchors) is not None
    _tamper(superuser)
    superuser.execute(
        "UPDATE audit_events SET action = 'thing.hidden' WHERE id = %s", [events[0].id]
    )
    superuser.execute(
        """
        CREATE OR REPLACE FUNCTION audit_event_hash(
            prev_hash bytea, seq bigint, id uuid, actor_id uuid, action text,
            entity text, entity_id uuid, details jsonb, created_at timestamptz
        ) RETURNS bytea LANGUAGE plpgsql IMMUTABLE AS $$
            BEGIN RAISE EXCEPTION 'no hashing today'; END $$
        """
    )
    with db.transaction() as tx:
        report = verify(tx, anchors)
        edited = report.first(FindingKind.EDITED)
        assert edited is not None and "could not be called" in edited.message
        assert audit_events.count(tx) == 3  # the transaction is still usable


# -- one chain, and one set of anchors, per tenant ----------------------------------

TENANT_A = UUID("aaaaaaaa-0000-4000-8000-0000000000a1")
TENANT_B = UUID("bbbbbbbb-0000-4000-8000-0000000000b1")


@pytest.fixture
def app_url(database_url: str, make_role: Callable[..., str], superuser: Any) -> str:
    """This test's database as a LOGIN role in toolkit_app; tenants A and B exist."""
    for tenant in (TENANT_A, TENANT_B):
        superuser.execute("INSERT INTO tenants (id, name) VALUES (%s, 'anchored')", [tenant])
    return url_as(database_url, make_role("LOGIN"))


@pytest.fixture
def app_db(app_url: str) -> Iterator[Database]:
    settings = load_settings(database_url=app_url, pool_min_size=0, pool_max_size=2)
    with Database(settings) as database:
        yield database


def test_each_tenant_anchors_and_verifies_its_own_chain(
    conn, superuser: psycopg.Connection[Any], app_db: Database, anchors: Storage
) -> None:
    _record_events(conn, 2)  # the default tenant's chain, anchored in the same store
    default = write_anchor(conn, anchors)
    assert default is not None and default.anchor.key.startswith(ANCHOR_PREFIX)
    results = {}
    for tenant in (TENANT_A, TENANT_B):
        with app_db.transaction(tenant=tenant) as tx:
            _record_events(tx, 5)
            results[tenant] = write_anchor(tx, anchors)  # both at seq 5: no Conflict
    for tenant, result in results.items():
        assert result is not None and result.anchor.sequence == 5
        assert result.anchor.key.startswith(f"t/{tenant}/audit-anchors/")
        assert anchor_keys(anchors, tenant) == [result.anchor.key]
        with app_db.transaction(tenant=tenant) as tx:
            report = verify(tx, anchors)
        assert report.ok, report.findings
        assert (report.rows_checked, report.anchors_checked) == (5, 1)
    assert anchor_keys(anchors) == [default.anchor.key]
    assert verify(conn, anchors).ok
    # Tenant A's row 3 rewritten and its chain re-hashed: only A's verify fails.
    _tamper(superuser)
    superuser.execute(
        "UPDATE audit_events SET details = '{\"n\": 99}' WHERE tenant_id = %s AND seq = 3",
        [TENANT_A],
    )
    _rechain(superuser, 3, TENANT_A)
    with app_db.transaction(tenant=TENANT_A) as tx:
        broken = verify(tx, anchors)
    rewritten = broken.first(FindingKind.REWRITTEN)
    assert broken.kinds() == {FindingKind.REWRITTEN}
    assert rewritten is not None and rewritten.sequence == 3
    with app_db.transaction(tenant=TENANT_B) as tx:
        assert verify(tx, anchors).ok
    assert verify(conn, anchors).ok


def test_an_anchor_written_before_tenancy_still_vouches_for_the_default_chain(
    conn, superuser: psycopg.Connection[Any], anchors: Storage
) -> None:
    _record_events(conn, 4)
    seq, digest, created = superuser.execute(
        "SELECT seq, hash, created_at FROM audit_events WHERE tenant_id = %s "
        "ORDER BY seq DESC LIMIT 1",
        [DEFAULT_TENANT],
    ).fetchone()
    old = Anchor(seq, bytes(digest).hex(), created, created, seq)
    old_key = f"audit-anchors/{seq:020d}-20240101T000000000000Z.json"  # the layout before 0009
    anchors.put(old_key, old.to_json(), allowed_types=None)
    report = verify(conn, anchors)
    assert report.ok and report.anchors_checked == 1, report.findings
    assert anchor_prefix(None) == anchor_prefix(DEFAULT_TENANT) == "audit-anchors/"
    _record_events(conn, 2)
    later = write_anchor(conn, anchors)  # extends the old anchor, next to it
    assert later is not None and later.anchor.key.startswith("audit-anchors/0000")
    assert anchor_keys(anchors) == [old_key, later.anchor.key]
    _tamper(superuser)
    superuser.execute(
        "UPDATE audit_events SET action = 'thing.hidden' WHERE tenant_id = %s AND seq = 4",
        [DEFAULT_TENANT],
    )
    _rechain(superuser, 4)
    broken = verify(conn, anchors)
    assert broken.kinds() == {FindingKind.REWRITTEN}
    assert any(old_key in str(finding) for finding in broken.findings), broken.findings


def test_the_audit_commands_take_a_tenant_and_refuse_one_as_a_superuser(
    superuser: psycopg.Connection[Any],
    app_db: Database,
    app_url: str,
    database_url: str,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "anchor-store"
    for tenant in (TENANT_A, TENANT_B):
        with app_db.transaction(tenant=tenant) as tx:
            _record_events(tx, 3)
        where = {"database_url": app_url, "anchor_folder": folder}
        anchored = _toolkit("anchor", "--tenant", str(tenant), **where)
        assert anchored.returncode == 0, anchored.stderr
        assert "seq 3 hash" in anchored.stdout and f"t/{tenant}/audit-anchors/" in anchored.stdout
        intact = _toolkit("verify", "--tenant", str(tenant), **where)
        assert intact.returncode == 0, intact.stdout + intact.stderr
        assert "3 rows recomputed and linked; 1 anchor(s) agree" in intact.stdout
    refused = _toolkit(
        "verify", "--tenant", str(TENANT_A), database_url=database_url, anchor_folder=folder
    )
    assert refused.returncode != 0 and "tenant-scoped work refused" in refused.stderr
    assert "a superuser" in refused.stderr
