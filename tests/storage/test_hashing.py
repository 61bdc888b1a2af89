"""SHA-256 hashed beside the copy: the digest of puts and verified reads, whichever thread hashes.

:class:`~toolkit.storage.streams.BackgroundSha256` hands batches of chunks to
a worker thread while the caller reads and writes; these tests hold it to
the digest hashlib gives for the same bytes, in any chunking, across a
fork, and with a buffer the caller reuses.
"""

from __future__ import annotations

import hashlib
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
def test_the_digest_is_hashlib_s_in_any_chunking(seed: int, batch_bytes: int) -> None:
    data = random.Random(seed).randbytes(3 * MIB + 12345)
    digest = BackgroundSha256(batch_bytes)
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
