"""File storage, awaited: :class:`AsyncFileStore` and the files repository.

The same back ends as :mod:`toolkit.storage` (``open_storage``, ``LocalStorage``,
``S3Storage``, ...) are shared by both APIs; the async API streams bytes
through them (:class:`AsyncStorage` is a back end's awaited interface, and
``AsyncFileStore.storage``)::

    from toolkit.aio.storage import AsyncFileStore
    from toolkit.storage import open_storage

    async with AsyncFileStore(open_storage(url)) as store:
        row = await store.store(db, upload_file, owner_id=user_id, purpose="attachment")
        async with await store.open(row) as chunks:
            async for chunk in chunks:  # verified: IntegrityError at the end on a mismatch
                ...

On S3 the bytes move with s3fs's native asyncio; on local disk the
back end's blocking code runs in a worker thread (see
:mod:`toolkit.aio.storage.async_io`).
"""

from toolkit.aio.storage import repository
from toolkit.aio.storage.async_io import AsyncStorage
from toolkit.aio.storage.filestore import AsyncFileStore
from toolkit.storage.base import AsyncVerifyingReader
from toolkit.storage.protocol import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_MAX_BYTES,
    StagedFile,
    SweepReport,
    describe,
)

__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "DEFAULT_MAX_BYTES",
    "AsyncFileStore",
    "AsyncStorage",
    "AsyncVerifyingReader",
    "StagedFile",
    "SweepReport",
    "describe",
    "repository",
]
