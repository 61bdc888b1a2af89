# Generated from toolkit/aio/storage/s3.py by tools/async_to_sync.py: do not edit.
# Edit the async source and run `tox -e generate`.
"""Every S3 request the toolkit sends, written once for both APIs.

:class:`S3Objects` is one bucket under a key prefix, seen through an
s3fs filesystem; its methods are the S3 operations of the back end: the
create-only upload, the streamed read, head, delete, the sweep of
unfinished uploads and Object Lock retention. Written once, async, in
``toolkit/aio/storage/s3.py``; ``toolkit/storage/s3.py`` is generated from
it. The sync :class:`~toolkit.storage.backends.S3Storage` holds one over its
blocking filesystem and sends S3 nothing else; the async API's storage
facade (``toolkit/aio/storage/async_io.py``) holds one per event loop over
an asynchronous filesystem, so its bytes move on the loop.

A request goes through the aiobotocore client s3fs hands out:
``set_session()``, a coroutine s3fs documents for async use, or its
blocking form ``connect()``, whose client's coroutines the sync API runs on
s3fs's I/O loop with fsspec's documented ``fsspec.asyn.sync``. fsspec's
underscored coroutines (``_cat_file``, ``_pipe_file``, ``_info``...) are
public API: fsspec documents them as the async twins of
``AbstractFileSystem``'s methods (``fsspec.asyn.async_methods``), the
underscore only marking "call from async code". s3fs's ``_call_s3`` is not
one of them but an undocumented helper, and none of them streams a
create-only multipart upload (``_pipe_file`` takes the whole body), so the
client is called directly. botocore's errors come out as the OSError
subclasses s3fs's own methods raise (``s3fs.errors.translate_boto_error``):
FileNotFoundError for a missing key, FileExistsError for a lost
``If-None-Match`` race; botocore's own retries apply.

Uploads of at least one part stream as multipart (the buffer holds at most
one part), smaller ones go as one ``put_object``; both send
``If-None-Match: *``, so of two racing writers exactly one wins where the
server implements conditional writes (S3, MinIO, moto). An unfinished
multipart upload is aborted on any exception, cancellation included.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError
from fsspec.asyn import sync
from s3fs.errors import translate_boto_error

from toolkit.errors import IntegrityError, RetentionUnavailable, bounded_repr
from toolkit.storage.base import Retention, RetentionMode

__all__ = ["S3Objects"]

NO_OBJECT_LOCK = "the bucket has no Object Lock"


class S3Objects:
    """The objects of one S3 bucket under a key prefix, through an s3fs filesystem.

    Keys given to the methods are the storage's keys (already checked);
    :meth:`object_key` puts the prefix in front. Errors are the driver's
    (OSError and its subclasses): the back end translates them.
    """

    def __init__(self, fs: Any, *, bucket: str, prefix: str, part_size: int) -> None:
        self.fs = fs
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        self._client: Any = None

    def object_key(self, key: str) -> str:
        """The S3 key of a storage key: the prefix, then the key."""
        return f"{self.prefix}/{key}" if self.prefix else key

    def request(self, method: str, **params: Any) -> Any:
        """One S3 API call on this bucket (botocore's method name and parameters); its response."""
        try:
            self._client = self.fs.connect()
            call = getattr(self._client, method)
            return sync(self.fs.loop, call, Bucket=self.bucket, **params)
        except ClientError as exc:
            raise translate_boto_error(exc) from exc

    def close(self) -> None:
        """Close the client the requests used (its connections), at once rather than at exit."""
        client, self._client = self._client, None
        if client is None:
            return
        sync(self.fs.loop, client.close)

    # -- bytes ---------------------------------------------------------------------------

    def write(self, key: str, chunks: Iterator[bytes], content_type: str) -> None:
        """Store every chunk at ``key``; FileExistsError if the object exists."""
        target = {"Key": self.object_key(key)}
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            for chunk in chunks:
                buffer += chunk
                while len(buffer) >= self.part_size:
                    if upload_id is None:
                        started = self.request(
                            "create_multipart_upload",
                            **target,
                            ContentType=content_type,
                            ContentDisposition="attachment",
                        )
                        upload_id = started["UploadId"]
                    number = len(parts) + 1
                    body = bytes(buffer[: self.part_size])
                    del buffer[: self.part_size]
                    sent = self.request(
                        "upload_part", **target, UploadId=upload_id, PartNumber=number, Body=body
                    )
                    del body
                    parts.append({"PartNumber": number, "ETag": sent["ETag"]})
            if upload_id is None:
                self.request(
                    "put_object",
                    **target,
                    Body=bytes(buffer),
                    ContentType=content_type,
                    ContentDisposition="attachment",
                    IfNoneMatch="*",
                )
                return
            if buffer:
                number = len(parts) + 1
                body = bytes(buffer)
                sent = self.request(
                    "upload_part", **target, UploadId=upload_id, PartNumber=number, Body=body
                )
                parts.append({"PartNumber": number, "ETag": sent["ETag"]})
            self.request(
                "complete_multipart_upload",
                **target,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )
            upload_id = None
        except OSError as exc:
            if isinstance(exc, FileExistsError) or error_code(exc) == "PreconditionFailed":
                raise FileExistsError(errno.EEXIST, "exists", key) from exc
            raise
        finally:
            if upload_id is not None:
                with contextlib.suppress(Exception):
                    self.request("abort_multipart_upload", **target, UploadId=upload_id)

    def open(self, key: str) -> Any:
        """A stream of the object's bytes; FileNotFoundError if there is none.

        In the async API: one GET, its body read on the loop (``await
        read(n)``, then ``close()``). s3fs's ``open_async()`` is not used:
        its file never closes the body, which would hold the connection. In
        the sync API: s3fs's file, reading ahead one part at a time.
        """
        path = f"{self.bucket}/{self.object_key(key)}"
        return self.fs.open(path, "rb", block_size=self.part_size, cache_type="readahead")

    # -- metadata --------------------------------------------------------------------------

    def head(self, key: str) -> dict[str, Any]:
        """The object's metadata (``ContentLength``, ``LastModified``, Object Lock fields)."""
        found: dict[str, Any] = self.request("head_object", Key=self.object_key(key))
        return found

    def delete(self, key: str) -> None:
        """Delete the object (S3 answers the same for a missing one)."""
        self.request("delete_object", Key=self.object_key(key))

    def abort_uploads_before(self, older_than: datetime) -> list[str]:
        """Abort the multipart uploads under the prefix begun before ``older_than``; their keys."""
        aborted = []
        listing = self.request("list_multipart_uploads", Prefix=self.prefix)
        for upload in listing.get("Uploads", []):
            initiated = upload.get("Initiated")
            if isinstance(initiated, datetime) and initiated < older_than:
                self.request(
                    "abort_multipart_upload", Key=upload["Key"], UploadId=upload["UploadId"]
                )
                aborted.append(upload["Key"])
        return aborted

    # -- Object Lock -------------------------------------------------------------------------

    def retain(self, key: str, *, mode: RetentionMode, until: datetime) -> Retention:
        """Put ``key`` under Object Lock retention; the retention S3 then reports on it.

        Where the bucket has a default retention rule, S3 applied it when
        the object was written and it stands: nothing is sent.
        RetentionUnavailable if the bucket has no Object Lock; IntegrityError
        if S3 reports no retention on the object afterwards.
        """
        try:
            config = self.request("get_object_lock_configuration")
        except OSError as exc:
            if error_code(exc) != "ObjectLockConfigurationNotFoundError":
                raise
            config = {}
        lock = config.get("ObjectLockConfiguration", {})
        if lock.get("ObjectLockEnabled") != "Enabled":
            raise RetentionUnavailable(
                f"object {bounded_repr(key)} cannot be put under retention: {NO_OBJECT_LOCK} "
                "(enable it on the bucket, which needs versioning)",
                reason=NO_OBJECT_LOCK,
            )
        if not lock.get("Rule", {}).get("DefaultRetention"):
            self.request(
                "put_object_retention",
                Key=self.object_key(key),
                Retention={"Mode": mode, "RetainUntilDate": until},
            )
        held = self.retention(key)
        if held is None:
            raise IntegrityError(
                f"object {bounded_repr(key)}: retention was set, but S3 reports none on it"
            )
        return held

    def retention(self, key: str) -> Retention | None:
        """The Object Lock retention S3 reports on ``key``; None when it is under none."""
        head = self.head(key)
        mode, until = head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")
        if not mode or not isinstance(until, datetime):
            return None
        return Retention(mode=mode, until=until)


def error_code(exc: BaseException) -> str | None:
    """S3's error code behind a translated error (``NoSuchKey``, ``PreconditionFailed``...)."""
    response = getattr(exc.__cause__, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    return code if isinstance(code, str) else None
