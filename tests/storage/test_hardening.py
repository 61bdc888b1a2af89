"""Storage an attacker with a foothold in the folder cannot turn (issue 13, item 4).

* the local back end walks every key segment by descriptor with
  ``O_NOFOLLOW``: a symlink on the path — planted before the call or swapped
  in while calls run — is refused, and nothing outside the root is read,
  written, moved or deleted;
* a FIFO, socket or device at a key is refused unread, at once;
* ``_staging/...`` keys are the toolkit's: every public method refuses them;
* active content (HTML, SVG, XML, JavaScript) is never served as itself nor
  inline, whatever the row or the caller says;
* on a case-insensitive folder the sweep neither misses an orphan nor takes a
  stored file for one because the folder's case differs from the row's key.
"""

from __future__ import annotations

import ctypes
import os
import posixpath
import socket
import stat
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import psycopg
import pytest

from tests.core.factories import make_user
from toolkit.db import Database
from toolkit.errors import Conflict, IntegrityError, InvalidInput
from toolkit.repositories.records import User
from toolkit.storage import FileStore, LocalStorage, MemoryStorage, Storage
from toolkit.storage import repository as files
from toolkit.storage.keys import staging_key, staging_prefix

from .conftest import leftovers

StorageFactory = Callable[[str], Storage]
LATER = datetime.now(UTC) + timedelta(days=1)
SECRET = b"outside the root: must never be read"
HTML = b"<!doctype html><html><body><script>alert(document.cookie)</script></body></html>\n"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>\n'


def snapshot(folder: Path) -> dict[str, tuple[bytes | None, float]]:
    """Every entry under ``folder`` with its bytes (files) and modification time."""
    found: dict[str, tuple[bytes | None, float]] = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        body = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
        found[str(path.relative_to(folder))] = (body, info.st_mtime)
    return found


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the root holding a secret and a subfolder an attacker aims at."""
    folder = tmp_path / "outside"
    (folder / "sub").mkdir(parents=True)
    (folder / "secret.txt").write_bytes(SECRET)
    (folder / "sub" / "secret.txt").write_bytes(SECRET)
    return folder


@pytest.fixture
def local(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "root")


# -- symlinks -----------------------------------------------------------------------------


def test_a_folder_swapped_for_a_symlink_before_the_call_is_refused_by_every_method(
    local: LocalStorage, outside: Path
) -> None:
    local.put("a/sub/own.txt", b"inside")
    local.put("b/own.txt", b"inside too")
    before = snapshot(outside)
    folder = Path(local.root) / "a"
    # The attacker replaces a checked folder with a link to outside the root.
    os.rename(folder, Path(local.root) / "a-moved")
    os.symlink(outside, folder)

    refused = {
        "get": lambda: local.get("a/secret.txt"),
        "get nested": lambda: local.get("a/sub/secret.txt"),
        "open": lambda: local.open("a/secret.txt"),
        "info": lambda: local.info("a/secret.txt"),
        "exists": lambda: local.exists("a/secret.txt"),
        "put": lambda: local.put("a/planted.txt", b"x"),
        "put nested": lambda: local.put("a/sub/planted.txt", b"x"),
        "delete": lambda: local.delete("a/secret.txt"),
        "move from": lambda: local.move("a/secret.txt", "b/stolen.txt"),
        "move to": lambda: local.move("b/own.txt", "a/sub/own2.txt"),
    }
    for name, call in refused.items():
        with pytest.raises(InvalidInput, match="'a' is a symbolic link") as caught:
            call()
        assert caught.value.field == "key", name
    assert local.list("a/") == []  # a linked folder holds no objects
    assert [info.key for info in local.list()] == ["a-moved/sub/own.txt", "b/own.txt"]
    assert local.get("b/own.txt") == b"inside too"
    assert snapshot(outside) == before


def test_a_symlink_as_the_last_segment_is_never_followed(
    local: LocalStorage, outside: Path
) -> None:
    local.put("k/real.txt", b"real")
    before = snapshot(outside)
    link = Path(local.root) / "k" / "link.txt"
    os.symlink(outside / "secret.txt", link)

    for call in (
        lambda: local.get("k/link.txt"),
        lambda: local.info("k/link.txt"),
        lambda: local.move("k/link.txt", "k/moved.txt"),
    ):
        with pytest.raises(InvalidInput, match=r"'link\.txt' is a symbolic link"):
            call()
    with pytest.raises(Conflict):  # create-only: the planted name is taken, not written through
        local.put("k/link.txt", b"overwrite the target?")
    assert [info.key for info in local.list("k/")] == ["k/real.txt"]
    assert local.delete("k/link.txt") is True  # removes the link itself, not its target
    assert not link.is_symlink()
    assert snapshot(outside) == before


def exchange(first: Path, second: Path) -> None:
    """Swap two names atomically (renameat2 RENAME_EXCHANGE): each always names something."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_cwd, rename_exchange = -100, 2
    if libc.renameat2(at_cwd, bytes(first), at_cwd, bytes(second), rename_exchange) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def test_a_folder_flipping_to_a_symlink_while_calls_run_never_lets_one_escape(
    local: LocalStorage, outside: Path
) -> None:
    # The race the old resolve-then-open check lost: between the check and the open,
    # "race" turns into a link to outside (and back), thousands of times a second.
    local.put("race/secret.txt", b"inside")
    before = snapshot(outside)
    folder = Path(local.root) / "race"
    link = Path(local.root) / "link"
    os.symlink(outside, link)
    try:
        exchange(folder, link)
        exchange(folder, link)
    except OSError as exc:
        pytest.skip(f"renameat2(RENAME_EXCHANGE) unavailable here: {exc}")
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            exchange(folder, link)

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    outcomes: dict[str, int] = {}

    def count(outcome: str) -> None:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    deadline = time.monotonic() + 2.0
    try:
        while time.monotonic() < deadline:
            try:
                assert local.get("race/secret.txt") == b"inside", "read through the link"
                count("read inside")
            except InvalidInput:
                count("read refused")
            try:
                local.put(f"race/new-{uuid4().hex}.txt", b"new")
                count("written inside")
            except InvalidInput:
                count("write refused")
    finally:
        stop.set()
        flipper.join(timeout=5)
    assert snapshot(outside) == before, outcomes
    # Both sides of the race were hit: some calls saw the link (refused), some the folder.
    assert outcomes.get("read refused", 0) + outcomes.get("write refused", 0) > 0, outcomes
    assert outcomes.get("read inside", 0) + outcomes.get("written inside", 0) > 0, outcomes
    assert not any(".tmp-" in name for name in leftovers(local))


