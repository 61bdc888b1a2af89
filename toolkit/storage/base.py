"""The :class:`Storage` interface and the one upload pipeline every back end shares.

A back end implements a handful of primitives (write a stream of chunks
atomically, open for reading, stat, list, delete, move, URL); the pipeline
around them (:mod:`toolkit.storage.pipeline`, generated from its async
source, so the async API runs the same code) is the same everywhere:

* the source (bytes or any object with ``read(n)``) is read in chunks of
  :attr:`Storage.chunk_size` (256 KiB), never whole;
* the first bytes are sniffed (:mod:`toolkit.storage.sniff`) and checked
  against the allow-list *before* anything is written; the client's claimed
  type is recorded, not trusted;
* SHA-256 and size are computed while streaming;
* the byte limit is enforced while streaming: the chunk that would cross it
  is never handed to the back end, and the back end discards what it wrote
  (a temporary file, a multipart upload), so nothing is left behind;
* writes are create-only by default: :class:`~toolkit.errors.Conflict` if the
  key exists, and when two writers race exactly one wins.

Every driver error (OSError, fsspec, botocore) comes out as a toolkit error:
NotFound, Conflict, InvalidInput, IntegrityError or Unavailable.
"""

from __future__ import annotations

import builtins
import inspect
import io
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import IO, Any, Final, Literal, Protocol, get_args

from toolkit.errors import (
    IntegrityError,
    InvalidInput,
    NotFound,
    RetentionUnavailable,
    bounded_repr,
)
from toolkit.storage.keys import (
    check_internal_or_key,
    check_key,
    check_prefix,
    clean_filename,
    is_staging_prefix,
)
from toolkit.storage.pipeline import put_stream
from toolkit.storage.sniff import (
    DEFAULT_ALLOWED_TYPES,
    download_type,
)
from toolkit.storage.streams import (
    CHUNK_SIZE,
    BackgroundSha256,
    PutResult,
    Source,
    as_bytes,
    check_max_bytes,
    reader,
    translating,
)


@dataclass(frozen=True)
class ObjectInfo:
    """What a back end knows about a stored object."""

    key: str
    size: int
    modified: datetime | None


RetentionMode = Literal["GOVERNANCE", "COMPLIANCE"]
"""S3 Object Lock's modes: GOVERNANCE can be lifted by a user with the right to bypass it,
COMPLIANCE by no one (not the account's root user) until the date passes."""


@dataclass(frozen=True)
class Retention:
    """The retention an object is under: no one can delete or overwrite it before ``until``."""

    mode: str
    until: datetime


def check_retention(mode: object, until: object) -> None:
    """InvalidInput unless ``mode`` is a :data:`RetentionMode` and ``until`` a future aware time."""
    if mode not in get_args(RetentionMode):
        raise InvalidInput(
            f"retention mode must be GOVERNANCE or COMPLIANCE, got {bounded_repr(mode)}",
            field="mode",
            value=mode,
        )
    if not isinstance(until, datetime) or until.tzinfo is None:
        raise InvalidInput(
            f"retain until must be a timezone-aware datetime, got {bounded_repr(until)}",
            field="until",
            value=until,
        )
    if until <= datetime.now(UTC):
        raise InvalidInput(
            f"retain until must be in the future, got {until.isoformat()}",
            field="until",
            value=until,
        )


class Sha256Check:
    """The SHA-256 of bytes read so far, checked against the recorded one at the end.

    Shared by the sync :class:`VerifyingReader` and the async API's reader, so
    both raise the same :class:`~toolkit.errors.IntegrityError`.
    """

    def __init__(self, key: str, expected: str) -> None:
        self.key = key
        self.expected = expected
        self._hash = BackgroundSha256()
        self.checked = False

    def update(self, data: bytes) -> None:
        # Hashed later, on another thread: a buffer the reader may reuse is copied first.
        self._hash.update(data if type(data) is bytes else bytes(data))

    def check(self) -> None:
        """IntegrityError unless what was read hashes to the recorded SHA-256 (checked once)."""
        self.checked = True
        actual = self._hash.hexdigest()
        if actual != self.expected:
            raise IntegrityError(
                f"object {self.key!r}: SHA-256 {actual} does not match the recorded {self.expected}"
            )


