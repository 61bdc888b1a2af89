"""What every byte path of storage shares: sources, chunks, the put result, error translation.

The blocks under both :mod:`toolkit.storage.base` (the :class:`Storage`
interface) and :mod:`toolkit.storage.pipeline` (the upload pipeline the
interface's ``put`` runs): kept here so that the pipeline needs nothing from
the interface and the two do not import each other.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterable, Iterator
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

CHUNK_SIZE: Final = 128 << 10
"""Bytes read from the source per step (128 KiB: a chunk stays in the CPU cache while it is
hashed and written, which measured faster than 1 MiB chunks)."""


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