# -- FIFOs, sockets, devices --------------------------------------------------------------


def call_with_deadline(call: Callable[[], object], seconds: float = 5.0) -> BaseException:
    """Run ``call`` in a thread; the exception it raised, or a failure if it blocked."""
    caught: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test
            caught.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"blocked for more than {seconds} s"
    assert time.monotonic() - started < seconds
    assert caught, "returned instead of refusing"
    return caught[0]


def plant_fifo(path: Path) -> None:
    os.mkfifo(path)


def plant_socket(path: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()  # the socket file stays


def plant_device(path: Path) -> None:
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # what /dev/null is
    except PermissionError:
        pytest.skip("mknod needs root (CAP_MKNOD)")


@pytest.mark.parametrize(
    ("plant", "kind"),
    [(plant_fifo, "FIFO"), (plant_socket, "socket"), (plant_device, "character device")],
)
def test_a_special_file_at_a_key_is_refused_unread_and_at_once(
    local: LocalStorage, plant: Callable[[Path], None], kind: str
) -> None:
    (Path(local.root) / "k").mkdir()
    plant(Path(local.root) / "k" / "special")
    for call in (
        lambda: local.get("k/special"),
        lambda: local.open("k/special"),
        lambda: local.info("k/special"),
        lambda: local.exists("k/special"),
        lambda: local.move("k/special", "k/moved"),
    ):
        refused = call_with_deadline(call)
        assert isinstance(refused, IntegrityError), repr(refused)
        assert f"is a {kind}, not a regular file" in str(refused)
    assert local.list("k/") == []
    assert local.delete("k/special") is True  # removing it is safe and lets the key be used


def test_a_fifo_is_refused_by_a_file_store_read(
    db: Database, local: LocalStorage, owner: User
) -> None:
    store = FileStore(local)
    row = store.store(db, b"report\n", owner_id=owner.id, purpose="attachment")
    os.unlink(Path(local.root) / row.key)
    os.mkfifo(Path(local.root) / row.key)  # swapped under a committed row
    refused = call_with_deadline(lambda: store.read(row))
    assert isinstance(refused, IntegrityError) and "FIFO" in str(refused)


# -- the staging area is internal ---------------------------------------------------------


@pytest.fixture
def owner(db: Database) -> User:
    with db.connection() as conn:
        return make_user(conn)


@pytest.mark.parametrize("tenant", [None, UUID("aaaaaaaa-0000-4000-8000-00000000000a")])
def test_every_public_method_refuses_staging_keys(storage: Storage, tenant: UUID | None) -> None:
    staged = staging_key(uuid4(), tenant=tenant)
    storage._put(staged, b"staged bytes", None, None, None)  # as FileStore.stage does
    storage.put("public/file.txt", b"public")
    for name, call in {
        "put": lambda: storage.put(staged, b"x"),
        "get": lambda: storage.get(staged),
        "open": lambda: storage.open(staged),
        "exists": lambda: storage.exists(staged),
        "info": lambda: storage.info(staged),
        "delete": lambda: storage.delete(staged),
        "move from": lambda: storage.move(staged, "public/stolen.txt"),
        "move to": lambda: storage.move("public/file.txt", staged + "x"),
        "url": lambda: storage.url(staged),
        "list": lambda: storage.list(staging_prefix(tenant)),
        "retain": lambda: storage.retain(staged, mode="GOVERNANCE", until=LATER),
        "retention": lambda: storage.retention(staged),
    }.items():
        with pytest.raises(InvalidInput, match="starting with a letter or digit"):
            call()
            pytest.fail(f"{name} accepted a staging key")
    # Nothing changed, and the toolkit's own entry points still reach the staging area.
    assert storage._get_internal(staged) == b"staged bytes"
    assert [info.key for info in storage._list_internal(staging_prefix(tenant))] == [staged]
    assert storage.get("public/file.txt") == b"public"


def test_the_file_store_still_stages_and_promotes(
    db: Database, storage: Storage, owner: User
) -> None:
    store = FileStore(storage)
    staged = store.stage(b"staged then promoted\n", owner_id=owner.id, purpose="generated")
    assert storage._exists_internal(staged.staging_key)
    with db.transaction() as tx:
        store.record(tx, staged)
    with db.connection() as conn:
        row = store.promote(conn, staged)
    assert row.status == "stored"
    assert store.read(row) == b"staged then promoted\n"
    assert not storage._exists_internal(staged.staging_key)


# -- active content -----------------------------------------------------------------------


@pytest.mark.parametrize(("body", "name"), [(HTML, "page.html"), (SVG, "logo.svg")])
def test_uploaded_active_content_is_served_as_an_attachment_of_a_safe_type(
    db: Database, make_storage: StorageFactory, owner: User, body: bytes, name: str
) -> None:
    store = FileStore(make_storage("s3"))
    row = store.store(
        db,
        body,
        owner_id=owner.id,
        purpose="attachment",
        original_name=name,
        claimed_type="text/html",
    )
    assert row.content_type == "text/plain"  # sniffed as text
    headers = store.headers(row)
    assert headers["Content-Type"] == "text/plain"
    assert headers["Content-Disposition"].startswith("attachment")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in headers["Content-Security-Policy"]
    url = store.url(row)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["response-content-type"] == ["text/plain"]
    assert query["response-content-disposition"][0].startswith("attachment")
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == body
        assert response.headers["Content-Disposition"].startswith("attachment")
        assert response.headers["Content-Type"] == "text/plain"


@pytest.mark.parametrize(
    ("recorded", "served"),
    [
        ("text/html", "text/plain"),
        ("image/svg+xml", "text/plain"),
        ("application/xhtml+xml", "text/plain"),
        ("text/javascript", "text/plain"),
        ("application/x-shockwave-flash", "application/octet-stream"),
        ("image/png", "image/png"),
    ],
)
def test_a_tampered_row_type_is_never_served_as_itself(
    db: Database,
    database_url: str,
    make_storage: StorageFactory,
    owner: User,
    recorded: str,
    served: str,
) -> None:
    store = FileStore(make_storage("s3"))
    row = store.store(db, HTML, owner_id=owner.id, purpose="attachment", original_name="a.html")
    # A foothold in the database rewrites the row's type to something a browser runs.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE files SET content_type = %s WHERE id = %s", (recorded, row.id))
    with db.connection() as conn:
        tampered = files.get(conn, row.id)
    assert tampered.content_type == recorded
    headers = store.headers(tampered)
    assert headers["Content-Type"] == served
    assert headers["Content-Disposition"].startswith("attachment")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(store.url(tampered)).query)
    assert query["response-content-type"] == [served]
    assert query["response-content-disposition"][0].startswith("attachment")


