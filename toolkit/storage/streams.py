"""What every byte path of storage shares: sources, chunks, the put result, error translation.

The blocks under both :mod:`toolkit.storage.base` (the :class:`Storage`
interface) and :mod:`toolkit.storage.pipeline` (the upload pipeline the
interface's ``put`` runs): kept here so that the pipeline needs nothing from
the interface and the two do not import each other.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections import deque
from collections.abc import AsyncIterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, Protocol

from toolkit.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    ToolkitError,
    Unavailable,
    bounded_repr,
)

CHUNK_SIZE: Final = 256 << 10
"""Bytes read from the source per step. 256 KiB, one hashing batch (:data:`HASH_BATCH_BYTES`):
a 256 MiB put spent 0.145 s of CPU on the caller's thread against 0.166 s with 128 KiB chunks
(each chunk handed to the hashing thread costs the caller a few microseconds of GIL hand-over);
at 1 MiB most chunks were fresh mappings (27,000 page faults per 256 MiB)."""


HASH_BATCH_BYTES: Final = 256 << 10
"""Bytes gathered before :class:`BackgroundSha256` hands them to a hashing thread. 256 KiB:
the hand-over costs a few microseconds against about 150 to hash the batch (SHA-NI), and the
few chunks held at a time are reused by the allocator; at 1 MiB, freeing 16 chunks at once
shrank the heap and the next ones paid a page fault every 16 KiB (30,000 per 512 MiB)."""


class _HashingPool:
    """The threads :class:`BackgroundSha256` hashes on, started at first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def get(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=os.cpu_count() or 1, thread_name_prefix="toolkit-sha256"
                )
            return self._pool

    def forget(self) -> None:
        # A forked child has none of the parent's threads: it must not wait on them.
        self._lock = threading.Lock()
        self._pool = None


_hashing_pool = _HashingPool()
os.register_at_fork(after_in_child=_hashing_pool.forget)


HASH_QUEUE_BATCHES: Final = 4
"""Batches a :class:`BackgroundSha256` may queue for its worker (about 1 MiB). With one batch
in flight the worker slept after each batch until the caller woke to hand over the next: a
verified 256 MiB read into /dev/null took 0.48 s for 0.17 s of hashing, with 3,000 voluntary
context switches; with the queue the worker goes from batch to batch (1,300 switches)."""


def _hash_all(digest: hashlib._Hash, chunks: Sequence[bytes]) -> None:
    for chunk in chunks:
        digest.update(chunk)


class BackgroundSha256:
    """The SHA-256 of a stream, hashed on a worker thread while the caller moves the bytes.

    hashlib releases the GIL while it hashes a buffer of more than 2 KiB, so
    the caller's reads and writes and the worker's hashing run at the same
    time: a verified copy costs the slower of a copy and a hash, not their
    sum. Chunks are handed over in batches of at least ``batch_bytes`` into a
    queue of at most ``queued_batches``, which one worker at a time drains in
    order (the caller waits when it is full, until it is half empty: memory
    stays bounded and neither side is woken per batch). A stream shorter
    than a batch is hashed on the caller's thread by :meth:`hexdigest` and
    never touches a thread. One caller thread feeds an instance.
    """

    def __init__(
        self, batch_bytes: int = HASH_BATCH_BYTES, queued_batches: int = HASH_QUEUE_BATCHES
    ) -> None:
        self._digest = hashlib.sha256()
        self._batch_limit = batch_bytes
        self._batch: list[bytes] = []
        self._batched = 0
        self._queue_limit = max(1, queued_batches)
        # Guarded by _changed: the batches handed over (the one being hashed stays first
        # until it is done, so it counts against the limit), whether a worker drains them,
        # whether the caller sleeps on them, and what failed on the worker.
        self._changed = threading.Condition(threading.Lock())
        self._queue: deque[list[bytes]] = deque()
        self._draining = False
        self._caller_waits = False
        self._failure: BaseException | None = None

    def update(self, data: bytes) -> None:
        """Add ``data`` (bytes: it is hashed later, so it must not change)."""
        if not data:
            return
        self._batch.append(data)
        self._batched += len(data)
        if self._batched >= self._batch_limit:
            batch, self._batch, self._batched = self._batch, [], 0
            self._hand_over(batch)

    def _hand_over(self, batch: list[bytes]) -> None:
        with self._changed:
            while len(self._queue) >= self._queue_limit and self._draining:
                self._caller_waits = True
                self._changed.wait()
            self._raise_failure()
            self._queue.append(batch)
            if self._draining:
                return
            self._draining = True
        try:
            _hashing_pool.get().submit(self._drain)
        except RuntimeError:  # the interpreter is shutting down: no new threads
            self._drain()

    def _drain(self) -> None:
        # On a worker: hash the queued batches in order until none is left.
        while True:
            with self._changed:
                if not self._queue:
                    self._draining = False
                    self._caller_waits = False
                    self._changed.notify()
                    return
                batch = self._queue[0]
            try:
                _hash_all(self._digest, batch)
            except BaseException as exc:  # handed to the caller, who raises it
                with self._changed:
                    self._failure = exc
                    self._queue.clear()
                continue
            with self._changed:
                self._queue.popleft()
                if self._caller_waits and len(self._queue) <= self._queue_limit // 2:
                    self._caller_waits = False
                    self._changed.notify()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def hexdigest(self) -> str:
        """The hex SHA-256 of everything added so far (more may be added after)."""
        with self._changed:
            while self._draining:
                self._caller_waits = True
                self._changed.wait()
            self._raise_failure()
        _hash_all(self._digest, self._batch)
        self._batch, self._batched = [], 0
        return self._digest.hexdigest()


