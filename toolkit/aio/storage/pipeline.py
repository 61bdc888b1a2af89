"""The upload pipeline every write goes through, and the one put path over it.

:class:`AsyncUploadPipeline` reads the source in chunks, sniffs the type
from the first bytes and checks it against the allow-list before anything
is written, and computes size and SHA-256 while streaming; the chunk that
would cross the byte limit raises InvalidInput and is never handed to the
back end, which then discards what it wrote; a source that raises
(a client disconnect, a broken generator) raises SourceFailed, and the back
end discards likewise. :func:`put_stream` runs it
into a back end: :meth:`Storage.put` and the FileStore both go through it.

The caller hands over the source as a reader and the back end's write: in
the sync API :func:`~toolkit.storage.streams.reader` and ``Storage._write``; in
the async API ``async_reader`` and the write of the storage facade in
``toolkit/aio/storage/async_io.py`` (natively async on S3, the back end's own
blocking ``Storage.write_chunks`` in a worker thread elsewhere).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection

from toolkit.errors import InvalidInput, SourceFailed, ToolkitError
from toolkit.storage.sniff import SNIFF_BYTES, normalise_type, sniff
from toolkit.storage.streams import (
    CHUNK_SIZE,
    AsyncReadable,
    BackgroundSha256,
    PutResult,
    as_bytes,
    check_max_bytes,
    translating,
)

__all__ = ["AsyncUploadPipeline", "put_stream"]


class AsyncUploadPipeline:
    """Chunks of an upload, with its type sniffed up front and size, hash and limit on the way.

    :meth:`prepare` reads the first bytes, sniffs and checks the type; then
    iterating yields every chunk (the first bytes included), updating
    :attr:`size` and :attr:`sha256`, and raises InvalidInput as soon as a
    chunk would cross ``max_bytes`` — that chunk is never yielded.
    """

    def __init__(
        self,
        source: AsyncReadable,
        *,
        max_bytes: int | None,
        allowed_types: Collection[str] | None,
        claimed_type: str | None,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self.max_bytes = check_max_bytes(max_bytes)
        self._reader = source
        self.allowed_types = allowed_types
        self.claimed_type = normalise_type(claimed_type)
        self.chunk_size = chunk_size
        self.size = 0
        self._hash = BackgroundSha256()
        self._head = b""
        self._eof = False
        self.content_type = ""

    async def _read(self, size: int) -> bytes:
        # The source is the caller's: its failure is no outage (Unavailable would say "retry").
        # A toolkit error it raises (say, reading from another store) keeps its meaning.
        try:
            chunk = await self._reader.read(size)
        except ToolkitError:
            raise
        except Exception as exc:
            raise SourceFailed(exc) from exc
        return as_bytes(chunk)

    def _check_limit(self, more: int) -> None:
        if self.max_bytes is not None and self.size + more > self.max_bytes:
            raise InvalidInput(
                f"upload is larger than the limit of {self.max_bytes} bytes",
                field="size",
                value=self.size + more,
            )

    async def prepare(self) -> str:
        """Read up to :data:`SNIFF_BYTES`, sniff the type, check it; returns the type."""
        parts: list[bytes] = []
        have = 0
        while have < SNIFF_BYTES:
            chunk = await self._read(SNIFF_BYTES - have)
            if not chunk:
                self._eof = True
                break
            parts.append(chunk)
            have += len(chunk)
            if self.max_bytes is not None and have > self.max_bytes:
                break
        self._head = b"".join(parts)
        self._check_limit(len(self._head))
        self.content_type = sniff(self._head, complete=self._eof)
        if self.allowed_types is not None and self.content_type not in self.allowed_types:
            raise InvalidInput(
                f"content type {self.content_type} (sniffed from the first bytes; "
                f"claimed {self.claimed_type or 'nothing'}) is not allowed",
                field="content_type",
                value=self.content_type,
            )
        return self.content_type

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._head:
            self.size += len(self._head)
            self._hash.update(self._head)
            yield self._head
            self._head = b""
        while not self._eof:
            chunk = await self._read(self.chunk_size)
            if not chunk:
                self._eof = True
                break
            self._check_limit(len(chunk))
            self.size += len(chunk)
            self._hash.update(chunk)
            yield chunk

    @property
    def sha256(self) -> str:
        """The hex SHA-256 of what was yielded so far."""
        return self._hash.hexdigest()


async def put_stream(
    write: Callable[[str, AsyncIterator[bytes], str], Awaitable[None]],
    key: str,
    source: AsyncReadable,
    *,
    max_bytes: int | None,
    allowed_types: Collection[str] | None,
    claimed_type: str | None,
    chunk_size: int = CHUNK_SIZE,
) -> PutResult:
    """Run ``source`` through the pipeline into ``write(key, chunks, content_type)``.

    ``key`` is already checked; ``write`` stores the chunks create-only and
    atomically, leaving nothing when they raise (the limit, a bad source).
    """
    pipeline = AsyncUploadPipeline(
        source,
        max_bytes=max_bytes,
        allowed_types=allowed_types,
        claimed_type=claimed_type,
        chunk_size=chunk_size,
    )
    content_type = await pipeline.prepare()
    with translating("writing", key):
        await write(key, aiter(pipeline), content_type)
    return PutResult(
        key=key,
        size=pipeline.size,
        sha256=pipeline.sha256,
        content_type=content_type,
        claimed_type=pipeline.claimed_type,
    )
