"""File storage: one :class:`Storage` interface over fsspec back ends, and the files entity.

* :func:`open_storage` picks the back end from ``TOOLKIT_STORAGE_URL``
  (``file://``, ``memory://``, ``s3://``; ``pyfs:`` with the extra).
* :class:`Storage`: put (bytes or a stream, through the safe pipeline), open,
  get, exists, info, delete, list, move, url; retain and retention (S3
  Object Lock; RetentionUnavailable on back ends without it).
* :class:`FileStore`: bytes and ``files`` rows kept consistent (stage,
  record, promote, sweep); reads verify the SHA-256.
* :mod:`toolkit.storage.keys`: the key grammar; :mod:`toolkit.storage.sniff`:
  content types from magic numbers (``sniff`` here is that module).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from toolkit.storage.backends import (
        FsspecStorage,
        LocalStorage,
        MemoryStorage,
        S3Storage,
        open_storage,
    )
    from toolkit.storage.base import (
        ObjectInfo,
        Retention,
        RetentionMode,
        Storage,
        content_disposition,
        download_headers,
    )
    from toolkit.storage.filestore import DEFAULT_MAX_BYTES, FileStore, StagedFile, SweepReport
    from toolkit.storage.keys import check_key, check_prefix, clean_filename, file_key
    from toolkit.storage.records import File, FileFilter
    from toolkit.storage.sniff import DEFAULT_ALLOWED_TYPES
    from toolkit.storage.streams import PutResult

# Names are imported on first use, so ``toolkit --help`` does not pay for fsspec.
_HOMES = {
    "FsspecStorage": "backends",
    "LocalStorage": "backends",
    "MemoryStorage": "backends",
    "S3Storage": "backends",
    "open_storage": "backends",
    "ObjectInfo": "base",
    "Retention": "base",
    "RetentionMode": "base",
    "PutResult": "streams",
    "Storage": "base",
    "content_disposition": "base",
    "download_headers": "base",
    "DEFAULT_MAX_BYTES": "filestore",
    "FileStore": "filestore",
    "StagedFile": "filestore",
    "SweepReport": "filestore",
    "check_key": "keys",
    "check_prefix": "keys",
    "clean_filename": "keys",
    "file_key": "keys",
    "File": "records",
    "FileFilter": "records",
    "DEFAULT_ALLOWED_TYPES": "sniff",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_ALLOWED_TYPES",
    "DEFAULT_MAX_BYTES",
    "File",
    "FileFilter",
    "FileStore",
    "FsspecStorage",
    "LocalStorage",
    "MemoryStorage",
    "ObjectInfo",
    "PutResult",
    "Retention",
    "RetentionMode",
    "S3Storage",
    "StagedFile",
    "Storage",
    "SweepReport",
    "check_key",
    "check_prefix",
    "clean_filename",
    "content_disposition",
    "download_headers",
    "file_key",
    "open_storage",
]
