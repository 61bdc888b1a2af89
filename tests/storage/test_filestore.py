"""The files entity and the stage / record / promote / sweep protocol, on every back end.

Each crash point of the protocol is reproduced by stopping after a step (a
real killed writer is in test_crash.py): a committed row always finds its
bytes, and the sweep leaves storage and rows consistent. Every test runs
against the sync FileStore and the AsyncFileStore (tests/support/modes.py);
the async-only behaviour (streams, cancellation) is in test_async_filestore.py.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest

from tests.core.factories import make_execution, make_user
from tests.support.modes import Mode, Synced, both
from toolkit.errors import (
    Conflict,
    IntegrityError,
    InvalidInput,
    InvalidReference,
    NotFound,
    SourceFailed,
    Unavailable,
)
from toolkit.repositories import Audit
from toolkit.repositories.records import User
from toolkit.storage import LocalStorage, Storage
from toolkit.storage.keys import staging_key

from .conftest import leftovers

pytestmark = pytest.mark.usefixtures("mode")

filestore = both("toolkit.storage.filestore")
files = both("toolkit.storage.repository")
audit_events = both("toolkit.repositories.audit_events")
Database = Any  # a Database, or an AsyncDatabase used through sync calls
FileStore = Any

REPORT = b"# Report\n\nAll good.\n"
LATER = datetime.now(UTC) + timedelta(days=1)


@pytest.fixture
def store(storage: Storage, mode: Mode) -> Iterator[FileStore]:
    """A FileStore, or in an async run an AsyncFileStore over the same kind of Storage."""
    with filestore.FileStore(storage, max_bytes=10 << 20) as made:
        yield made


def backend_of(store: FileStore) -> Storage:
    """The back end under the store (an AsyncFileStore's ``storage`` is its async facade)."""
    storage = store.storage
    return getattr(storage, "sync", storage)  # type: ignore[no-any-return]


def pool(db: Database) -> Any:
    """The pool to hand to the store: an async run's AsyncDatabase itself, not its wrapper."""
    return db.target if isinstance(db, Synced) else db


@pytest.fixture
def owner(db: Database) -> User:
    with db.connection() as conn:
        return make_user(conn)


def objects(storage: Storage) -> list[str]:
    return [info.key for info in storage.list()]


def test_store_records_promotes_and_reads_back_verified(
    db: Database, store: FileStore, owner: User
) -> None:
    with db.connection() as conn:
        execution = make_execution(conn)
    stored = store.store(
        pool(db),
        io.BytesIO(REPORT),
        owner_id=owner.id,
        purpose="generated",
        original_name="../../report.md",
        claimed_type="application/pdf",
        execution_id=execution.id,
        audit=Audit(actor_id=owner.id),
    )
    assert stored.status == "stored"
    assert stored.stored_at is not None
    assert stored.key == f"{owner.id}/generated/{stored.id}"
    assert stored.original_name == "report.md"
    assert (stored.content_type, stored.claimed_type) == ("text/markdown", "application/pdf")
    assert stored.sha256 == hashlib.sha256(REPORT).hexdigest()
    assert stored.size == len(REPORT)
    assert stored.execution_id == execution.id
    assert objects(backend_of(store)) == [stored.key]
    assert store.read(stored) == REPORT
    with store.open(stored) as stream:
        assert stream.read() == REPORT
    with db.connection() as conn:
        assert files.get(conn, stored.id) == stored
        page = files.list(conn, {"execution_id": execution.id})
        assert [f.id for f in page.items] == [stored.id]
        assert files.list(conn, {"owner_id": owner.id, "purpose": "attachment"}).items == []
        trail = audit_events.list(conn, {"actor_id": owner.id}).items
        assert [event.action for event in trail] == ["file.created"]
    headers = store.headers(stored)
    assert headers["Content-Disposition"].startswith('attachment; filename="report.md"')
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Type"] == "text/markdown"
    assert headers["Content-Length"] == str(len(REPORT))
    assert store.url(stored)


def test_a_row_links_to_a_session_and_bad_links_are_refused(
    db: Database, store: FileStore, owner: User
) -> None:
    with pytest.raises(InvalidReference):
        store.store(pool(db), b"x", owner_id=owner.id, purpose="attachment", execution_id=uuid4())
    with pytest.raises(InvalidInput, match="execution_id must be a UUID"):
        store.store(pool(db), b"x", owner_id=owner.id, purpose="attachment", execution_id="nope")
    with pytest.raises(InvalidInput, match="purpose must be one of"):
        store.store(pool(db), b"x", owner_id=owner.id, purpose="secret")
    # Every refused store left nothing behind: the staged bytes were discarded.
    assert objects(backend_of(store)) == []


def test_upload_limit_and_type_checks_apply(db: Database, store: FileStore, owner: User) -> None:
    with pytest.raises(InvalidInput, match="larger than the limit"):
        store.store(pool(db), b"a" * 2000, owner_id=owner.id, purpose="attachment", max_bytes=1000)
    with pytest.raises(InvalidInput, match="not allowed"):
        store.store(pool(db), b"\x7fELF\x00\x00", owner_id=owner.id, purpose="attachment")
    assert objects(backend_of(store)) == []
    with db.connection() as conn:
        assert files.list(conn).items == []


class GeneratorStream:
    """A caller's ``read(n)`` stream over a generator: what a request body reader looks like."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._buffer = b""

    def read(self, size: int = -1, /) -> bytes:
        while size < 0 or len(self._buffer) < size:
            piece = next(self._pieces, None)
            if piece is None:
                break
            self._buffer += piece
        cut = len(self._buffer) if size < 0 else size
        chunk, self._buffer = self._buffer[:cut], self._buffer[cut:]
        return chunk


def test_a_source_that_raises_mid_stream_is_source_failed_and_leaves_nothing(
    db: Database, store: FileStore, owner: User
) -> None:
    disconnect = ConnectionResetError("the client went away")

    def pieces() -> Iterator[bytes]:
        for _ in range(36):  # 9 MiB: past the first 8 MiB multipart part on S3
            yield b"plain text, line after line\n" * 9039
        raise disconnect

    with pytest.raises(SourceFailed, match="source raised ConnectionResetError") as raised:
        store.store(pool(db), GeneratorStream(pieces()), owner_id=owner.id, purpose="attachment")
    assert not isinstance(raised.value, Unavailable)  # not an outage to retry with backoff
    assert raised.value.original is disconnect
    assert raised.value.__cause__ is disconnect
    assert "went away" not in str(raised.value)  # the source's own text is not repeated
    assert leftovers(backend_of(store)) == []  # no object, temp file or multipart upload
    with db.connection() as conn:
        assert files.list(conn).items == []


def test_checksum_is_verified_on_read(db: Database, store: FileStore, owner: User) -> None:
    stored = store.store(pool(db), b"original bytes", owner_id=owner.id, purpose="attachment")
    backend_of(store).delete(stored.key)
    backend_of(store)._put(stored.key, b"tampered bytes", None, None, None)
    with pytest.raises(IntegrityError, match="does not match the recorded"):
        store.read(stored)
    with pytest.raises(IntegrityError), store.open(stored) as stream:
        stream.read()
    assert store.read(stored, verify=False) == b"tampered bytes"


def test_rolled_back_transaction_leaves_no_row_and_the_sweep_removes_the_bytes(
    db: Database, store: FileStore, owner: User
) -> None:
    staged = store.stage(b"never committed", owner_id=owner.id, purpose="attachment")
    with pytest.raises(RuntimeError), db.transaction() as tx:
        store.record(tx, staged)
        raise RuntimeError("the caller's transaction fails")
    assert objects(backend_of(store)) == [staged.staging_key]
    with db.connection() as conn:
        with pytest.raises(NotFound):
            store.promote(conn, staged)  # a late promote discards instead
        assert objects(backend_of(store)) == []
        staged = store.stage(b"crash before commit", owner_id=owner.id, purpose="attachment")
        assert store.sweep(conn).staged_without_row == []  # within the grace period: kept
        report = store.sweep(conn, grace_seconds=0, now=LATER)
        assert report.staged_without_row == [staged.staging_key]
    assert objects(backend_of(store)) == []


def test_crash_after_commit_before_promote(db: Database, store: FileStore, owner: User) -> None:
    staged = store.stage(REPORT, owner_id=owner.id, purpose="generated")
    with db.transaction() as tx:
        row = store.record(tx, staged)
    # ... the process dies here: the row is committed, the bytes are staged.
    assert row.status == "staged"
    assert store.read(row) == REPORT  # reads fall back to the staging key
    with pytest.raises(InvalidInput, match="not promoted yet"):
        store.url(row)
    with db.connection() as conn:
        assert store.sweep(conn).promoted == []  # too young
        report = store.sweep(conn, grace_seconds=0)
        assert report.promoted == [row.id]
        promoted = files.get(conn, row.id)
    assert promoted.status == "stored"
    assert objects(backend_of(store)) == [row.key]
    assert store.read(promoted) == REPORT


def test_crash_after_the_move_before_marking_stored(
    db: Database, store: FileStore, owner: User
) -> None:
    staged = store.stage(REPORT, owner_id=owner.id, purpose="generated")
    with db.transaction() as tx:
        row = store.record(tx, staged)
    backend_of(store)._move_internal(staged.staging_key, staged.key)  # internal: a staging key
    # ... dies before the UPDATE: the row says staged, the bytes are at the final key.
    assert store.read(row) == REPORT
    with db.connection() as conn:
        assert store.sweep(conn, grace_seconds=0).promoted == [row.id]
        assert files.get(conn, row.id).status == "stored"
    assert objects(backend_of(store)) == [row.key]


def test_crash_between_copy_and_delete_on_s3(db: Database, store: FileStore, owner: User) -> None:
    staged = store.stage(REPORT, owner_id=owner.id, purpose="generated")
    with db.transaction() as tx:
        row = store.record(tx, staged)
    backend_of(store)._put(staged.key, REPORT, None, None, None)  # copied, staging not yet deleted
    assert store.read(row) == REPORT
    with db.connection() as conn:
        promoted = store.promote(conn, staged)
    assert promoted.status == "stored"
    assert objects(backend_of(store)) == [row.key]


def test_promote_twice_is_harmless(db: Database, store: FileStore, owner: User) -> None:
    staged = store.stage(REPORT, owner_id=owner.id, purpose="generated")
    with db.transaction() as tx:
        store.record(tx, staged)
    with db.connection() as conn:
        first = store.promote(conn, staged)
        second = store.promote(conn, staged)
    assert first == second


def test_a_staged_row_whose_bytes_vanished_is_removed_by_the_sweep(
    db: Database, store: FileStore, owner: User
) -> None:
    staged = store.stage(REPORT, owner_id=owner.id, purpose="generated")
    with db.transaction() as tx:
        row = store.record(tx, staged)
    backend_of(store)._delete_internal(
        staged.staging_key
    )  # someone removed the bytes behind our back
    with db.connection() as conn:
        report = store.sweep(conn, grace_seconds=0)
        assert report.lost_rows == [row.id]
        with pytest.raises(NotFound):
            files.get(conn, row.id)


def test_delete_and_orphans(db: Database, store: FileStore, owner: User) -> None:
    kept = store.store(pool(db), b"kept", owner_id=owner.id, purpose="attachment")
    gone = store.store(pool(db), b"gone", owner_id=owner.id, purpose="attachment")
    store.delete(pool(db), gone.id)
    assert objects(backend_of(store)) == [kept.key]
    with pytest.raises(NotFound):
        store.delete(pool(db), gone.id)
    # A crash between deleting the row and the bytes leaves an orphan:
    orphan = store.store(pool(db), b"orphan", owner_id=owner.id, purpose="attachment")
    with db.connection() as conn:
        files.delete(conn, orphan.id)
    backend_of(store).put("unrelated/keep-me.txt", b"not a file row")
    with db.connection() as conn:
        assert store.sweep(conn).orphans == []
        report = store.sweep(conn, grace_seconds=0, now=LATER)
    assert report.orphans == [orphan.key]
    assert sorted(objects(backend_of(store))) == sorted([kept.key, "unrelated/keep-me.txt"])
    assert store.read(kept) == b"kept"


def test_verify_agrees_with_the_files_queries(database_url: str) -> None:
    import psycopg

    from toolkit.catalog import load_bindings
    from toolkit.db.verify import verify

    bindings = load_bindings()
    names = {binding.name for binding in bindings}
    assert {"files.create", "files.get", "files.list", "files.staged_before"} <= names
    with psycopg.connect(database_url, autocommit=True) as conn:
        problems = [p for p in verify(conn, bindings) if p.query.startswith("files.")]
    assert problems == []


def test_the_files_table_enforces_its_rules(db: Database, owner: User) -> None:
    good = {
        "id": uuid4(),
        "owner_id": owner.id,
        "purpose": "attachment",
        "key": f"{owner.id}/attachment/x",
        "original_name": None,
        "size": 1,
        "content_type": "text/plain",
        "claimed_type": None,
        "sha256": "a" * 64,
        "execution_id": None,
        "session_id": None,
    }
    with db.connection() as conn:
        files.create(conn, good)
        with pytest.raises(Conflict):
            files.create(conn, {**good, "id": uuid4()})  # the key is unique
        for bad in ({"purpose": "other"}, {"sha256": "XYZ"}, {"size": -1}):
            with pytest.raises(InvalidInput):
                files.create(conn, {**good, "id": uuid4(), "key": f"k{uuid4()}", **bad})
        execution = make_execution(conn)
        linked = files.create(
            conn, {**good, "id": uuid4(), "key": "linked", "execution_id": execution.id}
        )
        assert files.get(conn, linked.id).execution_id == execution.id


StorageFactory = Callable[[str], Storage]


def test_sweep_removes_partial_local_writes(
    db: Database, make_storage: StorageFactory, owner: User
) -> None:
    storage = make_storage("local")
    assert isinstance(storage, LocalStorage)
    store = filestore.FileStore(storage)
    partial = f"{storage.root}/_staging/.tmp-crashed"
    import os

    os.makedirs(os.path.dirname(partial), exist_ok=True)
    with open(partial, "wb") as handle:
        handle.write(b"half an upload")
    assert storage.list() == []  # never visible as an object
    with db.connection() as conn:
        assert store.sweep(conn).partial_uploads == []
        report = store.sweep(conn, grace_seconds=0, now=LATER)
    assert [key.rsplit("/", 1)[-1] for key in report.partial_uploads] == [".tmp-crashed"]
    assert not os.path.exists(partial)
    assert staging_key(uuid4(), tenant=None).startswith("_staging/")