class Readable(Protocol):
    """Anything with ``read(n)`` returning bytes: a file, a socket file, a request body."""

    def read(self, size: int = -1, /) -> bytes: ...


Source = bytes | bytearray | memoryview | Readable


class AsyncReadable(Protocol):
    """Anything with ``async read(n)`` returning bytes, such as FastAPI's ``UploadFile``."""

    async def read(self, size: int = -1, /) -> bytes: ...


AsyncSource = bytes | bytearray | memoryview | AsyncReadable | AsyncIterable[bytes] | Readable
"""What the async API uploads: bytes, an object with ``async read(n)``, an async iterable of
bytes (an async generator, a request's ``stream()``), or a sync stream (read in a thread)."""


@dataclass(frozen=True)
class PutResult:
    """What the pipeline measured while storing an object."""

    key: str
    size: int
    sha256: str
    content_type: str
    """Sniffed from the first bytes."""
    claimed_type: str | None
    """What the client said, normalised; recorded, never trusted."""


@contextmanager
def translating(action: str, key: str) -> Iterator[None]:
    """Turn any driver error raised inside into a toolkit error naming ``action`` and ``key``."""
    writing = action.startswith(("writing", "moving to"))
    try:
        yield
    except ToolkitError:
        raise
    except FileNotFoundError:
        raise NotFound("object", key) from None
    except (FileExistsError, IsADirectoryError, NotADirectoryError) as exc:
        # Writing: the key exists, or collides with a folder or an object on its path.
        # Reading: a key that names a folder or runs through an object is simply absent.
        if not writing:
            raise NotFound("object", key) from None
        if isinstance(exc, FileExistsError):
            raise Conflict(f"{action}: object {bounded_repr(key)} already exists") from None
        raise Conflict(f"{action}: {bounded_repr(key)} collides with an existing object") from None
    except PermissionError as exc:
        raise Unavailable(f"{action} {bounded_repr(key)}: permission denied ({exc})") from exc
    except Exception as exc:  # botocore, aiohttp, fsspec: nothing raw escapes
        raise Unavailable(f"{action} {bounded_repr(key)}: {type(exc).__name__}: {exc}") from exc


def check_max_bytes(max_bytes: int | None) -> int | None:
    """``max_bytes`` if it is None or a non-negative integer; InvalidInput otherwise."""
    if max_bytes is not None and (
        isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0
    ):
        raise InvalidInput(
            f"max_bytes must be a non-negative integer, got {bounded_repr(max_bytes)}",
            field="max_bytes",
            value=max_bytes,
        )
    return max_bytes


def reader(source: Source) -> Readable:
    """``source`` as something to ``read(n)`` from: bytes are wrapped, streams used as they are."""
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(source)
    if callable(getattr(source, "read", None)):
        return source
    raise InvalidInput(
        f"data must be bytes or a readable binary stream, got {type(source).__name__}",
        field="data",
        value=type(source).__name__,
    )


def as_bytes(chunk: object, what: str = "the upload stream") -> bytes:
    """A chunk read from a source, as bytes; InvalidInput if the source returned something else."""
    if not isinstance(chunk, bytes | bytearray | memoryview):
        raise InvalidInput(f"{what} returned {type(chunk).__name__}, not bytes", field="data")
    return bytes(chunk) if not isinstance(chunk, bytes) else chunk
