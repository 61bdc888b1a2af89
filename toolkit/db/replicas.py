"""Read replicas: the commit position a read waits for, and each replica's health.

A transaction committed through the one door, on a Database with replicas,
yields its :class:`CommitPosition`: the primary's WAL insert position read
right after COMMIT, in the same round trip as the COMMIT (``COMMIT; SELECT
pg_current_wal_insert_lsn()``). The commit record ends at or before that
position, so a standby whose ``pg_last_wal_replay_lsn()`` has reached it has
replayed the commit, and a snapshot taken there sees the transaction. A read
given the position runs on such a replica, or on the primary: exact, never a
guess from elapsed time.

:class:`ReplicaHealth` is the skip-and-retry state of one replica: a replica
that cannot be reached, is not a standby, or lags beyond the bound is skipped
for ``retry_interval`` seconds, logged once when it becomes unusable and once
when it is used again. No I/O here: both database modules share it.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import ClassVar

from toolkit.db.conninfo import describe_target
from toolkit.errors import InvalidInput

log = logging.getLogger("toolkit.db.replicas")

COMMIT_AND_POSITION = "COMMIT; SELECT pg_catalog.pg_current_wal_insert_lsn()::text"
"""COMMIT, then the WAL insert position, as one simple query (one round trip).

Sent instead of a bare COMMIT only when the Database has replicas. The
insert position read after COMMIT returned is at or past the end of the
commit record (the position read inside the transaction would be before it).
"""

REPLAY_STATE = (
    "SELECT pg_catalog.pg_last_wal_replay_lsn()::text, "
    "CASE WHEN pg_catalog.pg_last_wal_receive_lsn() = pg_catalog.pg_last_wal_replay_lsn() "
    "THEN 0.0 ELSE extract(epoch FROM pg_catalog.clock_timestamp() "
    "- pg_catalog.pg_last_xact_replay_timestamp())::float8 END"
)
"""What a replica has replayed, and how many seconds its replay trails what it has received.

The position is NULL on a server that is not in recovery (a primary, or a
promoted standby). The lag is 0 when replay has caught up with what was
received, else the age of the last transaction replayed.
"""

_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


def parse_lsn(text: str) -> int:
    """A ``pg_lsn`` text (``16/B374D848``) as a 64-bit integer; InvalidInput otherwise."""
    match = _LSN.match(text)
    if not match:
        raise InvalidInput(
            "a commit position looks like '16/B374D848'", field="position", value=text[:40]
        )
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


@dataclass(frozen=True, order=True)
class CommitPosition:
    """Where a committed transaction ends in the primary's WAL: a read-your-writes token.

    ``str(position)`` is PostgreSQL's ``pg_lsn`` text, to keep in a session
    or cookie; :meth:`parse` reads it back. :data:`START` is the position
    before any write: a read given it may run on any replica within the lag
    bound (the caller has no write of its own to wait for); :data:`PRIMARY`
    one no replica reaches.
    """

    lsn: int

    START: ClassVar[CommitPosition]
    PRIMARY: ClassVar[CommitPosition]

    @classmethod
    def parse(cls, text: str) -> CommitPosition:
        """The position a :func:`str` of one gave; InvalidInput for anything else."""
        return cls(parse_lsn(text))

    def __str__(self) -> str:
        return f"{self.lsn >> 32:X}/{self.lsn & 0xFFFFFFFF:X}"


CommitPosition.START = CommitPosition(0)
CommitPosition.PRIMARY = CommitPosition(2**64 - 1)
"""A position no replica reaches: reads given it run on the primary (a commit whose end is
unknown, after its COMMIT's answer was lost)."""


class ReplicaHealth:
    """Whether one replica may be asked now; logs each change between usable and not.

    Thread-safe enough for its job: the worst a race does is one extra probe
    of a replica that just failed, or one read sent to the primary.
    """

    def __init__(self, url: str, retry_interval: float) -> None:
        self.target = describe_target(url)
        self.retry_interval = retry_interval
        self._retry_at = 0.0
        self._unusable: str | None = None

    @property
    def unusable(self) -> str | None:
        """Why the replica was last skipped, or None while it is in use."""
        return self._unusable

    def may_try(self) -> bool:
        """Whether to ask the replica now: usable, or its retry time has come."""
        return self._unusable is None or time.monotonic() >= self._retry_at

    def skip(self, reason: str) -> None:
        """Skip the replica for ``retry_interval`` seconds; log only when it was usable."""
        self._retry_at = time.monotonic() + self.retry_interval
        if self._unusable is None:
            log.warning(
                "replica %s skipped: %s; its reads go to the primary, retried every %g s",
                self.target,
                reason,
                self.retry_interval,
            )
        self._unusable = reason

    def usable(self) -> None:
        """The replica answered within the bound: use it (logged if it had been skipped)."""
        if self._unusable is not None:
            self._unusable = None
            log.warning("replica %s is used again", self.target)