class VerifyingReader(io.RawIOBase):
    """A read stream that translates driver errors and, optionally, checks SHA-256 at the end.

    With ``sha256`` given, reading to the end raises
    :class:`~toolkit.errors.IntegrityError` if the bytes do not hash to it
    (a partial read checks nothing).
    """

    def __init__(self, raw: IO[bytes], key: str, sha256: str | None = None) -> None:
        super().__init__()
        self._raw = raw
        self._key = key
        self._check = Sha256Check(key, sha256) if sha256 else None

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        wanted = -1 if size is None or size < 0 else size
        whole = wanted < 0
        try:
            data = self._raw.read(wanted)
        except Exception:
            # Translated only when raised: entering translating() per read costs a
            # generator, which a copy in 64 KiB reads pays 16,000 times per GiB.
            with translating("reading", self._key):
                raise
        if self._check is not None:
            self._check.update(data)
            if (whole or not data) and not self._check.checked:
                self._check.check()
        return bytes(data)

    def readall(self) -> bytes:
        parts: list[bytes] = []
        while True:
            chunk = self.read(CHUNK_SIZE)
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            with translating("closing", self._key):
                self._raw.close()
        finally:
            super().close()


class AsyncRawReader(Protocol):
    """A back end's async byte stream (an S3 body, a file read in a thread).

    ``close`` may be a coroutine or not (aiobotocore's body closes at once
    over aiohttp, awaited over httpx): the reader awaits what it returns.
    """

    async def read(self, size: int, /) -> bytes: ...

    def close(self) -> Awaitable[None] | None: ...


