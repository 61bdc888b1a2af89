"""The async API's byte paths: native async on S3, a worker thread for blocking back ends.

Async-only code with no sync twin (declared by path in
``tools/async_to_sync.py``): the sync API calls the back ends directly.
:class:`AsyncStorage` is a back end's awaited interface (what
``AsyncFileStore.storage`` is; the async source makes it under ``if ASYNC:``,
so the generated sync modules never import this module).

* **S3** (:class:`~toolkit.storage.backends.S3Storage`): writes and reads are
  native asyncio, through :class:`~toolkit.aio.storage.s3.AsyncS3Objects`
  (the S3 requests of both APIs, written once; one per event loop, over an
  s3fs filesystem in asynchronous mode that the S3Storage makes with its
  settings): the multipart upload is the same code as the sync one, and a
  read streams ``get_object``'s body chunk by chunk.
* **Local disk, memory, pyfilesystem2**: there is no async file I/O worth
  having on Linux, so the back end's own blocking write (``O_NOFOLLOW``
  walk, temp file, ``fsync``, ``link``) runs in one worker thread
  (:func:`asyncio.to_thread`) that pulls each chunk from
  the upload pipeline on the event loop; reads are ``read(n)`` calls on the
  back end's stream, each in a thread. The loop never blocks on disk, but
  every chunk costs a thread hop.

Metadata calls (exists, info, list, move, delete, url) run the back end's
sync method in a worker thread on every back end, S3 included.

Either way the bytes go through the same upload pipeline (limit, SHA-256,
sniffing) and reads through the same SHA-256 check
(:class:`~toolkit.storage.base.Sha256Check`) as the sync API.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import inspect
import io
import weakref
from asyncio import to_thread
from collections.abc import AsyncIterable, AsyncIterator, Collection, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from toolkit.aio.storage.pipeline import put_stream
from toolkit.errors import InvalidInput
from toolkit.storage.backends import S3Storage
from toolkit.storage.base import (
    AsyncVerifyingReader,
    ObjectInfo,
    Retention,
    RetentionMode,
    Storage,
)
from toolkit.storage.keys import check_internal_or_key, check_key
from toolkit.storage.sniff import DEFAULT_ALLOWED_TYPES
from toolkit.storage.streams import (
    AsyncReadable,
    AsyncSource,
    PutResult,
    Readable,
    as_bytes,
    check_max_bytes,
    translating,
)

if TYPE_CHECKING:
    from toolkit.aio.storage.s3 import AsyncS3Objects

__all__ = [
    "AsyncStorage",
    "AsyncVerifyingReader",
    "async_reader",
]


# -- upload sources -------------------------------------------------------------------


class _BytesReader:
    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._stream = io.BytesIO(data)

    async def read(self, size: int = -1, /) -> bytes:
        return self._stream.read(size)


class _ThreadReader:
    """A sync stream (a file, a socket file) read in a worker thread, so the loop goes on."""

    def __init__(self, source: Readable) -> None:
        self._source = source

    async def read(self, size: int = -1, /) -> bytes:
        return await to_thread(self._source.read, size)


class _IterableReader:
    """``read(n)`` over an async iterable of chunks of any size."""

    def __init__(self, source: AsyncIterable[Any]) -> None:
        self._chunks = aiter(source)
        self._buffer = bytearray()
        self._eof = False

    async def read(self, size: int = -1, /) -> bytes:
        while not self._eof and (size < 0 or len(self._buffer) < size):
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                self._eof = True
                break
            self._buffer += as_bytes(chunk, "the upload iterable")
        if size < 0 or size >= len(self._buffer):
            data = bytes(self._buffer)
            self._buffer.clear()
        else:
            data = bytes(self._buffer[:size])
            del self._buffer[:size]
        return data


def async_reader(source: AsyncSource) -> AsyncReadable:
    """``source`` as something to ``await read(n)`` from.

    Bytes are wrapped; an object whose ``read`` is a coroutine function
    (FastAPI's ``UploadFile``) is used as it is; an async iterable of bytes
    (an async generator, Starlette's ``request.stream()``) is re-chunked; a
    sync stream is read in a worker thread.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        return _BytesReader(source)
    read = getattr(source, "read", None)
    if callable(read):
        if inspect.iscoroutinefunction(read):
            return source  # type: ignore[return-value]
        return _ThreadReader(source)  # type: ignore[arg-type]
    if hasattr(source, "__aiter__"):
        return _IterableReader(source)  # type: ignore[arg-type]
    raise InvalidInput(
        "data must be bytes, a readable binary stream (async or not) or an async iterable "
        f"of bytes, got {type(source).__name__}",
        field="data",
        value=type(source).__name__,
    )


# -- writing --------------------------------------------------------------------------


class _Abandoned(Exception):
    """The async caller was cancelled: the thread's write must fail and clean up."""


async def _write_in_thread(
    storage: Storage, key: str, chunks: AsyncIterator[bytes], content_type: str
) -> None:
    loop = asyncio.get_running_loop()
    abandoned = False
    producing: set[asyncio.Task[Any]] = set()

    async def next_chunk() -> bytes | None:
        # On the loop, like the cancellation below: either this starts first and is
        # cancelled with the others, or it sees ``abandoned`` and fails at once.
        if abandoned:
            raise _Abandoned(key)
        task = asyncio.current_task()
        assert task is not None
        producing.add(task)
        try:
            return await anext(chunks)
        except StopAsyncIteration:
            return None
        finally:
            producing.discard(task)

    def pull() -> Iterator[bytes]:
        # In the worker thread: each chunk is produced on the loop (the source, the limit,
        # the hash), then written here; any failure there fails the back end's write here.
        while True:
            chunk = asyncio.run_coroutine_threadsafe(next_chunk(), loop).result()
            if chunk is None:
                return
            yield chunk

    work = asyncio.ensure_future(to_thread(storage.write_chunks, key, pull(), content_type))
    try:
        await asyncio.shield(work)
    except asyncio.CancelledError:
        # Fail the thread's pending and next pulls, so the back end discards its
        # temporary write, and wait for that: a cancelled upload has left nothing.
        abandoned = True
        for task in producing:
            task.cancel()
        while not work.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({work})  # never raises the write's own error
        if not work.cancelled():
            work.exception()  # retrieved: the caller sees the cancellation, not this
        raise


# -- reading --------------------------------------------------------------------------


class _ThreadRaw:
    def __init__(self, stream: io.RawIOBase) -> None:
        self._stream = stream

    async def read(self, size: int, /) -> bytes:
        return await to_thread(self._stream.read, size) or b""

    async def close(self) -> None:
        await to_thread(self._stream.close)


# -- the async facade of a Storage --------------------------------------------------------


class AsyncStorage:
    """A :class:`~toolkit.storage.base.Storage`, awaited: the same methods and rules.

    Wraps a back end (:attr:`sync`, still usable directly). ``put``,
    ``open`` and ``get`` move the bytes natively on S3 and through a worker
    thread elsewhere (see the module docstring); ``exists``, ``info``,
    ``delete``, ``list``, ``move`` and ``url`` call the back end in a worker
    thread on every back end (metadata calls: s3fs's sync client runs them
    on its own event loop thread). :meth:`release` closes what this facade
    opened on the running loop; :meth:`aclose` also closes the back end.
    """

    def __init__(self, storage: Storage) -> None:
        if not isinstance(storage, Storage):
            raise InvalidInput(
                f"storage must be a Storage (open_storage(url)), got {type(storage).__name__}",
                field="storage",
                value=type(storage).__name__,
            )
        self.sync = storage
        self._s3_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncS3Objects]
        self._s3_by_loop = weakref.WeakKeyDictionary()

    @property
    def chunk_size(self) -> int:
        return self.sync.chunk_size

    def _s3_objects(self) -> AsyncS3Objects | None:
        """On S3, the running loop's S3 objects (made on first use); None on other back ends."""
        storage = self.sync
        if not isinstance(storage, S3Storage):
            return None
        loop = asyncio.get_running_loop()
        objects = self._s3_by_loop.get(loop)
        if objects is None:
            from toolkit.aio.storage.s3 import AsyncS3Objects  # noqa: PLC0415 - the s3 extra

            objects = AsyncS3Objects(
                storage.make_filesystem(loop=loop),
                bucket=storage.bucket,
                prefix=storage.prefix,
                part_size=storage.part_size,
            )
            self._s3_by_loop[loop] = objects
        return objects

    async def release(self) -> None:
        """Close the S3 client this facade opened on this event loop (if any)."""
        objects = self._s3_by_loop.pop(asyncio.get_running_loop(), None)
        if objects is not None:
            await objects.close()

    async def aclose(self) -> None:
        """:meth:`release`, then close the back end."""
        await self.release()
        await to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncStorage:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the public interface (see Storage) --------------------------------------------

    async def put(
        self,
        key: str,
        data: AsyncSource,
        *,
        max_bytes: int | None = None,
        allowed_types: Collection[str] | None = DEFAULT_ALLOWED_TYPES,
        claimed_type: str | None = None,
    ) -> PutResult:
        """Store ``data`` (bytes, an async or sync stream, an async iterable) at ``key``."""
        return await self._put(check_key(key), data, max_bytes, allowed_types, claimed_type)

    async def open(self, key: str, *, sha256: str | None = None) -> AsyncVerifyingReader:
        """A streaming read of ``key``; with ``sha256``, checked at the end."""
        return await self._open_internal(check_key(key), sha256=sha256)

    async def get(self, key: str, *, sha256: str | None = None) -> bytes:
        """All bytes of ``key``; with ``sha256``, IntegrityError unless they hash to it."""
        return await self._get_internal(check_key(key), sha256=sha256)

    async def exists(self, key: str) -> bool:
        """Whether an object is stored at ``key``."""
        return await to_thread(self.sync.exists, key)

    async def info(self, key: str) -> ObjectInfo:
        """Size and modification time of ``key``; NotFound if absent."""
        return await to_thread(self.sync.info, key)

    async def delete(self, key: str) -> bool:
        """Delete ``key``; returns whether it existed."""
        return await to_thread(self.sync.delete, key)

    async def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        """Every object whose key starts with ``prefix``, sorted by key."""
        return await to_thread(self.sync.list, prefix)

    async def move(self, source: str, target: str) -> None:
        """Move an object to a new key, create-only: Conflict if ``target`` exists."""
        await to_thread(self.sync.move, source, target)

    async def retain(self, key: str, *, mode: RetentionMode, until: datetime) -> Retention:
        """Put ``key`` under retention (S3 Object Lock); RetentionUnavailable without it."""
        return await to_thread(functools.partial(self.sync.retain, key, mode=mode, until=until))

    async def retention(self, key: str) -> Retention | None:
        """The retention ``key`` is under (S3 Object Lock), None when none."""
        return await to_thread(self.sync.retention, key)

    async def url(
        self,
        key: str,
        *,
        expires: int = 3600,
        filename: str | None = None,
        content_type: str | None = None,
    ) -> str:
        """A URL for ``key``: presigned on S3 (attachment, a safe type), else a locator."""
        return await to_thread(
            functools.partial(
                self.sync.url, key, expires=expires, filename=filename, content_type=content_type
            )
        )

    # -- the same for the toolkit's own keys (FileStore's staging area) ------------------

    async def _put(
        self,
        key: str,
        data: AsyncSource,
        max_bytes: int | None,
        allowed_types: Collection[str] | None,
        claimed_type: str | None,
    ) -> PutResult:
        max_bytes = check_max_bytes(max_bytes)
        return await put_stream(
            self._write,
            key,
            async_reader(data),
            max_bytes=max_bytes,
            allowed_types=allowed_types,
            claimed_type=claimed_type,
            chunk_size=self.sync.chunk_size,
        )

    async def _write(self, key: str, chunks: AsyncIterator[bytes], content_type: str) -> None:
        """Store every chunk at ``key`` (create-only, atomic, nothing left on failure).

        Natively async on S3; elsewhere the back end's blocking write in one thread.
        """
        s3 = self._s3_objects()
        if s3 is not None:
            await s3.write(key, chunks, content_type)
        else:
            await _write_in_thread(self.sync, key, chunks, content_type)

    async def _open_internal(self, key: str, *, sha256: str | None = None) -> AsyncVerifyingReader:
        """A streaming read of ``key`` (``_staging/`` keys included); NotFound if absent.

        Natively async on S3, ``read(n)`` calls in a thread elsewhere.
        """
        key = check_internal_or_key(key)
        s3 = self._s3_objects()
        if s3 is not None:
            with translating("opening", key):
                body = await s3.open(key)
            return AsyncVerifyingReader(body, key, sha256, self.chunk_size)
        stream = await to_thread(self.sync._open_internal, key)
        return AsyncVerifyingReader(_ThreadRaw(stream), key, sha256, self.chunk_size)

    async def _get_internal(self, key: str, *, sha256: str | None = None) -> bytes:
        async with await self._open_internal(key, sha256=sha256) as stream:
            return await stream.read()

    async def _exists_internal(self, key: str) -> bool:
        return await to_thread(self.sync._exists_internal, key)

    async def _info_internal(self, key: str) -> ObjectInfo:
        return await to_thread(self.sync._info_internal, key)

    async def _delete_internal(self, key: str) -> bool:
        return await to_thread(self.sync._delete_internal, key)

    async def _list_internal(self, prefix: str) -> builtins.list[ObjectInfo]:
        return await to_thread(self.sync._list_internal, prefix)

    async def _move_internal(self, source: str, target: str) -> None:
        await to_thread(self.sync._move_internal, source, target)

    async def _list_stale_uploads(self, older_than: datetime) -> builtins.list[str]:
        return await to_thread(self.sync._list_stale_uploads, older_than)

    async def _folds_case(self) -> bool:
        return await to_thread(self.sync._folds_case)

    def __repr__(self) -> str:
        return f"AsyncStorage({self.sync!r})"
