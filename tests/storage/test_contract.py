"""The Storage contract, run against every back end: local, memory, S3 (moto server), pyfs."""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from toolkit.errors import Conflict, IntegrityError, InvalidInput, NotFound
from toolkit.storage import LocalStorage, S3Storage, Storage
from toolkit.storage.base import CHUNK_SIZE

from .conftest import leftovers

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
MIB = 1 << 20


class TrickleReader:
    """A non-seekable stream that hands out at most ``step`` bytes per read, counting them."""

    def __init__(self, data: bytes, step: int = 64 * 1024) -> None:
        self._data = memoryview(data)
        self._step = step
        self.delivered = 0

    def read(self, size: int = -1) -> bytes:
        size = self._step if size < 0 else min(size, self._step)
        chunk = bytes(self._data[self.delivered : self.delivered + size])
        self.delivered += len(chunk)
        return chunk


class EndlessText:
    """An endless upload of text, counting what was read from it."""

    def __init__(self) -> None:
        self.delivered = 0

    def read(self, size: int = -1) -> bytes:
        size = CHUNK_SIZE if size < 0 else size
        self.delivered += size
        return b"a" * size


def test_put_get_exists_info_delete(storage: Storage) -> None:
    result = storage.put("u1/attachment/notes.txt", b"hello, world\n", claimed_type="text/html")
    assert result.size == 13
    assert result.sha256 == hashlib.sha256(b"hello, world\n").hexdigest()
    assert result.content_type == "text/plain"
    assert result.claimed_type == "text/html"  # recorded, not trusted
    assert storage.get("u1/attachment/notes.txt") == b"hello, world\n"
    assert storage.exists("u1/attachment/notes.txt")
    assert not storage.exists("u1/attachment/other.txt")
    info = storage.info("u1/attachment/notes.txt")
    assert info.size == 13
    assert info.modified is not None
    assert info.modified.tzinfo is not None
    assert storage.delete("u1/attachment/notes.txt") is True
    assert storage.delete("u1/attachment/notes.txt") is False
    assert not storage.exists("u1/attachment/notes.txt")