class AsyncVerifyingReader:
    """:class:`VerifyingReader` for the async API: ``async for chunk in reader``, ``await read(n)``.

    With a SHA-256, reading to the end (the last chunk, or ``read()``)
    raises :class:`~toolkit.errors.IntegrityError` if the bytes do not hash
    to it (the same :class:`Sha256Check`); a partial read checks nothing.
    Driver errors come out as toolkit errors. Use it as an async context
    manager (or call :meth:`aclose`) to release the connection or file.
    """

    def __init__(
        self, raw: AsyncRawReader, key: str, sha256: str | None = None, chunk_size: int = CHUNK_SIZE
    ) -> None:
        self._raw = raw
        self._key = key
        self._check = Sha256Check(key, sha256) if sha256 else None
        self._chunk_size = chunk_size
        self.closed = False

    async def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (``-1``: all that is left); ``b""`` at the end."""
        if size is None or size < 0:
            parts: list[bytes] = []
            while chunk := await self.read(self._chunk_size):
                parts.append(chunk)
            return b"".join(parts)
        with translating("reading", self._key):
            data = as_bytes(await self._raw.read(size), "the object stream")
        if self._check is not None:
            self._check.update(data)
            if not data and not self._check.checked:
                self._check.check()
        return data

    def __aiter__(self) -> AsyncVerifyingReader:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read(self._chunk_size)
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        """Release the underlying stream (safe to repeat)."""
        if self.closed:
            return
        self.closed = True
        with translating("closing", self._key):
            closing = self._raw.close()
            if inspect.isawaitable(closing):
                await closing

    async def __aenter__(self) -> AsyncVerifyingReader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


def content_disposition(filename: str | None) -> str:
    """``attachment`` with an ASCII fallback name and the RFC 5987 UTF-8 name."""
    name = clean_filename(filename)
    if not name:
        return "attachment"
    fallback = "".join(ch if ch.isascii() and ch not in '"\\;' else "_" for ch in name)
    quoted = urllib.parse.quote(name, safe="")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quoted}"


DOWNLOAD_CSP: Final = "default-src 'none'; sandbox"
"""A Content-Security-Policy under which even a rendered file can run nothing."""


def download_headers(
    filename: str | None, content_type: str | None, size: int | None = None
) -> dict[str, str]:
    """The headers a download of a stored file must carry; serve every file with them.

    Always ``attachment``, ``nosniff`` and a sandboxing CSP; the type is
    :func:`~toolkit.storage.sniff.download_type` of ``content_type``, so
    active content (HTML, SVG, XML, JavaScript — whatever the row or the
    caller says) is never served as itself, and never inline.
    """
    headers = {
        "Content-Type": download_type(content_type),
        "Content-Disposition": content_disposition(filename),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": DOWNLOAD_CSP,
    }
    if size is not None:
        headers["Content-Length"] = str(size)
    return headers


class Storage(ABC):
    """Objects under keys: put, open, get, exists, delete, list, info, url, move.

    Keys from outside follow :func:`toolkit.storage.keys.check_key`; writes
    are create-only and atomic (no partial object is ever visible at the
    key). Subclasses implement the underscored primitives.
    """

    url_scheme: str = ""
    chunk_size: int = CHUNK_SIZE

    # -- primitives ----------------------------------------------------------------

    @abstractmethod
    def _write(self, key: str, chunks: Iterator[bytes], content_type: str) -> None:
        """Store every chunk at ``key``, create-only and atomic.

        On any exception (including the pipeline's limit error) nothing may
        remain at ``key`` nor in a temporary place; FileExistsError (or
        Conflict) if ``key`` exists.
        """

    @abstractmethod
    def _open(self, key: str) -> IO[bytes]: ...

    @abstractmethod
    def _info(self, key: str) -> ObjectInfo: ...

    @abstractmethod
    def _delete(self, key: str) -> bool: ...

    @abstractmethod
    def _list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    @abstractmethod
    def _move(self, source: str, target: str) -> None:
        """Move ``source`` to ``target``; FileExistsError if ``target`` exists."""

    def _url(self, key: str, expires: int, filename: str | None, content_type: str | None) -> str:
        return f"{self.url_scheme}{key}"

    def _list_stale_uploads(self, older_than: datetime) -> list[str]:
        """Remove unfinished writes (temp files, multipart uploads) older than a time."""
        return []

    def close(self) -> None:  # noqa: B027 - optional for back ends that hold nothing
        """Release what the back end holds (connections; a memory root's objects)."""

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the public interface -------------------------------------------------------

    def put(
        self,
        key: str,
        data: Source,
        *,
        max_bytes: int | None = None,
        allowed_types: Collection[str] | None = DEFAULT_ALLOWED_TYPES,
        claimed_type: str | None = None,
    ) -> PutResult:
        """Store ``data`` (bytes or a stream) at ``key``, through the safe pipeline.

        Raises InvalidInput for a bad key, a type outside ``allowed_types``
        (``None`` allows any) or more than ``max_bytes``; Conflict if the key
        exists; Unavailable if the back end fails. Nothing is left behind on
        failure.
        """
        return self._put(check_key(key), data, max_bytes, allowed_types, claimed_type)

    def _put(
        self,
        key: str,
        data: Source,
        max_bytes: int | None,
        allowed_types: Collection[str] | None,
        claimed_type: str | None,
    ) -> PutResult:
        max_bytes = check_max_bytes(max_bytes)
        return put_stream(
            self._write,
            key,
            reader(data),
            max_bytes=max_bytes,
            allowed_types=allowed_types,
            claimed_type=claimed_type,
            chunk_size=self.chunk_size,
        )

    def open(self, key: str, *, sha256: str | None = None) -> io.RawIOBase:
        """A streaming read of ``key`` (use it as a context manager); NotFound if absent.

        With ``sha256``, reading to the end raises IntegrityError on a mismatch.
        """
        return self._open_internal(check_key(key), sha256=sha256)

    def get(self, key: str, *, sha256: str | None = None) -> bytes:
        """All bytes of ``key``; with ``sha256``, IntegrityError unless they hash to it."""
        return self._get_internal(check_key(key), sha256=sha256)

    def exists(self, key: str) -> bool:
        """Whether an object is stored at ``key``."""
        return self._exists_internal(check_key(key))

    def info(self, key: str) -> ObjectInfo:
        """Size and modification time of ``key``; NotFound if absent."""
        return self._info_internal(check_key(key))

    def delete(self, key: str) -> bool:
        """Delete ``key``; returns whether it existed."""
        return self._delete_internal(check_key(key))

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix``, sorted by key.

        ``""`` lists everything, the toolkit's ``_staging/`` objects included
        (a ``_staging/`` prefix itself is the toolkit's, refused here).
        """
        return self._list_internal(check_prefix(prefix))

    def move(self, source: str, target: str) -> None:
        """Move an object to a new key, create-only: Conflict if ``target`` exists."""
        self._move_internal(check_key(source, "source"), check_key(target, "target"))

    def retain(self, key: str, *, mode: RetentionMode, until: datetime) -> Retention:
        """Put ``key`` under retention until ``until`` (S3 Object Lock); the retention it is under.

        Until then no one can delete or overwrite the object (in GOVERNANCE
        mode, a user allowed to bypass it can). RetentionUnavailable on back
        ends without Object Lock: local disk, memory and pyfilesystem2, whose
        objects are protected by create-only writes alone, and an S3 bucket
        without it. InvalidInput for a bad key, mode or time.
        """
        check_key(key)
        check_retention(mode, until)
        raise RetentionUnavailable(
            f"the {type(self).__name__} back end cannot put objects under retention "
            "(S3 Object Lock): its objects are protected by create-only writes alone"
        )

    def retention(self, key: str) -> Retention | None:
        """The retention ``key`` is under (S3 Object Lock), None when none; NotFound if absent."""
        self.info(key)
        return None

    def write_chunks(self, key: str, chunks: Iterator[bytes], content_type: str) -> None:
        """Store chunks at ``key`` as they come: the back end's own create-only, atomic write.

        The sink of the upload pipeline, which has already limited, sniffed
        and hashed the chunks; the async API runs it in a worker thread
        behind its own pipeline. Applications call :meth:`put`. Takes the
        toolkit's ``_staging/`` keys too; errors are the driver's (the
        pipeline translates them).
        """
        self._write(check_internal_or_key(key), chunks, content_type)

    # -- the same, for keys the toolkit makes for itself (``_staging/...``) ---------------
    # The public methods above refuse those keys (the grammar says they are internal);
    # FileStore reaches its staging area through these.

    def _open_internal(self, key: str, *, sha256: str | None = None) -> VerifyingReader:
        key = check_internal_or_key(key)
        with translating("opening", key):
            raw = self._open(key)
        return VerifyingReader(raw, key, sha256)

    def _get_internal(self, key: str, *, sha256: str | None = None) -> bytes:
        with self._open_internal(key, sha256=sha256) as stream:
            return stream.readall()

    def _exists_internal(self, key: str) -> bool:
        try:
            self._info_internal(key)
        except NotFound:
            return False
        return True

    def _info_internal(self, key: str) -> ObjectInfo:
        key = check_internal_or_key(key)
        with translating("inspecting", key):
            return self._info(key)

    def _delete_internal(self, key: str) -> bool:
        key = check_internal_or_key(key)
        try:
            with translating("deleting", key):
                return self._delete(key)
        except NotFound:
            return False

    def _list_internal(self, prefix: str) -> builtins.list[ObjectInfo]:
        prefix = prefix if is_staging_prefix(prefix) else check_prefix(prefix)
        with translating("listing", prefix or "<root>"):
            return sorted(self._list(prefix), key=lambda info: info.key)

    def _move_internal(self, source: str, target: str) -> None:
        source = check_internal_or_key(source, "source")
        target = check_internal_or_key(target, "target")
        with translating("moving", source):
            if not self._exists_fast(source):
                raise NotFound("object", source)
        with translating("moving to", target):
            self._move(source, target)

    def _folds_case(self) -> bool:
        """Whether keys differing only in case name one object (a case-insensitive folder)."""
        return False

    def _exists_fast(self, key: str) -> bool:
        try:
            self._info(key)
        except FileNotFoundError:
            return False
        return True

    def url(
        self,
        key: str,
        *,
        expires: int = 3600,
        filename: str | None = None,
        content_type: str | None = None,
    ) -> str:
        """A URL for ``key``: presigned on S3, else a locator (``file://``, ``memory://``).

        A presigned URL makes S3 answer with ``attachment`` and
        :func:`~toolkit.storage.sniff.download_type` of ``content_type``
        (``application/octet-stream`` when none is given), so active content
        is never served inline. A locator carries no headers: an application
        that serves the bytes itself must send :func:`download_headers`.
        """
        key = check_key(key)
        if isinstance(expires, bool) or not isinstance(expires, int) or not 1 <= expires <= 604800:
            raise InvalidInput(
                f"expires must be 1 to 604800 seconds, got {bounded_repr(expires)}",
                field="expires",
                value=expires,
            )
        with translating("signing a URL for", key):
            return self._url(key, expires, filename, content_type)
