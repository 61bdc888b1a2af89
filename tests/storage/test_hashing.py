"""SHA-256 hashed beside the copy: the digest of puts and verified reads, whichever thread hashes.

:class:`~toolkit.storage.streams.BackgroundSha256` hands batches of chunks to
a worker thread while the caller reads and writes; these tests hold it to
the digest hashlib gives for the same bytes, in any chunking, across a
fork, and with a buffer the caller reuses.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import random
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from toolkit.errors import IntegrityError, Unavailable
from toolkit.storage import LocalStorage, streams
from toolkit.storage.base import Sha256Check, VerifyingReader
from toolkit.storage.streams import BackgroundSha256

MIB = 1 << 20


def chunked(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    chunks, at = [], 0
    while at < len(data):
        size = rng.choice((1, 100, 2047, 2048, 4096, 65536, 131072, 300_000))
        chunks.append(data[at : at + size])
        at += size
    return chunks


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("batch_bytes", [1, 4096, 1 << 20])
@pytest.mark.parametrize("queued_batches", [1, 2, 4])
def test_the_digest_is_hashlib_s_in_any_chunking(
    seed: int, batch_bytes: int, queued_batches: int
) -> None:
    data = random.Random(seed).randbytes(3 * MIB + 12345)
    digest = BackgroundSha256(batch_bytes, queued_batches)
    halfway = ""
    for index, chunk in enumerate(chunked(data, seed)):
        digest.update(chunk)
        if index == 7:
            halfway = digest.hexdigest()  # read midway, then go on
    assert halfway
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


def test_batches_are_hashed_on_a_worker_and_a_short_stream_on_the_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hashed_on: list[str] = []
    real = streams._hash_all

    def recording(digest: hashlib._Hash, chunks: Sequence[bytes]) -> None:
        if chunks:
            hashed_on.append(threading.current_thread().name)
        real(digest, chunks)

    monkeypatch.setattr(streams, "_hash_all", recording)
    long = BackgroundSha256(batch_bytes=MIB)
    for _ in range(4):
        long.update(os.urandom(MIB // 2))
    long.hexdigest()
    assert len(hashed_on) == 2 and all(n.startswith("toolkit-sha256") for n in hashed_on)
    hashed_on.clear()
    short = BackgroundSha256(batch_bytes=MIB)
    short.update(b"a few bytes")
    assert short.hexdigest() == hashlib.sha256(b"a few bytes").hexdigest()
    assert hashed_on == [threading.current_thread().name]


def _hashing_held(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Workers hash nothing until the returned event is set (the caller's thread is not held)."""
    release = threading.Event()
    real = streams._hash_all

    def held(digest: hashlib._Hash, chunks: Sequence[bytes]) -> None:
        if threading.current_thread().name.startswith("toolkit-sha256"):
            assert release.wait(30), "never released"
        real(digest, chunks)

    monkeypatch.setattr(streams, "_hash_all", held)
    return release


def test_the_caller_queues_batches_while_the_worker_hashes_and_waits_when_the_queue_is_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One batch in flight at a time made the caller wait for each batch to be hashed, and the
    # worker for the caller to wake and hand over the next: the queue lets both go on.
    release = _hashing_held(monkeypatch)
    data = os.urandom(8 * 4096)
    digest = BackgroundSha256(batch_bytes=4096, queued_batches=3)
    handed = 0

    def feed() -> None:
        nonlocal handed
        for start in range(0, len(data), 4096):
            digest.update(data[start : start + 4096])
            handed += 1

    feeder = threading.Thread(target=feed)
    feeder.start()
    feeder.join(1)
    try:
        # Three batches queued while the worker holds the first; the fourth waits: memory
        # stays bounded by the queue, however slow the hashing.
        assert feeder.is_alive()
        assert handed == 3
    finally:
        release.set()
        feeder.join(30)
    assert not feeder.is_alive() and handed == 8
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_put_hands_each_chunk_to_the_hashing_worker_as_a_batch_of_its_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Every hand-over costs the caller a GIL round trip: a chunk smaller than a batch
    # paid it per chunk and hashed in pieces (measured: 13% more CPU on the put's thread).
    batches: list[int] = []
    real = streams._hash_all

    def recording(digest: hashlib._Hash, chunks: Sequence[bytes]) -> None:
        if threading.current_thread().name.startswith("toolkit-sha256"):
            batches.append(len(chunks))
        real(digest, chunks)

    monkeypatch.setattr(streams, "_hash_all", recording)
    data = os.urandom(4 * MIB)
    store = LocalStorage(tmp_path / "store", fsync=False)
    result = store.put("big/object.bin", io.BytesIO(data), allowed_types=None)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert len(batches) >= 4 * MIB // streams.HASH_BATCH_BYTES - 1
    assert all(count == 1 for count in batches[1:])  # the first also holds the sniffed head