def test_put_from_a_stream_in_chunks_and_read_it_streaming(storage: Storage) -> None:
    size = 3 * MIB + 12345 if not isinstance(storage, S3Storage) else 9 * MIB + 7
    data = PNG + bytes(range(256)) * (size // 256)
    source = TrickleReader(data, step=300_000)
    result = storage.put("big/image.png", source)
    assert result.size == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.content_type == "image/png"
    with storage.open("big/image.png", sha256=result.sha256) as stream:
        parts = []
        while chunk := stream.read(1 << 20):
            assert len(chunk) <= 1 << 20
            parts.append(chunk)
    assert b"".join(parts) == data
    assert storage.info("big/image.png").size == len(data)


def test_missing_objects_are_not_found(storage: Storage) -> None:
    with pytest.raises(NotFound, match="object nope/x not found"):
        storage.get("nope/x")
    with pytest.raises(NotFound):
        storage.open("nope/x")
    with pytest.raises(NotFound):
        storage.info("nope/x")
    with pytest.raises(NotFound):
        storage.move("nope/x", "nope/y")


def test_list_by_prefix(storage: Storage) -> None:
    for key in ("a/1.txt", "a/2.txt", "a/b/3.txt", "ab/4.txt", "c.txt"):
        storage.put(key, key.encode())
    assert [info.key for info in storage.list("a/")] == ["a/1.txt", "a/2.txt", "a/b/3.txt"]
    assert [info.key for info in storage.list("a")] == [
        "a/1.txt",
        "a/2.txt",
        "a/b/3.txt",
        "ab/4.txt",
    ]
    assert [info.key for info in storage.list("a/b/")] == ["a/b/3.txt"]
    assert len(storage.list()) == 5
    assert storage.list("zzz/") == []
    assert {info.key: info.size for info in storage.list("ab")} == {"ab/4.txt": 8}


def test_writes_are_create_only(storage: Storage) -> None:
    storage.put("k/one.txt", b"first")
    with pytest.raises(Conflict, match="already exists"):
        storage.put("k/one.txt", b"second")
    assert storage.get("k/one.txt") == b"first"
    storage.put("k/two.txt", b"two")
    with pytest.raises(Conflict):
        storage.move("k/one.txt", "k/two.txt")
    storage.move("k/one.txt", "k/three.txt")
    assert storage.get("k/three.txt") == b"first"
    assert not storage.exists("k/one.txt")


def test_a_big_object_is_create_only_too(storage: Storage) -> None:
    # On S3 this goes through a multipart upload completed with If-None-Match.
    data = b"x" * (9 * MIB)
    storage.put("k/big.txt", data)
    with pytest.raises(Conflict):
        storage.put("k/big.txt", b"y" * (9 * MIB))
    assert storage.get("k/big.txt") == data
    assert [key for key in leftovers(storage) if "upload:" in key or ".tmp-" in key] == []


@pytest.mark.parametrize("size", [100, 9 * MIB + 1])
def test_over_limit_upload_is_aborted_with_nothing_left_behind(storage: Storage, size: int) -> None:
    limit = size - 1
    with pytest.raises(InvalidInput, match=f"larger than the limit of {limit} bytes") as caught:
        storage.put("lim/file.txt", io.BytesIO(b"z" * size), max_bytes=limit)
    assert caught.value.field == "size"
    assert not storage.exists("lim/file.txt")
    assert leftovers(storage) == []


def test_the_limit_is_enforced_while_streaming(storage: Storage) -> None:
    source = EndlessText()
    limit = 9 * MIB + 10
    with pytest.raises(InvalidInput, match="larger than the limit"):
        storage.put("lim/endless.txt", source, max_bytes=limit)
    # At most one chunk is read past the limit, and it is never written.
    assert source.delivered <= limit + CHUNK_SIZE
    assert leftovers(storage) == []


def test_exactly_at_the_limit_is_fine(storage: Storage) -> None:
    result = storage.put("lim/exact.txt", b"q" * 5000, max_bytes=5000)
    assert result.size == 5000


def test_type_is_sniffed_and_checked_against_the_allow_list(storage: Storage) -> None:
    elf = b"\x7fELF\x02\x01\x01" + b"\x00" * 100
    with pytest.raises(InvalidInput, match=r"application/octet-stream .* is not allowed"):
        storage.put("t/prog.png", elf, claimed_type="image/png")
    assert leftovers(storage) == []
    result = storage.put("t/prog.bin", elf, allowed_types=None)
    assert result.content_type == "application/octet-stream"
    result = storage.put("t/pic", PNG, claimed_type="text/plain; charset=utf-8")
    assert (result.content_type, result.claimed_type) == ("image/png", "text/plain")
    with pytest.raises(InvalidInput, match=r"image/png .* is not allowed"):
        storage.put("t/pic2", PNG, allowed_types={"application/pdf"})


def test_checksum_on_read(storage: Storage) -> None:
    result = storage.put("c/data.json", b'{"a": 1}')
    assert result.content_type == "application/json"
    assert storage.get("c/data.json", sha256=result.sha256) == b'{"a": 1}'
    with pytest.raises(IntegrityError, match="does not match"):
        storage.get("c/data.json", sha256="0" * 64)
    with storage.open("c/data.json", sha256="0" * 64) as stream:
        assert stream.read(3) == b'{"a'  # a partial read checks nothing
        with pytest.raises(IntegrityError):
            stream.read()
            stream.read()


@pytest.mark.parametrize(
    "bad", ["../escape", "/etc/passwd", "a\\b", "a/../../b", "a\x00b", "C:/x", "%2e%2e/x", ""]
)
def test_every_method_rejects_bad_keys(storage: Storage, bad: str) -> None:
    for call in (
        lambda: storage.put(bad, b"x"),
        lambda: storage.get(bad),
        lambda: storage.open(bad),
        lambda: storage.exists(bad),
        lambda: storage.info(bad),
        lambda: storage.delete(bad),
        lambda: storage.move(bad, "ok"),
        lambda: storage.move("ok", bad),
        lambda: storage.url(bad),
        lambda: storage.retain(bad, mode="GOVERNANCE", until=datetime.now(UTC) + timedelta(days=1)),
        lambda: storage.retention(bad),
    ):
        with pytest.raises(InvalidInput, match=r"invalid (key|source|target)"):
            call()
    if bad:
        with pytest.raises(InvalidInput, match="invalid prefix"):
            storage.list(bad)
    assert leftovers(storage) == []


def test_outside_keys_cannot_reach_staging(storage: Storage) -> None:
    for key in ("_staging/x", ".tmp-123", "a/.tmp-1", "a/_x"):
        with pytest.raises(InvalidInput):
            storage.put(key, b"x")


def test_racing_writers_exactly_one_wins(storage: Storage) -> None:
    both_started = threading.Barrier(2, timeout=20)
    data = {name: (name * 200_000).encode() for name in ("a", "b")}

    class Gate:
        """Hands out the first bytes, then waits until the other writer has started too."""

        def __init__(self, payload: bytes) -> None:
            self._stream = io.BytesIO(payload)
            self._first = True

        def read(self, size: int = -1) -> bytes:
            chunk = self._stream.read(min(size, 8192) if self._first else size)
            if not self._first:
                return chunk
            self._first = False
            return chunk

    def write(name: str) -> str:
        gate = Gate(data[name])
        pipeline_source = _BarrierAfterFirst(gate, both_started)
        try:
            storage.put("race/same-key.txt", pipeline_source)
        except Conflict:
            return "conflict"
        return "won:" + name

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(write, ["a", "b"]))
    assert outcomes[0] == "conflict", outcomes
    assert outcomes[1].startswith("won:"), outcomes
    winner = outcomes[1].split(":")[1]
    assert storage.get("race/same-key.txt") == data[winner]
    assert [key for key in leftovers(storage) if "upload:" in key or ".tmp-" in key] == []


