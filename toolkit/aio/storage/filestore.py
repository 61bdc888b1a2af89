"""Files whose bytes and row stay consistent: stage, record, promote, sweep.

The protocol (every step may crash; none leaves a row pointing at missing bytes):

1. :meth:`AsyncFileStore.stage` streams the bytes through the safe pipeline
   (limit, SHA-256, sniffed type) to ``<area>_staging/<file id>``, create-only.
   The final key ``<area><owner>/<purpose>/<file id>`` is chosen now. A crash
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
* objects at a file key (``<area><uuid>/<purpose>/<uuid>``) without a row
  (the row was deleted, the bytes not yet) are deleted. Other keys, written
  with :meth:`Storage.put` directly, are never touched.

Reads verify the SHA-256 recorded in the row by default
(:class:`~toolkit.errors.IntegrityError` on a mismatch).

Tenants. A store works for one tenant: ``AsyncFileStore(storage, tenant=t)``,
or ``store.for_tenant(t)`` per request (none: the default tenant, as a
single workspace and a superuser without a tenant are). Every key it makes
starts with that tenant's area, ``<area>`` above (``t/<tenant>/``, nothing
for the default tenant: :func:`~toolkit.storage.keys.tenant_area`); the
transactions it opens are that tenant's; a transaction handed to it must be
that tenant's (:func:`~toolkit.aio.db.database.tenant_of`, no round trip),
and a row whose key is not one of that tenant's file keys (forged or
corrupted: it points into another tenant's area) is refused with
:class:`~toolkit.errors.TenantMismatch` before any byte is read, written
or deleted. Row-level security keeps the other tenants' rows out of sight;
these checks keep their bytes out of reach. A sweep touches its tenant's
area only.

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

import copy
import uuid
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from types import TracebackType
from uuid import UUID

from toolkit.aio.concurrency import ASYNC
from toolkit.aio.db.database import AsyncConnection, AsyncDatabase, tenant_of
from toolkit.aio.db.patterns import AuditWrite, parse_id
from toolkit.aio.storage import async_io
from toolkit.aio.storage import repository as files
from toolkit.errors import Conflict, InvalidInput, NotFound, TenantMismatch
from toolkit.storage.base import AsyncVerifyingReader, Storage, download_headers
from toolkit.storage.keys import (
    check_purpose,
    clean_filename,
    file_key,
    is_file_key,
    staging_key,
    staging_prefix,
    tenant_area,
)
from toolkit.storage.protocol import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_MAX_BYTES,
    SWEEP_BATCH,
    StagedFile,
    SweepReport,
    describe,
)
from toolkit.storage.records import File
from toolkit.storage.sniff import DEFAULT_ALLOWED_TYPES
from toolkit.storage.streams import AsyncSource
from toolkit.tenants import tenant_id

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

    ``tenant`` (a UUID or its text) is the tenant the store works for; None
    is the default tenant (see the module docstring, "Tenants").
    """

    def __init__(
        self,
        storage: Storage,
        *,
        tenant: UUID | str | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        allowed_types: Collection[str] | None = DEFAULT_ALLOWED_TYPES,
    ) -> None:
        if ASYNC:
            self.storage = async_io.AsyncStorage(storage)
        else:
            self.storage = storage
        self._tenant = None if tenant is None else tenant_id(tenant)
        self.max_bytes = max_bytes
        self.allowed_types = allowed_types

    @property
    def tenant(self) -> UUID | None:
        """The tenant this store works for; None for the default tenant."""
        return self._tenant

    def for_tenant(self, tenant: UUID | str) -> AsyncFileStore:
        """This store working for ``tenant`` (a UUID or its text): cheap, one per request.

        It shares this store's Storage (in the async API, its facade and S3
        client: closing either store releases that client, made again on
        next use) and limits. None is refused (InvalidInput), so a tenant
        that was never resolved cannot fall back to the default one.
        """
        bound = copy.copy(self)
        bound._tenant = tenant_id(tenant)
        return bound

    def _check_transaction(self, conn: AsyncConnection) -> None:
        """TenantMismatch unless ``conn``'s transaction is this store's tenant's."""
        if tenant_area(tenant_of(conn)) != tenant_area(self._tenant):
            raise TenantMismatch(
                "the transaction's tenant is not the file store's: run it in "
                "database.transaction(tenant=store.tenant), or use store.for_tenant(...)",
                table="files",
            )

    def _key_of(self, file: File) -> str:
        """``file.key`` if it is one of this tenant's file keys; TenantMismatch otherwise."""
        if not is_file_key(file.key, tenant=self._tenant):
            raise TenantMismatch(
                f"file {file.id}: its key is not one of this tenant's file keys (a forged "
                "or corrupted row); nothing was read, written or deleted",
                table="files",
            )
        return file.key

    def _staging(self, file_id: UUID) -> str:
        return staging_key(file_id, tenant=self._tenant)

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
        staging = self._staging(file_id)
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
            key=file_key(owner, purpose, file_id, tenant=self._tenant),
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
        audit: AuditWrite | None = None,
    ) -> File:
        """Insert the row of ``staged`` in the caller's transaction (step 2).

        The transaction must be this store's tenant's, and ``staged`` staged
        by a store of the same tenant (TenantMismatch otherwise).
        """
        self._check_transaction(conn)
        if staged.key != file_key(staged.owner_id, staged.purpose, staged.id, tenant=self._tenant):
            raise TenantMismatch(
                f"file {staged.id} was staged for another tenant than the file store's",
                table="files",
            )
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
        committed. Safe to repeat, and safe to race with the sweep. ``conn``
        must be this store's tenant's (TenantMismatch otherwise).
        """
        self._check_transaction(conn)
        try:
            row = await files.get(conn, file.id)
        except NotFound:
            await self.storage._delete_internal(self._staging(file.id))
            raise
        if row.status == "stored":
            return row
        return await self._promote_row(conn, row)

    async def _promote_row(self, conn: AsyncConnection, row: File) -> File:
        staging = self._staging(row.id)
        key = self._key_of(row)
        try:
            await self.storage._move_internal(staging, key)
        except NotFound:
            if not await self.storage.exists(key):
                raise
        except Conflict:
            # Copied before a crash, not yet deleted (S3): the final bytes are there.
            await self.storage._delete_internal(staging)
        stored = await files.mark_stored(conn, row.id)
        return stored if stored is not None else await files.get(conn, row.id)

    async def discard(self, staged: StagedFile) -> None:
        """Remove staged bytes whose transaction rolled back (the sweep would, later)."""
        await self.storage._delete_internal(self._staging(staged.id))

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
        audit: AuditWrite | None = None,
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
            async with database.transaction(tenant=self._tenant) as tx:
                await self.record(
                    tx, staged, execution_id=execution_id, session_id=session_id, audit=audit
                )
        except BaseException:
            await self.discard(staged)
            raise
        async with database.connection(tenant=self._tenant) as conn:
            return await self.promote(conn, staged)

    # -- reading ------------------------------------------------------------------------

    async def _location(self, file: File) -> str:
        key = self._key_of(file)
        if file.status == "stored" or await self.storage.exists(key):
            return key
        staging = self._staging(file.id)
        if await self.storage._exists_internal(staging):
            return staging
        return key

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
        key = self._key_of(file)
        if file.status != "stored":
            raise InvalidInput(
                f"file {file.id} is not promoted yet (status {file.status})", field="status"
            )
        return await self.storage.url(
            key, expires=expires, filename=file.original_name, content_type=file.content_type
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
        self, database: AsyncDatabase, file_id: UUID | str, *, audit: AuditWrite | None = None
    ) -> File:
        """Delete the row, then the bytes (a crash in between leaves an orphan for the sweep).

        A row whose key is not one of this tenant's file keys is refused
        (TenantMismatch): the transaction rolls back, nothing is deleted.
        """
        async with database.transaction(tenant=self._tenant) as tx:
            row = await files.delete(tx, file_id, audit=audit)
            if row is None:
                raise NotFound("file", file_id)
            key = self._key_of(row)
        await self.storage.delete(key)
        await self.storage._delete_internal(self._staging(row.id))
        return row

    async def sweep(
        self,
        conn: AsyncConnection,
        *,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        now: datetime | None = None,
    ) -> SweepReport:
        """Reconcile storage and rows, touching only what is older than ``grace_seconds``.

        Only this store's tenant's area and rows, in ``conn``, a transaction
        of that tenant (TenantMismatch otherwise). Rows whose key is not one
        of the tenant's file keys are left as they are and reported.
        """
        self._check_transaction(conn)
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
            fresh = [row for row in rows if row.id not in report.misplaced_rows]
            for row in fresh:
                if not is_file_key(row.key, tenant=self._tenant):
                    report.misplaced_rows.append(row.id)  # stays staged: skipped from now on
                    continue
                try:
                    await self._promote_row(conn, row)
                    report.promoted.append(row.id)
                except NotFound:
                    await files.delete(conn, row.id)
                    report.lost_rows.append(row.id)
            if len(rows) < SWEEP_BATCH or not fresh:
                return

    async def _sweep_staged_objects(
        self, conn: AsyncConnection, cutoff: datetime, report: SweepReport
    ) -> None:
        prefix = staging_prefix(self._tenant)
        listed = await self.storage._list_internal(prefix)
        staged = [info.key for info in listed if info.modified is None or info.modified < cutoff]
        for start in range(0, len(staged), SWEEP_BATCH):
            ids: dict[UUID, str] = {}
            for key in staged[start : start + SWEEP_BATCH]:
                try:
                    ids[UUID(key[len(prefix) :])] = key
                except ValueError:
                    await self.storage._delete_internal(key)
                    report.staged_without_row.append(key)
            rows_by_id = {row.id: row for row in await files.get_many(conn, list(ids))}
            for file_id, key in ids.items():
                row = rows_by_id.get(file_id)
                if row is None:
                    await self.storage._delete_internal(key)
                    report.staged_without_row.append(key)
                elif not is_file_key(row.key, tenant=self._tenant):
                    if row.id not in report.misplaced_rows:
                        report.misplaced_rows.append(row.id)
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
            for info in await self.storage.list(tenant_area(self._tenant))
            if info.modified is None or info.modified < cutoff
        ]
        candidates = [
            (key, canonical)
            for key, canonical in candidates
            if is_file_key(canonical, tenant=self._tenant)
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