def test_a_failure_on_the_worker_is_raised_to_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    real = streams._hash_all

    def failing_on_workers(digest: hashlib._Hash, chunks: Sequence[bytes]) -> None:
        if threading.current_thread().name.startswith("toolkit-sha256"):
            raise RuntimeError("hashing failed")
        real(digest, chunks)

    monkeypatch.setattr(streams, "_hash_all", failing_on_workers)
    digest = BackgroundSha256(batch_bytes=4096)
    digest.update(os.urandom(4096))  # handed to a worker, which fails
    with pytest.raises(RuntimeError, match="hashing failed"):
        digest.hexdigest()
    with pytest.raises(RuntimeError, match="hashing failed"):
        digest.update(os.urandom(4096))


def test_a_buffer_the_reader_reuses_is_checked_as_it_was_read() -> None:
    data = os.urandom(2 * MIB)
    check = Sha256Check("k", hashlib.sha256(data).hexdigest())
    buffer = bytearray(MIB)
    for start in (0, MIB):
        buffer[:] = data[start : start + MIB]
        check.update(buffer)  # type: ignore[arg-type]  # a reader may hand over its buffer
    buffer[:] = bytes(MIB)  # reused after the last read: the check must not see it
    check.check()


def _hash_in_child(data: bytes, expected: str) -> None:
    digest = BackgroundSha256(batch_bytes=4096)
    for chunk in chunked(data, 1):
        digest.update(chunk)
    os._exit(0 if digest.hexdigest() == expected else 3)


def test_a_forked_child_hashes_on_threads_of_its_own() -> None:
    data = os.urandom(MIB)
    expected = hashlib.sha256(data).hexdigest()
    warm = BackgroundSha256(batch_bytes=4096)  # the parent's pool has threads now
    for chunk in chunked(data, 0):
        warm.update(chunk)
    assert warm.hexdigest() == expected
    child = multiprocessing.get_context("fork").Process(
        target=_hash_in_child, args=(data, expected)
    )
    child.start()
    child.join(60)
    if child.is_alive():  # waiting on a thread the fork did not copy
        child.kill()
        child.join()
    assert child.exitcode == 0


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store", fsync=False)


def test_a_large_put_and_its_verified_read_agree_with_hashlib(store: LocalStorage) -> None:
    data = os.urandom(5 * MIB + 7)
    result = store.put("big/object.bin", data, allowed_types=None)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert store.get("big/object.bin", sha256=result.sha256) == data
    with store.open("big/object.bin", sha256=result.sha256) as stream:
        read = b"".join(iter(lambda: stream.read(65536), b""))
    assert read == data


def test_a_large_object_changed_in_the_middle_fails_its_verified_read(
    store: LocalStorage, tmp_path: Path
) -> None:
    data = os.urandom(5 * MIB)
    result = store.put("big/object.bin", data, allowed_types=None)
    path = tmp_path / "store" / "big" / "object.bin"
    with path.open("r+b") as file:
        file.seek(3 * MIB)
        file.write(bytes([data[3 * MIB] ^ 1]))
    with pytest.raises(IntegrityError, match="does not match the recorded"):
        store.get("big/object.bin", sha256=result.sha256)


class _FailingRaw:
    def read(self, _size: int = -1) -> bytes:
        raise OSError(5, "Input/output error")

    def close(self) -> None:
        pass


def test_a_read_error_is_still_translated() -> None:
    with (
        pytest.raises(Unavailable, match=r"reading .k.*Input/output error"),
        VerifyingReader(_FailingRaw(), "k") as stream,  # type: ignore[arg-type]
    ):
        stream.read(10)