def test_storage_url_never_signs_an_active_type(make_storage: StorageFactory) -> None:
    storage = make_storage("s3")
    storage.put("dl/page.txt", HTML)
    for asked, signed in (
        ("text/html", "text/plain"),
        ("image/svg+xml; charset=utf-8", "text/plain"),
        (None, "application/octet-stream"),
        ("application/pdf", "application/pdf"),
    ):
        url = storage.url("dl/page.txt", content_type=asked)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        assert query["response-content-type"] == [signed], asked


# -- case-insensitive folders -------------------------------------------------------------


class CaseFoldingStorage(MemoryStorage):
    """A case-preserving, case-insensitive folder (APFS, NTFS), simulated over memory.

    Each segment of a key resolves to the existing entry of its folder that
    matches it in any case, as those filesystems do; new entries keep the
    case they were made with.
    """

    def _full(self, key: str) -> str:
        path = self.root
        for segment in key.split("/"):
            try:
                names = [posixpath.basename(entry) for entry in self.fs.ls(path, detail=False)]
            except FileNotFoundError:
                names = []
            same = [name for name in names if name.lower() == segment.lower()]
            path = f"{path}/{same[0] if same else segment}"
        return path

    def _folds_case(self) -> bool:
        return True


@pytest.fixture
def folding() -> Iterator[CaseFoldingStorage]:
    storage = CaseFoldingStorage()
    yield storage
    storage.close()


