"""Uploads streamed into the file store (local disk in tmp_path), and downloads."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from apptest import MAX_UPLOAD

from toolkit.db import Database

pytestmark = pytest.mark.asyncio

PDF = b"%PDF-1.7\n" + bytes(range(256)) * 40  # ~10 KB, sniffed as application/pdf


def leftovers(root: Path) -> list[Path]:
    """Every file under the storage root (folders may stay)."""
    return [p for p in root.rglob("*") if p.is_file()]


def file_rows(db: Database) -> int:
    with db.connection() as conn:
        row = conn.execute("SELECT count(*) FROM files").fetchone()
    assert row is not None
    return int(row[0])


async def test_upload_then_download_round_trips_the_bytes(
    client: httpx.AsyncClient, owner_id: str, storage_root: Path
) -> None:
    uploaded = await client.post(
        "/files",
        params={"owner_id": owner_id, "filename": "report.pdf"},
        content=PDF,
        headers={"Content-Type": "application/pdf"},
    )
    assert uploaded.status_code == 201, uploaded.text
    row = uploaded.json()
    assert row["status"] == "stored" and row["size"] == len(PDF)
    assert row["sha256"] == hashlib.sha256(PDF).hexdigest()
    assert row["content_type"] == "application/pdf" and row["original_name"] == "report.pdf"
    assert [p.read_bytes() for p in leftovers(storage_root)] == [PDF]
    downloaded = await client.get(uploaded.headers["location"])
    assert downloaded.status_code == 200
    assert downloaded.content == PDF
    assert downloaded.headers["content-disposition"].startswith("attachment")
    assert downloaded.headers["x-content-type-options"] == "nosniff"


async def test_a_streamed_upload_without_content_length_is_stored(
    client: httpx.AsyncClient, owner_id: str
) -> None:
    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(PDF), 1000):
            yield PDF[start : start + 1000]

    uploaded = await client.post("/files", params={"owner_id": owner_id}, content=body())
    assert uploaded.status_code == 201, uploaded.text
    assert (await client.get(uploaded.headers["location"])).content == PDF


async def test_too_large_by_content_length_is_413_and_leaves_nothing(
    client: httpx.AsyncClient, owner_id: str, storage_root: Path, toolkit_db: Database
) -> None:
    big = b"%PDF-1.7\n" + b"x" * MAX_UPLOAD
    response = await client.post("/files", params={"owner_id": owner_id}, content=big)
    assert response.status_code == 413 and response.json()["field"] == "size"
    assert leftovers(storage_root) == [] and file_rows(toolkit_db) == 0


async def test_too_large_mid_stream_is_413_and_leaves_nothing(
    client: httpx.AsyncClient, owner_id: str, storage_root: Path, toolkit_db: Database
) -> None:
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b"%PDF-1.7\n"
        while sent < 4 * MAX_UPLOAD:  # bounded, in case the limit is not enforced
            sent += 8192
            yield b"x" * 8192

    response = await client.post("/files", params={"owner_id": owner_id}, content=endless())
    assert response.status_code == 413, response.text
    assert leftovers(storage_root) == [] and file_rows(toolkit_db) == 0


async def test_a_type_outside_the_allow_list_is_422(
    client: httpx.AsyncClient, owner_id: str, storage_root: Path
) -> None:
    response = await client.post(
        "/files",
        params={"owner_id": owner_id},
        content=b"\x7fELF\x02\x01\x01" + b"\x00" * 100,
        headers={"Content-Type": "application/pdf"},
    )
    assert response.status_code == 422 and response.json()["field"] == "content_type"
    assert leftovers(storage_root) == []


async def test_an_unknown_owner_is_422_and_leaves_nothing(
    client: httpx.AsyncClient, storage_root: Path
) -> None:
    response = await client.post(
        "/files", params={"owner_id": "00000000-0000-4000-8000-000000000000"}, content=PDF
    )
    assert response.status_code == 422, response.text
    assert leftovers(storage_root) == []


async def test_an_unknown_file_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/files/00000000-0000-4000-8000-000000000000")
    assert response.status_code == 404
