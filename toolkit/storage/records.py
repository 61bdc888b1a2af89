"""Records of the files entity (queries in ``sql/files.sql``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import Field, StringConstraints

from toolkit.records import Input, Record, Text

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


ShortText = Annotated[Text, StringConstraints(min_length=1, max_length=255)]


class FileCreate(Input):
    """A file row as the FileStore writes it (status 'staged')."""

    id: UUID
    owner_id: UUID
    purpose: Purpose
    key: Annotated[Text, StringConstraints(min_length=1, max_length=512)]
    original_name: ShortText | None = None
    size: Annotated[int, Field(ge=0, lt=2**63)]
    content_type: ShortText
    claimed_type: ShortText | None = None
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    execution_id: UUID | None = None
    session_id: UUID | None = None


class FileFilter(Input):
    owner_id: UUID | None = None
    purpose: Purpose | None = None
    execution_id: UUID | None = None
    session_id: UUID | None = None
