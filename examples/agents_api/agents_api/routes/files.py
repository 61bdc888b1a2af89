"""Files: upload by streaming the request body into the file store, download by streaming out.

``POST /files?owner_id=...&filename=report.pdf`` with the bytes as the
request body (any ``Content-Type``; the stored type is sniffed from the
bytes). The body is never held whole: it streams chunk by chunk through the
toolkit's pipeline (size limit, SHA-256, type sniffing) to a staging key,
the row is committed, then the bytes are promoted. A body over
``AGENTS_API_MAX_UPLOAD_BYTES`` is refused with 413 (at once when
``Content-Length`` says so, else when the limit is crossed) and leaves
nothing behind: no row, no bytes.

Why not a multipart ``UploadFile``: Starlette parses the whole form into a
temporary file before the route runs, so the limit would be checked only
after the whole upload arrived; the raw body is checked as it arrives.
``AsyncFileStore.store`` takes an ``UploadFile`` too, if your clients need forms.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, StringConstraints
from starlette.background import BackgroundTask

from agents_api.deps import Connection, Services, ServicesDep
from agents_api.errors import SERVICE_ERRORS, problem, problem_responses
from agents_api.http import record_response
from toolkit.aio.storage import repository as files
from toolkit.aio.storage.filestore import AsyncFileStore
from toolkit.errors import InvalidInput, Unavailable
from toolkit.storage.records import File

router = APIRouter(prefix="/files", tags=["files"], responses=SERVICE_ERRORS)


class UploadQuery(BaseModel):
    """The query string of an upload."""

    model_config = ConfigDict(extra="forbid")

    owner_id: UUID
    filename: Annotated[str, StringConstraints(max_length=255)] | None = None
    """The client's name for the file (kept cleaned, for the download's filename)."""
    purpose: Literal["attachment", "generated"] = "attachment"


def _store(services: Services) -> AsyncFileStore:
    if services.files is None:  # the router is only mounted with storage on
        raise Unavailable("storage is switched off")
    return services.files


def _too_large(limit: int) -> Response:
    return problem(413, f"uploads are limited to {limit} bytes", field="size")


@router.post(
    "",
    status_code=201,
    response_model=File,
    responses=problem_responses(413),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def upload(
    request: Request, services: ServicesDep, query: Annotated[UploadQuery, Query()]
) -> Response:
    """Store the request body as a file of ``owner_id``: 201 with its row."""
    store = _store(services)
    limit = services.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return _too_large(limit)  # before reading a byte
    try:
        stored = await store.store(
            services.db,
            request.stream(),
            owner_id=query.owner_id,
            purpose=query.purpose,
            original_name=query.filename,
            claimed_type=request.headers.get("content-type"),
            max_bytes=limit,
        )
    except InvalidInput as exc:
        if exc.field == "size":  # the limit, crossed mid-stream: nothing was kept
            return _too_large(limit)
        raise
    return record_response(stored, status_code=201, headers={"Location": f"/files/{stored.id}"})


@router.get("/{file_id}", response_class=StreamingResponse, responses=problem_responses(404))
async def download(file_id: UUID, conn: Connection, services: ServicesDep) -> StreamingResponse:
    """The file's bytes, streamed, with the headers that make serving them safe.

    ``attachment``, ``nosniff`` and a sandboxing CSP (``AsyncFileStore.headers``):
    an uploaded HTML or SVG file is never rendered as itself. The SHA-256
    recorded at upload is checked as the last chunk is read.
    """
    store = _store(services)
    row = await files.get(conn, file_id)
    reader = await store.open(row)

    async def chunks() -> AsyncIterator[bytes]:
        async with reader:
            async for chunk in reader:
                yield chunk

    # The background task closes the reader even if the client left before the first chunk.
    return StreamingResponse(
        chunks(), headers=store.headers(row), background=BackgroundTask(reader.aclose)
    )