class _BarrierAfterFirst:
    """Wraps a source: after its first read, the next read waits for every writer."""

    def __init__(self, inner: object, barrier: threading.Barrier) -> None:
        self._inner = inner
        self._barrier = barrier
        self._reads = 0

    def read(self, size: int = -1) -> bytes:
        self._reads += 1
        if self._reads == 2:
            self._barrier.wait()
        return self._inner.read(size)  # type: ignore[attr-defined, no-any-return]


def test_url_and_download_headers(storage: Storage, backend: str) -> None:
    storage.put("dl/report.md", b"# Title\n\nbody\n")
    url = storage.url("dl/report.md", filename="rapport été.md", content_type="text/markdown")
    if isinstance(storage, S3Storage):
        # The presigned GET asks S3 to answer with an attachment disposition naming the file.
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        (disposition,) = query["response-content-disposition"]
        assert disposition == (
            "attachment; filename=\"rapport _t_.md\"; filename*=UTF-8''rapport%20%C3%A9t%C3%A9.md"
        )
        assert query["response-content-type"] == ["text/markdown"]
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.read() == b"# Title\n\nbody\n"
            # moto ignores the response-* overrides (AWS honours them); the object itself
            # was stored with an attachment disposition and its sniffed type.
            assert response.headers["Content-Disposition"].startswith("attachment")
            assert response.headers["Content-Type"] == "text/markdown"
    elif isinstance(storage, LocalStorage):
        assert url.startswith("file:///")
        assert Path(url[len("file://") :]).read_bytes() == b"# Title\n\nbody\n"
    else:
        assert url.endswith("dl/report.md")
    with pytest.raises(InvalidInput, match="expires"):
        storage.url("dl/report.md", expires=0)


def test_bad_sources_are_rejected(storage: Storage) -> None:
    with pytest.raises(InvalidInput, match="bytes or a readable binary stream"):
        storage.put("s/x", "text, not bytes")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="max_bytes"):
        storage.put("s/x", b"x", max_bytes=-1)
    assert leftovers(storage) == []


def test_a_key_that_runs_through_an_object(storage: Storage) -> None:
    storage.put("p/file.txt", b"a file")
    with pytest.raises(NotFound):
        storage.get("p/file.txt/below")
    assert not storage.exists("p/file.txt/below")
    assert storage.delete("p/file.txt/below") is False
    with contextlib.suppress(Conflict):  # a filesystem cannot hold both; S3 and memory can
        storage.put("p/file.txt/below", b"x")
    assert storage.get("p/file.txt") == b"a file"
