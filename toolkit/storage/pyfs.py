"""The Storage interface over any pyfilesystem2 ``FS`` object (the ``toolkit[pyfs]`` extra).

pyfilesystem2 (``fs`` 2.4.16, last released 2022) imports
``pkg_resources`` and calls ``declare_namespace``, which setuptools 82
removed; the project is unmaintained (upstream issue 577). The toolkit's
core therefore runs on fsspec, and this adapter is kept for callers who
already hold pyfilesystem2 ``FS`` objects (OSFS, MemoryFS, S3FS, FTPFS,
...). Install it with ``pip install 'agent-persistence-toolkit[pyfs]'`` alongside
``setuptools<82``.

Writes go to a ``.tmp-*`` file in the target's folder and are moved into
place; create-only is checked and the move done under a process-wide lock,
so it holds within one process. Across processes pyfilesystem2 offers no
atomic create-only primitive: use the local (``file://``) or S3 back end
where several processes write the same keys.
"""

from __future__ import annotations

import contextlib
import errno
import threading
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any

from toolkit.errors import ConfigurationError
from toolkit.storage.base import ObjectInfo, Storage
from toolkit.storage.keys import TMP_PREFIX

_LOCK = threading.Lock()


def _import_fs() -> Any:
    try:
        with warnings.catch_warnings():
            # fs imports pkg_resources, which warns on setuptools 81 (and is gone in 82).
            warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
            import fs  # type: ignore[import-not-found,import-untyped,unused-ignore]  # noqa: PLC0415
            import fs.errors  # type: ignore[import-not-found,import-untyped,unused-ignore]  # noqa: PLC0415
    except ImportError as exc:  # includes pkg_resources missing under setuptools >= 82
        raise ConfigurationError(
            "the pyfilesystem2 adapter needs the extra: "
            f"pip install 'agent-persistence-toolkit[pyfs]' 'setuptools<82' ({exc})"
        ) from None
    return fs


class PyFilesystemStorage(Storage):
    """Storage over a pyfilesystem2 ``FS`` object, under ``root`` inside it."""

    def __init__(self, filesystem: Any, root: str = "/") -> None:
        self._fs_module = _import_fs()
        self.filesystem = filesystem
        self.root = "/" + root.strip("/") if root.strip("/") else ""
        self.url_scheme = "pyfs:"
        if self.root:
            self.filesystem.makedirs(self.root, recreate=True)

    @classmethod
    def from_url(cls, fs_url: str) -> PyFilesystemStorage:
        """Open a pyfilesystem2 FS URL (``osfs:///srv/files``, ``mem://``) with ``fs.open_fs``."""
        module = _import_fs()
        return cls(module.open_fs(fs_url, create=True))

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def _translate(self, exc: Exception, key: str) -> Exception:
        errors = self._fs_module.errors
        if isinstance(exc, errors.ResourceNotFound):
            return FileNotFoundError(errno.ENOENT, "not found", key)
        if isinstance(exc, errors.DestinationExists):
            return FileExistsError(errno.EEXIST, "exists", key)
        if isinstance(exc, errors.DirectoryExpected | errors.FileExpected):
            return NotADirectoryError(errno.ENOTDIR, "collides with an object or folder", key)
        return exc

    @contextlib.contextmanager
    def _native(self, key: str) -> Iterator[None]:
        try:
            yield
        except self._fs_module.errors.FSError as exc:
            raise self._translate(exc, key) from exc

    def _write(self, key: str, chunks: Iterator[bytes], content_type: str) -> None:
        final = self._path(key)
        folder = final.rsplit("/", 1)[0] or "/"
        temp = f"{folder}/{TMP_PREFIX}{uuid.uuid4().hex}"
        with self._native(key):
            self.filesystem.makedirs(folder, recreate=True)
            try:
                with self.filesystem.openbin(temp, "w") as out:
                    for chunk in chunks:
                        out.write(chunk)
                with _LOCK:
                    if self.filesystem.exists(final):
                        raise FileExistsError(errno.EEXIST, "exists", key)
                    self.filesystem.move(temp, final, overwrite=False)
            finally:
                with contextlib.suppress(Exception):
                    self.filesystem.remove(temp)

    def _open(self, key: str) -> IO[bytes]:
        with self._native(key):
            stream: IO[bytes] = self.filesystem.openbin(self._path(key), "r")
        return stream

    def _info(self, key: str) -> ObjectInfo:
        with self._native(key):
            info = self.filesystem.getinfo(self._path(key), namespaces=["details"])
        if info.is_dir:
            raise FileNotFoundError(errno.ENOENT, "a folder", key)
        modified = info.modified
        if modified is not None and modified.tzinfo is None:
            modified = modified.replace(tzinfo=UTC)
        return ObjectInfo(key=key, size=int(info.size), modified=modified)

    def _delete(self, key: str) -> bool:
        try:
            with self._native(key):
                self.filesystem.remove(self._path(key))
        except FileNotFoundError:
            return False
        return True

    def _walk(self) -> Iterator[tuple[str, Any]]:
        start = self.root or "/"
        if not self.filesystem.exists(start):
            return
        for path, info in self.filesystem.walk.info(start, namespaces=["details"]):
            if not info.is_dir:
                yield path, info

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        with self._native(prefix):
            for path, info in self._walk():
                key = path[len(self.root) + 1 :]
                if key.startswith(prefix) and not info.name.startswith(TMP_PREFIX):
                    modified = info.modified
                    if modified is not None and modified.tzinfo is None:
                        modified = modified.replace(tzinfo=UTC)
                    yield ObjectInfo(key=key, size=int(info.size), modified=modified)

    def _move(self, source: str, target: str) -> None:
        with self._native(target), _LOCK:
            final = self._path(target)
            self.filesystem.makedirs(final.rsplit("/", 1)[0] or "/", recreate=True)
            self.filesystem.move(self._path(source), final, overwrite=False)

    def _list_stale_uploads(self, older_than: datetime) -> list[str]:
        removed = []
        with self._native("<root>"):
            for path, info in self._walk():
                modified = info.modified
                if modified is not None and modified.tzinfo is None:
                    modified = modified.replace(tzinfo=UTC)
                if info.name.startswith(TMP_PREFIX) and (modified is None or modified < older_than):
                    with contextlib.suppress(Exception):
                        self.filesystem.remove(path)
                    removed.append(path)
        return removed

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.filesystem.close()
