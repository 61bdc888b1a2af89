"""Writing one object to S3: multipart in parts, or one PUT, create-only, aborted on failure.

Written once: ``call`` is s3fs's ``_call_s3`` of an asynchronous
``S3FileSystem`` in the async API (native aiobotocore requests on the event
loop), and ``call_s3`` of the sync filesystem in the generated sync module,
which :class:`~toolkit.storage.backends.S3Storage` uses.

Uploads of at least one part stream as multipart (the buffer holds at most
one part), smaller ones go as one ``put_object``; both send
``If-None-Match: *``, so of two racing writers exactly one wins where the
server implements conditional writes (S3, MinIO, moto). An unfinished
multipart upload is aborted on any exception, cancellation included.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

__all__ = ["write_object"]


async def write_object(
    call: Callable[..., Awaitable[Any]],
    chunks: AsyncIterator[bytes],
    *,
    bucket: str,
    object_key: str,
    key: str,
    content_type: str,
    part_size: int,
) -> None:
    """Store every chunk at ``object_key``; FileExistsError if the object exists."""
    target = {"Bucket": bucket, "Key": object_key}
    buffer = bytearray()
    upload_id: str | None = None
    parts: list[dict[str, Any]] = []
    try:
        async for chunk in chunks:
            buffer += chunk
            while len(buffer) >= part_size:
                if upload_id is None:
                    started = await call(
                        "create_multipart_upload",
                        **target,
                        ContentType=content_type,
                        ContentDisposition="attachment",
                    )
                    upload_id = started["UploadId"]
                number = len(parts) + 1
                body = bytes(buffer[:part_size])
                del buffer[:part_size]
                sent = await call(
                    "upload_part", **target, UploadId=upload_id, PartNumber=number, Body=body
                )
                del body
                parts.append({"PartNumber": number, "ETag": sent["ETag"]})
        if upload_id is None:
            await call(
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
            sent = await call(
                "upload_part", **target, UploadId=upload_id, PartNumber=number, Body=body
            )
            parts.append({"PartNumber": number, "ETag": sent["ETag"]})
        await call(
            "complete_multipart_upload",
            **target,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
            IfNoneMatch="*",
        )
        upload_id = None
    except OSError as exc:
        if "PreconditionFailed" in str(exc) or "If-None-Match" in str(exc):
            raise FileExistsError(errno.EEXIST, "exists", key) from exc
        raise
    finally:
        if upload_id is not None:
            with contextlib.suppress(Exception):
                await call("abort_multipart_upload", **target, UploadId=upload_id)
