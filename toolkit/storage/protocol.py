"""The pure parts of the FileStore protocol, shared by the sync and the async API.

:class:`StagedFile` and :class:`SweepReport` are the same types in
:mod:`toolkit.storage.filestore` and :mod:`toolkit.aio.storage.filestore`
(``isinstance`` works across the two), as are the limits and :func:`describe`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final
from uuid import UUID

from toolkit.storage.records import File

__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "DEFAULT_MAX_BYTES",
    "SWEEP_BATCH",
    "StagedFile",
    "SweepReport",
    "describe",
]

DEFAULT_MAX_BYTES: Final = 100 << 20
"""The upload limit unless the FileStore or the call says otherwise (100 MiB)."""

DEFAULT_GRACE_SECONDS: Final = 3600.0

SWEEP_BATCH: Final = 500


@dataclass(frozen=True)
class StagedFile:
    """Bytes waiting at their staging key for their row to be committed."""

    id: UUID
    owner_id: UUID
    purpose: str
    key: str
    staging_key: str
    original_name: str | None
    size: int
    sha256: str
    content_type: str
    claimed_type: str | None


@dataclass
class SweepReport:
    """What a sweep did, by kind, with the keys it touched."""

    partial_uploads: list[str] = field(default_factory=list)
    promoted: list[UUID] = field(default_factory=list)
    lost_rows: list[UUID] = field(default_factory=list)
    staged_without_row: list[str] = field(default_factory=list)
    staged_leftovers: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    misplaced_rows: list[UUID] = field(default_factory=list)
    """Rows whose key is not one of the tenant's file keys (forged or corrupted): untouched."""

    def summary(self) -> str:
        """One line of counts."""
        return (
            f"{len(self.partial_uploads)} unfinished upload(s) removed, "
            f"{len(self.promoted)} staged file(s) promoted, "
            f"{len(self.staged_without_row)} staged object(s) without a row removed, "
            f"{len(self.staged_leftovers)} staging leftover(s) removed, "
            f"{len(self.orphans)} orphaned object(s) removed, "
            f"{len(self.lost_rows)} row(s) without bytes deleted, "
            f"{len(self.misplaced_rows)} row(s) with a key outside the tenant's area left alone"
        )


def describe(file: File) -> dict[str, Any]:
    """A short, printable view of a file row."""
    return {
        "id": str(file.id),
        "key": file.key,
        "size": file.size,
        "content_type": file.content_type,
        "sha256": file.sha256,
        "status": file.status,
    }
