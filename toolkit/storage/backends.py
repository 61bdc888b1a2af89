"""The back ends: local disk, memory and S3 over fsspec, chosen by ``TOOLKIT_STORAGE_URL``.

* ``file:///srv/files`` (or ``file://./relative``, or a bare path): a local
  folder. Writes go to a ``.tmp-*`` file in the target's own folder, are
  fsynced, and are linked into place with ``link(2)``, which fails if the
  key exists: create-only and atomic, across processes. Every segment
  is opened relative to its parent's descriptor with ``O_NOFOLLOW``: a
  symlink anywhere on a key's path is refused, never followed, even one
  swapped in mid-call; a FIFO, socket or device at a key is refused unread.
* ``memory://`` : fsspec's memory filesystem under a root of its own (the
  store is one global dict per process, so each Storage gets a fresh
  ``/<uuid>`` root; ``memory://name`` shares the root ``/name``).
  :meth:`close` removes the root.
* ``s3://bucket/prefix?endpoint=http://host:port&region=us-east-1&checksum=when_required``:
  s3fs. Uploads stream as multipart (8 MiB parts, aborted on any failure),
  small ones as one PUT; both carry ``If-None-Match: *``, so when two
  writers race, S3 (and servers that implement conditional writes, such as
  MinIO and moto) lets exactly one win. A server that ignores the header
  lets the last writer win; that is the documented limit. ``checksum``
  sets botocore's ``request_checksum_calculation`` and
  ``response_checksum_validation`` (``when_required`` for S3-compatible
  servers that reject the new default checksums; it is the default when an
  endpoint is given). Credentials come from the usual AWS chain, never
  from the URL. Every S3 request (the multipart upload, Object Lock
  retention, ...) is in :mod:`toolkit.storage.s3`, generated from the async
  source the async API runs natively on the event loop.

Any other fsspec filesystem can be wrapped with :class:`FsspecStorage`
(create-only is then guaranteed within one process only).
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from stat import S_IFBLK, S_IFCHR, S_IFIFO, S_IFMT, S_IFSOCK, S_ISDIR, S_ISLNK, S_ISREG
from typing import IO, TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from toolkit.errors import ConfigurationError, IntegrityError, InvalidInput, bounded_repr
from toolkit.storage.base import (
    ObjectInfo,
    Retention,
    RetentionMode,
    Storage,
    check_retention,
    content_disposition,
)
from toolkit.storage.keys import TMP_PREFIX, check_key
from toolkit.storage.sniff import download_type
from toolkit.storage.streams import translating

if TYPE_CHECKING:
    import asyncio

    from toolkit.storage.s3 import S3Objects

PART_SIZE: Final = 8 << 20
"""Multipart part size on S3 (the minimum is 5 MiB)."""

_CREATE_LOCK = threading.Lock()

_NO_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_DIRECTORY_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | _NO_FOLLOW
_READ_FLAGS: Final = os.O_RDONLY | os.O_NONBLOCK | _NO_FOLLOW  # a FIFO cannot block the open
_NEW_FILE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_FOLLOW
_SPECIAL_KINDS: Final = {
    S_IFIFO: "FIFO",
    S_IFSOCK: "socket",
    S_IFCHR: "character device",
    S_IFBLK: "block device",
}
_S3_SESSION: Any = None


def _s3_session() -> Any:
    """One aiobotocore session per process: it caches the S3 service model and credentials,
    which otherwise cost about 0.3 s for every new S3Storage."""
    global _S3_SESSION  # noqa: PLW0603 - a lazily created, process-wide cache
    with _CREATE_LOCK:
        if _S3_SESSION is None:
            from aiobotocore.session import AioSession  # noqa: PLC0415 - the s3 extra

            _S3_SESSION = AioSession()
        return _S3_SESSION


def _modified(details: dict[str, Any]) -> datetime | None:
    for field in ("LastModified", "mtime", "created", "last_modified"):
        value = details.get(field)
        if isinstance(value, datetime):
            return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC)
    return None


class FsspecStorage(Storage):
    """Storage over any fsspec filesystem, under ``root`` (a path in that filesystem)."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, *, url_scheme: str = "") -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.url_scheme = url_scheme

    def _full(self, key: str) -> str:
        return f"{self.root}/{key}"

    def _key_of(self, path: str) -> str:
        path = path if path.startswith("/") or not self.root.startswith("/") else "/" + path
        return path[len(self.root) + 1 :]

    def _write(self, key: str, chunks: Iterator[bytes], content_type: str) -> None:
        final = self._full(key)
        folder = posixpath.dirname(final)
        temp = f"{folder}/{TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            with self.fs.open(temp, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
            with _CREATE_LOCK:
                if self.fs.exists(final):
                    raise FileExistsError(errno.EEXIST, "exists", key)
                self.fs.mv(temp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(temp)

    def _open(self, key: str) -> IO[bytes]:
        stream: IO[bytes] = self.fs.open(self._full(key), "rb")
        return stream

    def _info(self, key: str) -> ObjectInfo:
        details = self.fs.info(self._full(key))
        if details.get("type") != "file":
            raise FileNotFoundError(errno.ENOENT, "not a file", key)
        return ObjectInfo(key=key, size=int(details["size"]), modified=_modified(details))

    def _delete(self, key: str) -> bool:
        try:
            self.fs.rm_file(self._full(key))
        except FileNotFoundError:
            return False
        return True

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self._full(folder) if folder else self.root
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return
        for path, details in found.items():
            key = self._key_of(path)
            if not key.startswith(prefix) or posixpath.basename(key).startswith(TMP_PREFIX):
                continue
            if details.get("type", "file") != "file":
                continue
            yield ObjectInfo(key=key, size=int(details["size"]), modified=_modified(details))

    def _move(self, source: str, target: str) -> None:
        with _CREATE_LOCK:
            if self.fs.exists(self._full(target)):
                raise FileExistsError(errno.EEXIST, "exists", target)
            self.fs.mv(self._full(source), self._full(target))

    def _list_stale_uploads(self, older_than: datetime) -> list[str]:
        removed: list[str] = []
        try:
            found = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            return removed
        for path, details in found.items():
            modified = _modified(details)
            if posixpath.basename(path).startswith(TMP_PREFIX) and (
                modified is None or modified < older_than
            ):
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(path)
                removed.append(self._key_of(path))
        return removed


class MemoryStorage(FsspecStorage):
    """fsspec's memory filesystem under a root of its own (tests, demos)."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or uuid.uuid4().hex
        super().__init__(MemoryFileSystem(), f"/{self.name}", url_scheme=f"memory://{self.name}/")

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.root, recursive=True)


class LocalStorage(FsspecStorage):
    """A local folder: atomic, fsynced, create-only writes that never follow a symlink.

    Every operation walks the key's segments from a descriptor of the root,
    opening each folder with ``O_NOFOLLOW`` relative to its parent
    (``openat``), and then acts on the last segment relative to that folder's
    descriptor. A symlink planted anywhere on the path — even one swapped in
    while the call runs — is refused (InvalidInput), never followed, so no
    call can read, write, move or delete outside the root. Objects must be
    regular files: a FIFO, socket or device at a key is refused
    (IntegrityError) without being opened.
    """

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        path = Path(root).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        real = os.path.realpath(path)
        super().__init__(LocalFileSystem(), real, url_scheme="file://")
        self.fsync = fsync
        self._case_folding: bool | None = None

    # -- the descriptor walk ---------------------------------------------------------

    @contextmanager
    def _folder(self, key: str, *, create: bool = False) -> Iterator[tuple[int, str]]:
        """The descriptor of the folder that holds ``key``'s last segment, and that segment.

        Each folder on the way is opened with ``O_NOFOLLOW`` relative to its
        parent; with ``create``, missing folders are made on the way.
        """
        *folders, name = key.split("/")
        fd = os.open(self.root, _DIRECTORY_FLAGS)
        try:
            for segment in folders:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(segment, dir_fd=fd)
                child = self._open_folder(segment, fd, key)
                os.close(fd)
                fd = child
            yield fd, name
        finally:
            os.close(fd)

    @staticmethod
    def _open_folder(segment: str, parent: int, key: str) -> int:
        try:
            return os.open(segment, _DIRECTORY_FLAGS, dir_fd=parent)
        except OSError as exc:
            # Linux answers ENOTDIR (O_DIRECTORY wins) for a symlink, other systems ELOOP.
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            now = _lstat_mode(segment, parent)
            if exc.errno == errno.ELOOP or (now is not None and S_ISLNK(now)):
                raise _symlink_refused(key, segment) from None
            if now is not None and S_ISDIR(now):  # not a folder a moment ago: swapped
                raise InvalidInput(
                    f"invalid key {bounded_repr(key)}: {bounded_repr(segment)} was replaced "
                    "while being opened (it was not a folder then, e.g. a symbolic link)",
                    field="key",
                    value=key,
                ) from None
            raise  # a file on the key's path: the key runs through an object

    @staticmethod
    def _regular(key: str, segment: str, stat: os.stat_result) -> os.stat_result:
        """``stat`` if it describes a regular file; refused for links, FIFOs and devices."""
        if S_ISREG(stat.st_mode):
            return stat
        if S_ISDIR(stat.st_mode):
            raise FileNotFoundError(errno.ENOENT, "a folder, not an object", key)
        if S_ISLNK(stat.st_mode):
            raise _symlink_refused(key, segment)
        kind = _SPECIAL_KINDS.get(S_IFMT(stat.st_mode), "special file")
        raise IntegrityError(
            f"object {bounded_repr(key)} is a {kind}, not a regular file: refused unread"
        )

    def _lstat(self, folder: int, name: str, key: str) -> os.stat_result:
        return self._regular(key, name, os.stat(name, dir_fd=folder, follow_symlinks=False))

    def _sync(self, folder: int) -> None:
        if self.fsync:
            os.fsync(folder)

    # -- the primitives ----------------------------------------------------------------

    def _write(self, key: str, chunks: Iterator[bytes], content_type: str) -> None:
        with self._folder(key, create=True) as (folder, name):
            temp = f"{TMP_PREFIX}{uuid.uuid4().hex}"
            fd = os.open(temp, _NEW_FILE_FLAGS, 0o600, dir_fd=folder)
            try:
                with open(fd, "wb", buffering=0, closefd=True) as out:
                    for chunk in chunks:
                        view = memoryview(chunk)
                        while view:
                            written = out.write(view)
                            view = view[written or 0 :]
                    if self.fsync:
                        os.fsync(out.fileno())
                # link(2) fails with EEXIST: exactly one racing writer wins.
                os.link(temp, name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
                self._sync(folder)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp, dir_fd=folder)

    def _open(self, key: str) -> IO[bytes]:
        with self._folder(key) as (folder, name):
            expected = self._lstat(folder, name, key)  # a FIFO or device is never opened
            try:
                fd = os.open(name, _READ_FLAGS, dir_fd=folder)
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # swapped for a symlink since the lstat
                    raise _symlink_refused(key, name) from None
                raise
        try:
            opened = self._regular(key, name, os.fstat(fd))
            if (opened.st_dev, opened.st_ino) != (expected.st_dev, expected.st_ino):
                raise FileNotFoundError(errno.ENOENT, "replaced while opening", key)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return open(fd, "rb", buffering=0)

    def _info(self, key: str) -> ObjectInfo:
        with self._folder(key) as (folder, name):
            stat = self._lstat(folder, name, key)
        return ObjectInfo(
            key=key, size=stat.st_size, modified=datetime.fromtimestamp(stat.st_mtime, UTC)
        )

    def _delete(self, key: str) -> bool:
        try:
            with self._folder(key) as (folder, name):
                os.unlink(name, dir_fd=folder)  # removes a planted link itself, never its target
        except FileNotFoundError:
            return False
        return True

    def _move(self, source: str, target: str) -> None:
        with self._folder(source) as (src_folder, src_name):
            self._lstat(src_folder, src_name, source)
            with self._folder(target, create=True) as (dst_folder, dst_name):
                os.link(  # EEXIST if the target exists
                    src_name,
                    dst_name,
                    src_dir_fd=src_folder,
                    dst_dir_fd=dst_folder,
                    follow_symlinks=False,
                )
                os.unlink(src_name, dir_fd=src_folder)
                self._sync(dst_folder)
                self._sync(src_folder)

    def _walk(self, prefix: str) -> Iterator[tuple[str, str, int]]:
        """``(folder key, name, folder fd)`` of every non-folder entry under ``prefix``'s folder.

        ``os.fwalk`` descends by descriptor and never into a symlinked folder.
        """
        start = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        try:
            with contextlib.ExitStack() as stack:
                if start:
                    folder, name = stack.enter_context(self._folder(f"{start}/_"))
                else:
                    folder = os.open(self.root, _DIRECTORY_FLAGS)
                    stack.callback(os.close, folder)
                for path, _dirs, names, fd in os.fwalk(".", dir_fd=folder):
                    relative = posixpath.normpath(posixpath.join(start, path))
                    base = "" if relative == "." else relative + "/"
                    for name in names:
                        yield base, name, fd
        except (FileNotFoundError, NotADirectoryError):
            return
        except InvalidInput:  # a symlinked folder on the prefix holds no objects of ours
            return

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        for base, name, fd in self._walk(prefix):
            key = base + name
            if not key.startswith(prefix) or name.startswith(TMP_PREFIX):
                continue
            try:
                stat = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if S_ISREG(stat.st_mode):
                modified = datetime.fromtimestamp(stat.st_mtime, UTC)
                yield ObjectInfo(key=key, size=stat.st_size, modified=modified)

    def _list_stale_uploads(self, older_than: datetime) -> list[str]:
        removed: list[str] = []
        for base, name, fd in self._walk(""):
            if not name.startswith(TMP_PREFIX):
                continue
            with contextlib.suppress(FileNotFoundError):
                stat = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if datetime.fromtimestamp(stat.st_mtime, UTC) < older_than:
                    os.unlink(name, dir_fd=fd)
                    removed.append(base + name)
        return removed

    def _url(self, key: str, expires: int, filename: str | None, content_type: str | None) -> str:
        return Path(self.root, key).as_uri()

    def _folds_case(self) -> bool:
        """Whether the root's filesystem is case-insensitive (probed once, with a temp file)."""
        if self._case_folding is None:
            probe = f"{TMP_PREFIX}case-{uuid.uuid4().hex}"
            try:
                root = os.open(self.root, _DIRECTORY_FLAGS)
                try:
                    os.close(os.open(probe, _NEW_FILE_FLAGS, 0o600, dir_fd=root))
                    try:
                        os.stat(probe.upper(), dir_fd=root, follow_symlinks=False)
                        self._case_folding = True
                    except FileNotFoundError:
                        self._case_folding = False
                    finally:
                        os.unlink(probe, dir_fd=root)
                finally:
                    os.close(root)
            except OSError:  # a read-only root: exact keys, which can only miss an orphan
                return False
        return self._case_folding


class S3Storage(FsspecStorage):
    """An S3 bucket (or S3-compatible server) under a key prefix, through s3fs.

    Every S3 request goes through :attr:`objects`
    (:class:`~toolkit.storage.s3.S3Objects`, generated from the async API's
    S3 module); listing, copying and presigning use s3fs's own methods.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        checksum: str | None = None,
        part_size: int = PART_SIZE,
    ) -> None:
        from toolkit.storage.s3 import S3Objects  # noqa: PLC0415 - the optional extra toolkit[s3]

        if checksum is None and endpoint_url:
            checksum = "when_required"
        if checksum not in (None, "when_required", "when_supported"):
            raise ConfigurationError(
                "the s3 storage's checksum must be when_required or when_supported "
                f"(checksum= in its URL), got {bounded_repr(checksum)}"
            )
        config: dict[str, Any] = {}
        if checksum:
            config = {
                "request_checksum_calculation": checksum,
                "response_checksum_validation": checksum,
            }
        client: dict[str, Any] = {}
        if endpoint_url:
            client["endpoint_url"] = endpoint_url
        if region:
            client["region_name"] = region
        self._fs_options: dict[str, Any] = {
            "session": _s3_session(),
            "skip_instance_cache": True,
            "use_listings_cache": False,
            "client_kwargs": client,
            "config_kwargs": config,
        }
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_size = max(part_size, 5 << 20)
        self.objects: S3Objects = S3Objects(
            self.make_filesystem(), bucket=bucket, prefix=self.prefix, part_size=self.part_size
        )
        root = f"{bucket}/{self.prefix}" if self.prefix else bucket
        super().__init__(self.objects.fs, root, url_scheme=f"s3://{root}/")

    def make_filesystem(self, *, loop: asyncio.AbstractEventLoop | None = None) -> Any:
        """A new s3fs filesystem with this storage's endpoint, region, checksums and session.

        With ``loop``, asynchronous on that event loop: the async API makes
        one per loop, to send its requests natively.
        """
        import s3fs  # noqa: PLC0415 - the optional extra toolkit[s3]

        if loop is None:
            return s3fs.S3FileSystem(**self._fs_options)
        return s3fs.S3FileSystem(asynchronous=True, loop=loop, **self._fs_options)

    def _key_of(self, path: str) -> str:
        return path[len(self.root) + 1 :]

    def _write(self, key: str, chunks: Iterator[bytes], content_type: str) -> None:
        self.objects.write(key, chunks, content_type)

    def _open(self, key: str) -> IO[bytes]:
        stream: IO[bytes] = self.objects.open(key)
        return stream

    def _info(self, key: str) -> ObjectInfo:
        head = self.objects.head(key)
        return ObjectInfo(key=key, size=int(head["ContentLength"]), modified=_modified(head))

    def _delete(self, key: str) -> bool:
        # S3's DELETE succeeds for a missing key too: ask first, to report whether it existed.
        if not self._exists_fast(key):
            return False
        self.objects.delete(key)
        return True

    def _move(self, source: str, target: str) -> None:
        # S3 has no rename: copy (server side, create-only where supported), then delete.
        if self._exists_fast(target):
            raise FileExistsError(errno.EEXIST, "exists", target)
        self.fs.copy(self._full(source), self._full(target))
        self.fs.rm_file(self._full(source))

    def _url(self, key: str, expires: int, filename: str | None, content_type: str | None) -> str:
        # Attachment and a safe type always: active content is never served inline.
        params: dict[str, Any] = {
            "ResponseContentDisposition": content_disposition(filename),
            "ResponseContentType": download_type(content_type),
        }
        url: str = self.fs.url(self._full(key), expires=expires, **params)
        return url

    def _list_stale_uploads(self, older_than: datetime) -> list[str]:
        return self.objects.abort_uploads_before(older_than)

    def retain(self, key: str, *, mode: RetentionMode, until: datetime) -> Retention:
        """Put ``key`` under S3 Object Lock retention until ``until``; the retention S3 reports.

        Where the bucket has a default retention rule, S3 applied it when
        the object was written and it stands (``mode`` and ``until`` are not
        sent). RetentionUnavailable if the bucket has no Object Lock;
        NotFound if there is no object at ``key``; IntegrityError if S3
        reports no retention on it afterwards; Unavailable if S3 fails.
        """
        key = check_key(key)
        check_retention(mode, until)
        with translating("setting retention on", key):
            return self.objects.retain(key, mode=mode, until=until)

    def retention(self, key: str) -> Retention | None:
        """The Object Lock retention S3 reports on ``key``, None when none; NotFound if absent."""
        key = check_key(key)
        with translating("inspecting", key):
            return self.objects.retention(key)

    def close(self) -> None:
        """Close the S3 client's connections."""
        self.objects.close()


def _lstat_mode(name: str, folder: int) -> int | None:
    try:
        return os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode
    except OSError:
        return None


def _symlink_refused(key: str, segment: str) -> InvalidInput:
    return InvalidInput(
        f"invalid key {bounded_repr(key)}: {bounded_repr(segment)} is a symbolic link, "
        "which the local storage never follows (it could lead outside the storage root)",
        field="key",
        value=key,
    )


_NO_USERINFO = {
    "file": "the local storage uses the file system's permissions",
    "memory": "the memory storage has no credentials",
    "s3": (
        "S3 credentials come from the environment (AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_PROFILE) or the shared AWS config files"
    ),
}
"""Schemes whose URL has no use for user:password@, and where credentials belong instead."""

_BUCKET = re.compile(r"[A-Za-z0-9._-]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,20}")


def _refuse_userinfo(url: str, setting: str) -> None:
    """A ConfigurationError, not echoing ``url``, for user:password@ where the scheme has no use."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme in _NO_USERINFO and "@" in url[len(scheme) + 3 :].split("/", 1)[0]:
        raise ConfigurationError(
            f"{setting}: a {scheme}:// URL takes no user:password@ part (the URL is not "
            f"shown); {_NO_USERINFO[scheme]}"
        )


def _open_s3(url: str, setting: str) -> S3Storage:
    """The S3Storage of an ``s3://bucket/prefix?endpoint=&region=&checksum=`` URL."""
    parts = urlsplit(url)
    if not parts.netloc:
        raise ConfigurationError(f"{setting}: no bucket; write s3://bucket/prefix")
    if not _BUCKET.fullmatch(parts.netloc):
        raise ConfigurationError(
            f"{setting}: bad bucket name (not shown): letters, digits, '.', '-' and '_' only"
        )
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    unknown = set(query) - {"endpoint", "region", "checksum"}
    if unknown:
        raise ConfigurationError(
            f"{setting}: unknown parameter(s) {', '.join(sorted(unknown))}; "
            "known: endpoint, region, checksum"
        )
    if "@" in urlsplit(query.get("endpoint", "")).netloc:
        raise ConfigurationError(
            f"{setting}: the endpoint= URL takes no user:password@ part (the URL is not "
            f"shown); {_NO_USERINFO['s3']}"
        )
    return S3Storage(
        parts.netloc,
        parts.path,
        endpoint_url=query.get("endpoint"),
        region=query.get("region"),
        checksum=query.get("checksum"),
    )


def open_storage(url: str, setting: str = "TOOLKIT_STORAGE_URL") -> Storage:
    """The Storage a storage URL names; a ConfigurationError naming ``setting`` (the
    variable the URL came from) for a bad one."""
    if not isinstance(url, str) or not url:
        raise ConfigurationError(f"{setting}: must not be empty")
    _refuse_userinfo(url, setting)
    if url.startswith("file://"):
        path = url[len("file://") :]
        if not path or "?" in path or "#" in path:
            raise ConfigurationError(
                f"{setting}: bad file URL (not shown): it needs a path and takes no ?query "
                "or #fragment; write file:///absolute/path or file://./relative/path"
            )
        return LocalStorage(path)
    if url.startswith("memory://"):
        name = url[len("memory://") :].strip("/")
        if name and not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigurationError(
                f"{setting}: bad memory root (not shown): only letters, digits, - and _ are allowed"
            )
        return MemoryStorage(name or None)
    if url.startswith("s3://"):
        return _open_s3(url, setting)
    if url.startswith("pyfs:"):
        from toolkit.storage.pyfs import PyFilesystemStorage  # noqa: PLC0415 - optional extra

        return PyFilesystemStorage.from_url(url[len("pyfs:") :])
    if "://" not in url:
        return LocalStorage(url)
    scheme = url.split("://", 1)[0]
    shown = repr(scheme) if _SCHEME.fullmatch(scheme) else "(not shown)"
    raise ConfigurationError(
        f"{setting}: unsupported scheme {shown}; use file://, memory://, s3:// or pyfs:"
    )
