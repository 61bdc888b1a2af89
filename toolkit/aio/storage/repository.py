"""Files: the metadata rows of stored objects (queries in ``sql/files.sql``).

Thin typed functions; the protocol that keeps rows and bytes consistent is
in :mod:`toolkit.aio.storage.filestore`.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from toolkit.aio.db.database import AsyncConnection
from toolkit.aio.db.drivers import run
from toolkit.aio.db.patterns import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    AuditWrite,
    atomic,
    check_limit,
    list_page,
    parse_id,
    parse_ids,
    record_audit,
    validate,
)
from toolkit.db.bind import Many, One, Returning
from toolkit.errors import InvalidInput, bounded_repr
from toolkit.records import Page
from toolkit.storage.records import File, FileCreate, FileFilter

ENTITY = "file"
_COLUMNS = (
    "id",
    "owner_id",
    "purpose",
    "key",
    "original_name",
    "size",
    "content_type",
    "claimed_type",
    "sha256",
    "execution_id",
    "session_id",
)
_FILTERS = ("owner_id", "purpose", "execution_id", "session_id")

_create = One("files.create", File, _COLUMNS, entity=ENTITY)
_get = One("files.get", File, ("id",), entity=ENTITY)
_get_many = Many("files.get_many", File, ("ids",))
_existing_keys = Many("files.existing_keys", File, ("keys",))
_list = Many("files.list", File, (*_FILTERS, "limit"))
_mark_stored = Returning("files.mark_stored", File, ("id",))
_staged_before = Many("files.staged_before", File, ("grace_seconds", "limit"))
_delete = Returning("files.delete", File, ("id",))


async def create(
    conn: AsyncConnection,
    values: FileCreate | Mapping[str, Any],
    *,
    audit: AuditWrite | None = None,
) -> File:
    """Insert a file row (status 'staged'), as the FileStore does after staging the bytes."""
    row = validate(FileCreate, values)
    async with atomic(conn):
        created = await run(conn, _create, **row.model_dump())
        await record_audit(
            conn,
            audit,
            "file.created",
            created.id,
            {"purpose": created.purpose, "size": created.size, "sha256": created.sha256},
        )
    return created


async def get(conn: AsyncConnection, file_id: UUID | str) -> File:
    """The file with this id; NotFound otherwise."""
    key = parse_id(file_id)
    return await run(conn, _get, key, id=key)


async def get_many(conn: AsyncConnection, file_ids: Sequence[UUID]) -> builtins.list[File]:
    """The files among ``file_ids`` (at most 1,000; missing ones are simply absent)."""
    return await run(conn, _get_many, ids=parse_ids(file_ids, "file_ids"))


async def with_keys(conn: AsyncConnection, keys: Sequence[str]) -> builtins.list[File]:
    """The files whose key is among ``keys`` (at most 1,000 keys of at most 512 characters)."""
    if not isinstance(keys, (builtins.list, tuple)) or len(keys) > MAX_LIMIT:
        raise InvalidInput(
            f"keys must be a list of at most {MAX_LIMIT} keys, got {bounded_repr(keys)}",
            field="keys",
            value=keys,
        )
    for key in keys:
        if not isinstance(key, str) or not 1 <= len(key) <= 512 or not key.isprintable():
            raise InvalidInput(f"not a file key: {bounded_repr(key)}", field="keys", value=key)
    return await run(conn, _existing_keys, keys=builtins.list(keys))


async def list(
    conn: AsyncConnection,
    filters: FileFilter | Mapping[str, Any] | None = None,
    *,
    descending: bool = False,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page[File]:
    """A keyset page of files by creation time; filter by owner, purpose, execution, session."""
    where = validate(FileFilter, filters)
    return await list_page(
        _list,
        conn,
        where.model_dump(),
        sort="created_at",
        descending=descending,
        limit=limit,
        cursor=cursor,
    )


async def mark_stored(conn: AsyncConnection, file_id: UUID) -> File | None:
    """Mark a staged file stored; None if it is not staged (already stored, or gone)."""
    return await run(conn, _mark_stored, id=parse_id(file_id, "file_id"))


async def staged_before(
    conn: AsyncConnection, grace_seconds: float, *, limit: int = DEFAULT_LIMIT
) -> builtins.list[File]:
    """Staged files older than ``grace_seconds``, oldest first."""
    if (
        isinstance(grace_seconds, bool)
        or not isinstance(grace_seconds, (int, float))
        or not 0 <= grace_seconds <= 10 * 366 * 86400
    ):
        raise InvalidInput(
            f"grace_seconds must be a number of seconds from 0 to 10 years, "
            f"got {bounded_repr(grace_seconds)}",
            field="grace_seconds",
            value=grace_seconds,
        )
    return await run(
        conn, _staged_before, grace_seconds=float(grace_seconds), limit=check_limit(limit)
    )


async def delete(
    conn: AsyncConnection, file_id: UUID | str, *, audit: AuditWrite | None = None
) -> File | None:
    """Delete a file's row and return it (None if it did not exist)."""
    key = parse_id(file_id)
    async with atomic(conn):
        deleted = await run(conn, _delete, id=key)
        if deleted is not None:
            await record_audit(conn, audit, "file.deleted", key, {"key": deleted.key})
    return deleted
