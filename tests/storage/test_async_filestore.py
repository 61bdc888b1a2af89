"""The AsyncFileStore's streams, on local disk (through a thread) and S3 (native asyncio).

Uploads come from async generators and FastAPI-style ``async read(n)``
objects, several MiB long, so S3 goes through real multipart uploads on the
moto server; every failure — the size limit crossed mid-stream, the
uploading task cancelled mid-stream — must leave no row, no object, no
temporary file and no unfinished multipart upload. Reads stream verified
chunks and report a corrupted object with IntegrityError.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request

from toolkit.aio.db.database import AsyncDatabase
from toolkit.aio.repositories import users
from toolkit.aio.storage import AsyncFileStore, AsyncStorage, AsyncVerifyingReader
from toolkit.aio.storage import repository as files
from toolkit.config import Settings
from toolkit.errors import (
    Conflict,
    IntegrityError,
    InvalidInput,
    NotFound,
    SourceFailed,
    Unavailable,
)
from toolkit.repositories.records import User
from toolkit.storage import Storage

from .conftest import leftovers

MIB = 1 << 20
BOUND = 30.0  # seconds: every wait in these tests is bounded

pytestmark = pytest.mark.asyncio


@pytest.fixture(params=["local", "s3"])
def async_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def raw_storage(async_backend: str, make_storage: Callable[[str], Storage]) -> Storage:
    return make_storage(async_backend)


@pytest_asyncio.fixture
async def adb(settings: Settings) -> AsyncIterator[AsyncDatabase]:
    async with AsyncDatabase(settings, warn_if_privileged=False) as database:
        yield database


@pytest_asyncio.fixture
async def store(raw_storage: Storage) -> AsyncIterator[AsyncFileStore]:
    async with AsyncFileStore(raw_storage, max_bytes=64 * MIB) as made:
        yield made


@pytest_asyncio.fixture
async def owner(adb: AsyncDatabase) -> User:
    async with adb.connection() as conn:
        return await users.create(
            conn, {"email": f"{os.urandom(6).hex()}@example.com", "display_name": "Owner"}
        )


def payload(size: int) -> bytes:
    """Text-like bytes (sniffed as text/plain), different in every MiB."""
    line = b"the quick brown fox jumps over the lazy dog 0123456789\n"
    block = (line * (MIB // len(line) + 1))[:MIB]
    return b"".join(block[:-8] + b"%07d\n" % i for i in range(size // MIB))[:size]


async def generate(data: bytes, piece: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), piece):
        await asyncio.sleep(0)  # a real producer yields to the loop between pieces
        yield data[start : start + piece]


async def row_count(adb: AsyncDatabase) -> int:
    async with adb.connection() as conn:
        return len((await files.list(conn)).items)


async def test_an_async_generator_of_several_mib_streams_in_and_reads_back_in_chunks(
    adb: AsyncDatabase, store: AsyncFileStore, owner: User, async_backend: str
) -> None:
    data = payload(20 * MIB)  # more than two 8 MiB parts: a real multipart upload on S3
    stored = await store.store(
        adb,
        generate(data, 300_000),  # pieces of an odd size, re-chunked by the pipeline
        owner_id=owner.id,
        purpose="attachment",
        original_name="big.txt",
    )
    assert (stored.status, stored.size) == ("stored", len(data))
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.content_type == "text/plain"
    assert leftovers(store.storage.sync) == (
        [f"files/{stored.key}"] if async_backend == "s3" else [stored.key]
    )
    stream = await store.open(stored)
    assert isinstance(stream, AsyncVerifyingReader)
    chunks: list[bytes] = []
    async with stream:
        async for chunk in stream:
            chunks.append(chunk)
    assert len(chunks) > 1  # streamed, not read whole
    assert b"".join(chunks) == data
    assert await store.read(stored) == data


async def test_an_upload_file_with_async_read_is_stored(
    adb: AsyncDatabase, store: AsyncFileStore, owner: User
) -> None:
    data = payload(9 * MIB)
    spooled = tempfile.SpooledTemporaryFile(max_size=MIB)  # noqa: SIM115 - UploadFile closes it
    spooled.write(data)
    spooled.seek(0)
    upload = UploadFile(file=spooled, filename="notes.txt")
    try:
        stored = await store.store(
            adb, upload, owner_id=owner.id, purpose="attachment", original_name=upload.filename
        )
    finally:
        await upload.close()
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert await store.read(stored) == data


async def test_crossing_the_limit_mid_stream_leaves_no_row_and_no_object(
    adb: AsyncDatabase, store: AsyncFileStore, owner: User
) -> None:
    produced = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal produced
        piece = payload(MIB)
        while True:
            produced += len(piece)
            await asyncio.sleep(0)
            yield piece

    with pytest.raises(InvalidInput, match="larger than the limit of 10485760 bytes"):
        await asyncio.wait_for(
            store.store(
                adb, endless(), owner_id=owner.id, purpose="attachment", max_bytes=10 * MIB
            ),
            BOUND,
        )
    assert produced <= 12 * MIB  # stopped at the limit, not read to the end
    assert await row_count(adb) == 0
    assert leftovers(store.storage.sync) == []  # no object, temp file or multipart upload


async def test_an_async_generator_that_raises_mid_stream_is_source_failed(
    adb: AsyncDatabase, store: AsyncFileStore, owner: User
) -> None:
    broken = RuntimeError("a bug in the caller's generator")

    async def producer() -> AsyncIterator[bytes]:
        async for piece in generate(payload(9 * MIB), 300_000):  # past one 8 MiB part on S3
            yield piece
        raise broken

    with pytest.raises(SourceFailed, match="source raised RuntimeError") as raised:
        await asyncio.wait_for(
            store.store(adb, producer(), owner_id=owner.id, purpose="attachment"), BOUND
        )
    assert not isinstance(raised.value, Unavailable)  # not an outage to retry with backoff
    assert raised.value.original is broken
    assert raised.value.__cause__ is broken
    assert await row_count(adb) == 0
    assert leftovers(store.storage.sync) == []  # no object, temp file or multipart upload


async def test_a_starlette_client_disconnect_mid_upload_is_source_failed(
    adb: AsyncDatabase, store: AsyncFileStore, owner: User
) -> None:
    messages = [
        {"type": "http.request", "body": piece, "more_body": True}
        for piece in (payload(9 * MIB)[start : start + 65536] for start in range(0, 9 * MIB, 65536))
    ]
    messages.append({"type": "http.disconnect"})

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0)
        return messages.pop(0)

    request = Request({"type": "http", "method": "POST", "headers": []}, receive)
    with pytest.raises(SourceFailed, match="source raised ClientDisconnect") as raised:
        await asyncio.wait_for(
            store.store(adb, request.stream(), owner_id=owner.id, purpose="attachment"), BOUND
        )
    assert isinstance(raised.value.original, ClientDisconnect)
    assert messages == []  # read up to the disconnect
    assert await row_count(adb) == 0
    assert leftovers(store.storage.sync) == []


async def test_a_cancelled_upload_leaves_nothing_committed_and_nothing_behind(
    adb: AsyncDatabase, store: AsyncFileStore, owner: User, async_backend: str
) -> None:
    blocked = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        # 9 MiB (a multipart upload under way on S3, a temp file on disk), then the
        # client goes quiet: the request is cancelled while the upload is open.
        for start in range(0, 9 * MIB, MIB):
            yield payload(MIB)[: MIB - 1] + bytes([48 + start // MIB])
        blocked.set()
        await asyncio.Event().wait()
        yield b"never"

    task = asyncio.create_task(store.store(adb, stalls(), owner_id=owner.id, purpose="attachment"))
    await asyncio.wait_for(blocked.wait(), BOUND)
    in_progress = leftovers(store.storage.sync)
    if async_backend == "s3":
        assert [key for key in in_progress if key.startswith("upload:")], in_progress
    else:
        assert [key for key in in_progress if "/.tmp-" in key], in_progress
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, BOUND)
    assert await row_count(adb) == 0
    assert leftovers(store.storage.sync) == []


async def test_a_cancellation_after_staging_discards_the_staged_bytes(
    adb: AsyncDatabase, store: AsyncFileStore, owner: User
) -> None:
    # Cancelled while the row's transaction waits on a lock: rolled back, bytes discarded.
    async with adb.transaction() as tx:
        await tx.execute("LOCK TABLE files IN EXCLUSIVE MODE")
        task = asyncio.create_task(
            store.store(adb, b"staged, never committed", owner_id=owner.id, purpose="attachment")
        )
        for _ in range(int(BOUND / 0.01)):  # until the upload is staged and the INSERT waits
            if [key for key in leftovers(store.storage.sync) if "_staging/" in key]:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, BOUND)
    assert await row_count(adb) == 0
    assert leftovers(store.storage.sync) == []


async def test_a_corrupted_object_is_reported_at_the_end_of_the_stream(
    adb: AsyncDatabase, store: AsyncFileStore, owner: User
) -> None:
    data = payload(3 * MIB)
    stored = await store.store(adb, data, owner_id=owner.id, purpose="attachment")
    tampered = data[:-1] + b"!"  # same size, one byte changed at the very end
    await store.storage.delete(stored.key)
    await store.storage._put(stored.key, tampered, None, None, None)
    seen = 0
    with pytest.raises(IntegrityError, match="does not match the recorded"):
        async with await store.open(stored) as stream:
            async for chunk in stream:
                seen += len(chunk)
    assert seen == len(data)  # every chunk came through before the check failed
    with pytest.raises(IntegrityError):
        await store.read(stored)
    assert await store.read(stored, verify=False) == tampered
    partial = await store.open(stored)
    async with partial:
        assert len(await partial.read(1000)) == 1000  # a partial read checks nothing


async def test_sources_of_every_kind_and_bad_ones(
    adb: AsyncDatabase, store: AsyncFileStore, owner: User
) -> None:
    class AsyncReader:
        def __init__(self, data: bytes) -> None:
            self._data = data

        async def read(self, size: int = -1) -> bytes:
            size = len(self._data) if size < 0 else size
            chunk, self._data = self._data[:size], self._data[size:]
            return chunk

    import io

    for source in (b"plain bytes", io.BytesIO(b"plain bytes"), AsyncReader(b"plain bytes")):
        staged = await store.stage(source, owner_id=owner.id, purpose="attachment")
        assert staged.size == len(b"plain bytes")
        await store.discard(staged)
    with pytest.raises(InvalidInput, match="data must be bytes"):
        await store.stage(12345, owner_id=owner.id, purpose="attachment")  # type: ignore[arg-type]

    async def not_bytes() -> AsyncIterator[Any]:
        yield "text, not bytes"

    with pytest.raises(InvalidInput, match="not bytes"):
        await store.stage(not_bytes(), owner_id=owner.id, purpose="attachment")
    with pytest.raises(InvalidInput, match="not allowed"):
        await store.stage(b"\x7fELF\x00\x00", owner_id=owner.id, purpose="attachment")
    assert leftovers(store.storage.sync) == []


async def test_s3_bytes_move_natively_not_through_the_sync_client(
    adb: AsyncDatabase,
    make_storage: Callable[[str], Storage],
    owner: User,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage = make_storage("s3")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the sync S3 byte path was used")

    monkeypatch.setattr(storage, "_write", refuse)
    monkeypatch.setattr(storage, "_open", refuse)
    data = payload(9 * MIB)
    async with AsyncFileStore(storage) as store:
        stored = await store.store(adb, generate(data, MIB), owner_id=owner.id, purpose="generated")
        assert await store.read(stored) == data


async def test_the_async_storage_facade_has_the_storage_interface(raw_storage: Storage) -> None:
    storage = AsyncStorage(raw_storage)
    data = payload(2 * MIB)
    put = await storage.put("docs/a.txt", generate(data, 100_000), claimed_type="text/plain")
    assert (put.size, put.content_type) == (len(data), "text/plain")
    assert await storage.exists("docs/a.txt")
    assert (await storage.info("docs/a.txt")).size == len(data)
    assert await storage.get("docs/a.txt", sha256=put.sha256) == data
    async with await storage.open("docs/a.txt", sha256=put.sha256) as stream:
        assert await stream.read(10) == data[:10]
    with pytest.raises(Conflict):
        await storage.put("docs/a.txt", b"again")
    with pytest.raises(InvalidInput):
        await storage.put("_staging/x", b"internal keys are refused")
    with pytest.raises(NotFound):
        await storage.open("docs/missing.txt")
    await storage.move("docs/a.txt", "docs/b.txt")
    assert [info.key for info in await storage.list("docs/")] == ["docs/b.txt"]
    assert (await storage.url("docs/b.txt")).startswith(("file://", "http"))
    assert await storage.delete("docs/b.txt")
    assert not await storage.delete("docs/b.txt")
    await storage.release()
    assert leftovers(raw_storage) == []


async def test_cancelling_at_any_moment_of_a_threaded_write_leaves_nothing(
    adb: AsyncDatabase, make_storage: Callable[[str], Storage], owner: User
) -> None:
    # The local write runs in a thread pulling chunks from the loop: a cancellation may
    # land while a chunk is produced, handed over or written. Whichever, nothing is left.
    storage = make_storage("local")
    rng = random.Random(1234)
    async with AsyncFileStore(storage) as store:

        async def endless() -> AsyncIterator[bytes]:
            piece = payload(MIB)[: 64 << 10]
            while True:
                await asyncio.sleep(0)
                yield piece

        for _ in range(30):
            task = asyncio.create_task(
                store.store(adb, endless(), owner_id=owner.id, purpose="attachment")
            )
            await asyncio.sleep(rng.uniform(0, 0.02))
            task.cancel()
            done, _pending = await asyncio.wait({task}, timeout=BOUND)
            assert task in done, "the cancelled upload did not finish"
            assert task.cancelled()
            assert leftovers(storage) == []
    assert await row_count(adb) == 0
