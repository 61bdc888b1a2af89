"""Records of the files entity (queries in ``sql/files.sql``)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from toolkit.records import Input, Record

Purpose = Literal["attachment", "generated"]
FileStatus = Literal["staged", "stored"]


class File(Record):
    """A stored file's metadata; its bytes are at ``key`` once ``status`` is 'stored'."""

    id: UUID
    owner_id: UUID
    purpose: Purpose
    key: str
    original_name: str | None
    size: int
    content_type: str
    claimed_type: str | None
    sha256: str
    status: FileStatus
    execution_id: UUID | None
    session_id: UUID | None
    created_at: datetime
    stored_at: datetime | None


class FileFilter(Input):
    owner_id: UUID | None = None
    purpose: Purpose | None = None
    execution_id: UUID | None = None
    session_id: UUID | None = None
