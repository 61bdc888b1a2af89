"""Files whose bytes and row stay consistent: stage, record, promote, sweep.

The protocol (every step may crash; none leaves a row pointing at missing bytes):

1. :meth:`AsyncFileStore.stage` streams the bytes through the safe pipeline
   (limit, SHA-256, sniffed type) to ``_staging/<file id>``, create-only.
   The final key ``<owner>/<purpose>/<file id>`` is chosen now. A crash
   here leaves at most a temporary file or an unfinished multipart upload,
   never an object at the final key.
2. :meth:`AsyncFileStore.record` inserts the row (status ``staged``) in the
   caller's transaction. If the transaction rolls back, the staged object
   has no row: :meth:`discard` removes it at once, or the sweep does later.
3. After the commit, :meth:`AsyncFileStore.promote` moves the bytes from the
   staging key to the final key (a ``link``/``unlink`` on local disk, a
   server-side copy and delete on S3), then marks the row ``stored``.

Between 2 and the end of 3 the row is ``staged`` and its bytes are at the
staging key, at the final key, or (on S3, between copy and delete) at
both: reads of a staged row look at the final key and fall back to the
staging key, so a committed row always finds its bytes.

``toolkit storage sweep`` (:meth:`AsyncFileStore.sweep`) reconciles what a crash
left behind, touching only things older than a grace period (which must
exceed the longest transaction between stage and commit):

* unfinished writes (``.tmp-*`` files, multipart uploads) are removed;
* staged rows are promoted; one whose bytes are nowhere is deleted and
  reported as lost (it cannot happen unless someone removed the bytes);
* staged objects without a row (the transaction rolled back) are deleted,
  and those whose row is already stored are deleted as leftovers;
* objects at a file key (``<uuid>/<purpose>/<uuid>``) without a row (the
  row was deleted, the bytes not yet) are deleted. Other keys, written
  with :meth:`Storage.put` directly, are never touched.

Reads verify the SHA-256 recorded in the row by default
(:class:`~toolkit.errors.IntegrityError` on a mismatch).

The async API (this module's twin under ``toolkit/aio/``, over the same
Storage objects) uploads from bytes, an ``async read(n)`` object such
as FastAPI's ``UploadFile``, an async iterable of bytes or a sync stream,
and ``open`` returns an async iterator of chunks, checked at the end. On
S3 the bytes move with s3fs's native asyncio (aiobotocore on the event
loop); on local disk (and the memory and pyfilesystem2 back ends) the
back end's blocking code runs in a worker thread, one ``read``/``write``
at a time, so the loop never waits on the disk. Listing, moving, deleting
and existence checks go through a worker thread on every back end.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from types import TracebackType
from uuid import UUID

from toolkit.aio.concurrency import ASYNC
from toolkit.aio.db.database import AsyncConnection, AsyncDatabase
from toolkit.aio.db.patterns import Audit, parse_id
from toolkit.aio.storage import async_io
from toolkit.aio.storage import repository as files
from toolkit.errors import Conflict, InvalidInput, NotFound
from toolkit.storage.base import AsyncVerifyingReader, Storage, download_headers
from toolkit.storage.keys import (
    STAGING_PREFIX,
    check_key,
    check_purpose,
    clean_filename,
    file_key,
    staging_key,
)
from toolkit.storage.protocol import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_MAX_BYTES,
    FILE_KEY,
    SWEEP_BATCH,
    StagedFile,
    SweepReport,
    describe,
)
from toolkit.storage.records import File
from toolkit.storage.sniff import DEFAULT_ALLOWED_TYPES
from toolkit.storage.streams import AsyncSource

__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "DEFAULT_MAX_BYTES",
    "AsyncFileStore",
    "StagedFile",
    "SweepReport",
    "describe",
]


class AsyncFileStore:
    """A Storage and the files table, kept consistent (see the module docstring).

    ``storage`` is a back end (:func:`~toolkit.storage.open_storage`), the
    same objects in both APIs; in the async API :attr:`storage` is that
    back end behind an async facade, whose methods are awaited. There,
    close the store (or use it as a context manager) to release the S3
    client it opened on the event loop; the back end stays open.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        allowed_types: Collection[str] | None = DEFAULT_ALLOWED_TYPES,
    ) -> None:
        if ASYNC:
            self.storage = async_io.AsyncStorage(storage)
        else:
            self.storage = storage
        self.max_bytes = max_bytes
        self.allowed_types = allowed_types

    async def aclose(self) -> None:
        """Release what the async API opened on this event loop; the Storage stays open."""
        if ASYNC:
            await self.storage.release()

    async def __aenter__(self) -> AsyncFileStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- writing ------------------------------------------------------------------------

    async def stage(
        self,
        data: AsyncSource,
        *,
        owner_id: UUID | str,
        purpose: str,
        original_name: str | None = None,
        claimed_type: str | None = None,
        max_bytes: int | None = None,
        allowed_types: Collection[str] | bool | None = True,
    ) -> StagedFile:
        """Stream ``data`` to a staging key through the safe pipeline (step 1).

        ``data`` is bytes or a stream (``read(n)``); in the async API also an
        object with ``async read(n)`` (FastAPI's ``UploadFile``) or an async
        iterable of bytes. ``allowed_types=True`` uses the store's
        allow-list, ``None`` allows any.
        """
        owner = parse_id(owner_id, "owner_id")
        purpose = check_purpose(purpose)
        file_id = uuid.uuid4()
        staging = staging_key(file_id)
        result = await self.storage._put(  # the staging prefix is the store's own
            staging,
            data,
            self.max_bytes if max_bytes is None else max_bytes,
            self.allowed_types if allowed_types is True else allowed_types,  # type: ignore[arg-type]
            claimed_type,
        )
        return StagedFile(
            id=file_id,
            owner_id=owner,
            purpose=purpose,
            key=file_key(owner, purpose, file_id),
            staging_key=staging,
            original_name=clean_filename(original_name),
            size=result.size,
            sha256=result.sha256,
            content_type=result.content_type,
            claimed_type=result.claimed_type,
        )

    async def record(
        self,
        conn: AsyncConnection,
        staged: StagedFile,
        *,
        execution_id: UUID | str | None = None,
        session_id: UUID | str | None = None,
        audit: Audit | None = None,
    ) -> File:
        """Insert the row of ``staged`` in the caller's transaction (step 2)."""
        return await files.create(
            conn,
            {
                "id": staged.id,
                "owner_id": staged.owner_id,
                "purpose": staged.purpose,
                "key": staged.key,
                "original_name": staged.original_name,
                "size": staged.size,
                "content_type": staged.content_type,
                "claimed_type": staged.claimed_type,
                "sha256": staged.sha256,
                "execution_id": None
                if execution_id is None
                else parse_id(execution_id, "execution_id"),
                "session_id": None if session_id is None else parse_id(session_id, "session_id"),
            },
            audit=audit,
        )

    async def promote(self, conn: AsyncConnection, file: StagedFile | File) -> File:
        """Move committed bytes to their final key and mark the row stored (step 3).

        NotFound (and the staged bytes discarded) if the row was never
        committed. Safe to repeat, and safe to race with the sweep.
        """
        try:
            row = await files.get(conn, file.id)
        except NotFound:
            await self.storage._delete_internal(staging_key(file.id))
            raise
        if row.status == "stored":
            return row
        return await self._promote_row(conn, row)

    async def _promote_row(self, conn: AsyncConnection, row: File) -> File:
        staging = staging_key(row.id)
        try:
            await self.storage._move_internal(staging, check_key(row.key))
        except NotFound:
            if not await self.storage.exists(row.key):
                raise
        except Conflict:
            # Copied before a crash, not yet deleted (S3): the final bytes are there.
            await self.storage._delete_internal(staging)
        stored = await files.mark_stored(conn, row.id)
        return stored if stored is not None else await files.get(conn, row.id)

    async def discard(self, staged: StagedFile) -> None:
        """Remove staged bytes whose transaction rolled back (the sweep would, later)."""
        await self.storage._delete_internal(staged.staging_key)

    async def store(
        self,
        database: AsyncDatabase,
        data: AsyncSource,
        *,
        owner_id: UUID | str,
        purpose: str,
        original_name: str | None = None,
        claimed_type: str | None = None,
        execution_id: UUID | str | None = None,
        session_id: UUID | str | None = None,
        max_bytes: int | None = None,
        audit: Audit | None = None,
    ) -> File:
        """Stage, record in a transaction of its own, and promote: the whole protocol.

        A failure (or, in the async API, a cancellation) before the commit
        leaves nothing: no row, and the staged bytes removed.
        """
        staged = await self.stage(
            data,
            owner_id=owner_id,
            purpose=purpose,
            original_name=original_name,
            claimed_type=claimed_type,
            max_bytes=max_bytes,
        )
        try:
            async with database.transaction() as tx:
                await self.record(
                    tx, staged, execution_id=execution_id, session_id=session_id, audit=audit
                )
        except BaseException:
            await self.discard(staged)
            raise
        async with database.connection() as conn:
            return await self.promote(conn, staged)

    # -- reading ------------------------------------------------------------------------

    async def _location(self, file: File) -> str:
        if file.status == "stored" or await self.storage.exists(file.key):
            return file.key
        staging = staging_key(file.id)
        if await self.storage._exists_internal(staging):
            return staging
        return file.key

    async def open(self, file: File, *, verify: bool = True) -> AsyncVerifyingReader:
        """A streaming read of a file's bytes; reading to the end checks the SHA-256.

        In the async API, an async iterator of chunks::

            async with await store.open(row) as chunks:
                async for chunk in chunks:  # IntegrityError after the last one on a mismatch
                    ...
        """
        return await self.storage._open_internal(
            await self._location(file), sha256=file.sha256 if verify else None
        )

    async def read(self, file: File, *, verify: bool = True) -> bytes:
        """All bytes of a file; IntegrityError if they do not hash to the recorded SHA-256."""
        return await self.storage._get_internal(
            await self._location(file), sha256=file.sha256 if verify else None
        )

    async def url(self, file: File, *, expires: int = 3600) -> str:
        """A URL for the file: presigned on S3, a locator elsewhere.

        On S3 the download is ``attachment`` with a safe type (active content
        such as HTML or SVG is never served as itself); an application that
        serves the bytes itself must send :meth:`headers`.
        """
        if file.status != "stored":
            raise InvalidInput(
                f"file {file.id} is not promoted yet (status {file.status})", field="status"
            )
        return await self.storage.url(
            file.key, expires=expires, filename=file.original_name, content_type=file.content_type
        )

    @staticmethod
    def headers(file: File) -> dict[str, str]:
        """The headers the application must serve the file's bytes with.

        ``attachment``, ``nosniff``, a sandboxing CSP, the size, and the
        sniffed type when it is inert; any active type (HTML, SVG, XML,
        JavaScript — say, from a tampered row) is replaced by ``text/plain``
        or ``application/octet-stream``. Serving a file with other headers
        (inline, or typed from its name) can run an uploader's script.
        """
        return download_headers(file.original_name, file.content_type, file.size)

    # -- deleting and sweeping ----------------------------------------------------------

    async def delete(
        self, database: AsyncDatabase, file_id: UUID | str, *, audit: Audit | None = None
    ) -> File:
        """Delete the row, then the bytes (a crash in between leaves an orphan for the sweep)."""
        async with database.transaction() as tx:
            row = await files.delete(tx, file_id, audit=audit)
        if row is None:
            raise NotFound("file", file_id)
        await self.storage.delete(row.key)
        await self.storage._delete_internal(staging_key(row.id))
        return row

    async def sweep(
        self,
        conn: AsyncConnection,
        *,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        now: datetime | None = None,
    ) -> SweepReport:
        """Reconcile storage and rows, touching only what is older than ``grace_seconds``."""
        if isinstance(grace_seconds, bool) or not isinstance(grace_seconds, int | float):
            raise InvalidInput("grace_seconds must be a number", field="grace_seconds")
        if grace_seconds < 0:
            raise InvalidInput("grace_seconds must be >= 0", field="grace_seconds")
        cutoff = (now or datetime.now(UTC)) - timedelta(seconds=grace_seconds)
        report = SweepReport()
        report.partial_uploads = await self.storage._list_stale_uploads(cutoff)
        await self._sweep_staged_rows(conn, grace_seconds, report)
        await self._sweep_staged_objects(conn, cutoff, report)
        await self._sweep_orphans(conn, cutoff, report)
        return report

    async def _sweep_staged_rows(
        self, conn: AsyncConnection, grace: float, report: SweepReport
    ) -> None:
        while True:
            rows = await files.staged_before(conn, grace, limit=SWEEP_BATCH)
            for row in rows:
                try:
                    await self._promote_row(conn, row)
                    report.promoted.append(row.id)
                except NotFound:
                    await files.delete(conn, row.id)
                    report.lost_rows.append(row.id)
            if len(rows) < SWEEP_BATCH:
                return

    async def _sweep_staged_objects(
        self, conn: AsyncConnection, cutoff: datetime, report: SweepReport
    ) -> None:
        listed = await self.storage._list_internal(STAGING_PREFIX)
        staged = [info.key for info in listed if info.modified is None or info.modified < cutoff]
        for start in range(0, len(staged), SWEEP_BATCH):
            ids: dict[UUID, str] = {}
            for key in staged[start : start + SWEEP_BATCH]:
                try:
                    ids[UUID(key[len(STAGING_PREFIX) :])] = key
                except ValueError:
                    await self.storage._delete_internal(key)
                    report.staged_without_row.append(key)
            rows_by_id = {row.id: row for row in await files.get_many(conn, list(ids))}
            for file_id, key in ids.items():
                row = rows_by_id.get(file_id)
                if row is None:
                    await self.storage._delete_internal(key)
                    report.staged_without_row.append(key)
                elif row.status == "staged":
                    await self._promote_row(conn, row)
                    report.promoted.append(row.id)
                elif await self.storage.exists(row.key):
                    await self.storage._delete_internal(key)
                    report.staged_leftovers.append(key)

    async def _sweep_orphans(
        self, conn: AsyncConnection, cutoff: datetime, report: SweepReport
    ) -> None:
        # On a case-insensitive folder an object may be listed in another case than its
        # row's key (a folder first made as "ABC..." holds "abc.../attachment/<id>"): the
        # listed key is compared case-folded there, so it is neither missed nor mistaken
        # for an orphan. Elsewhere keys differing in case are different objects, and only
        # the exact lower-case form the toolkit makes is a file key.
        folds = await self.storage._folds_case()
        candidates = [
            (info.key, info.key.lower() if folds else info.key)
            for info in await self.storage.list("")
            if info.modified is None or info.modified < cutoff
        ]
        candidates = [
            (key, canonical) for key, canonical in candidates if FILE_KEY.match(canonical)
        ]
        for start in range(0, len(candidates), SWEEP_BATCH):
            batch = candidates[start : start + SWEEP_BATCH]
            known = {
                row.key
                for row in await files.with_keys(conn, [canonical for _, canonical in batch])
            }
            for key, canonical in batch:
                if canonical not in known:
                    await self.storage.delete(key)
                    report.orphans.append(key)