def test_the_simulated_folder_folds_case(folding: CaseFoldingStorage) -> None:
    folding.put("Docs/Readme.txt", b"one")
    assert folding.get("docs/README.TXT") == b"one"
    with pytest.raises(Conflict):
        folding.put("DOCS/readme.txt", b"two")
    assert [info.key for info in folding.list()] == ["Docs/Readme.txt"]


def test_the_sweep_on_a_case_insensitive_folder_keeps_rows_bytes_and_removes_orphans(
    db: Database, folding: CaseFoldingStorage, owner: User
) -> None:
    store = FileStore(folding)
    upper = str(owner.id).upper()
    # The application made the owner's folder first, in upper case (the grammar allows it):
    # the toolkit's lower-case file keys then land in that folder, listed in its case.
    folding.put(f"{upper}/notes/readme.txt", b"the app's own object")
    kept = store.store(db, b"kept\n", owner_id=owner.id, purpose="attachment")
    orphan = store.store(db, b"orphan\n", owner_id=owner.id, purpose="attachment")
    listed = sorted(info.key for info in folding.list())
    assert f"{upper}/attachment/{kept.id}" in listed
    assert kept.key not in listed  # the row's key differs in case from the listing
    with db.transaction() as tx:  # the row deleted, the bytes not yet (a crash between)
        files.delete(tx, orphan.id)

    with db.connection() as conn:
        report = store.sweep(conn, grace_seconds=0, now=LATER)
    assert report.orphans == [f"{upper}/attachment/{orphan.id}"]
    assert store.read(kept) == b"kept\n"
    assert folding.get(f"{upper}/notes/readme.txt") == b"the app's own object"
    with db.connection() as conn:
        assert store.sweep(conn, grace_seconds=0, now=LATER).orphans == []  # nothing twice


def test_the_sweep_on_a_case_sensitive_store_leaves_keys_of_another_case_alone(
    db: Database, make_storage: StorageFactory, owner: User
) -> None:
    storage = make_storage("memory")
    store = FileStore(storage)
    row = store.store(db, b"stored\n", owner_id=owner.id, purpose="attachment")
    # Written directly by the application: a different object here, not the toolkit's.
    shouted = row.key.upper().replace("/ATTACHMENT/", "/attachment/")
    storage.put(shouted, b"the app's own object")
    with db.connection() as conn:
        assert store.sweep(conn, grace_seconds=0, now=LATER).orphans == []
    assert store.read(row) == b"stored\n"
    assert storage.get(shouted) == b"the app's own object"


def test_the_local_probe_reports_this_folder_case_sensitive_and_leaves_nothing(
    local: LocalStorage,
) -> None:
    assert local._folds_case() is False  # ext4 / tmpfs / overlayfs here
    assert leftovers(local) == []
