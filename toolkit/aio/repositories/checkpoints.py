"""Checkpoints (queries in ``sql/checkpoints.sql``).

Checkpoints are immutable snapshots appended per execution with a monotonic
sequence. Appending is idempotent on (execution, sequence): the same
checkpoint written twice (a retried step) is stored once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from toolkit.aio.db.database import AsyncConnection
from toolkit.aio.db.drivers import run
from toolkit.aio.db.patterns import (
    DEFAULT_LIMIT,
    check_int,
    check_limit,
    jsonb,
    parse_id,
    validate,
)
from toolkit.db.bind import Exec, Many, One, OneOrNone, Returning, Scalar
from toolkit.errors import Conflict
from toolkit.repositories.records import Checkpoint, CheckpointCreate

ENTITY = "checkpoint"
MAX_SEQUENCE = 2**31 - 1
"""The largest sequence a checkpoint may have (an int4 column)."""

_append = Returning(
    "checkpoints.append",
    Checkpoint,
    ("execution_id", "sequence", "parent_id", "state", "metadata"),
)
_get = One("checkpoints.get", Checkpoint, ("id",), entity=ENTITY)
_get_at = OneOrNone("checkpoints.get_at", Checkpoint, ("execution_id", "sequence"))
_latest = OneOrNone("checkpoints.latest", Checkpoint, ("execution_id",))
_history = Many("checkpoints.history", Checkpoint, ("execution_id", "after_sequence", "limit"))
_count = Scalar("checkpoints.count", int, ("execution_id",))
_prune = Exec("checkpoints.prune", ("execution_id", "keep"))


async def append(conn: AsyncConnection, data: CheckpointCreate | Mapping[str, Any]) -> Checkpoint:
    """Append a checkpoint, or return the one already at (execution, sequence).

    Writing the same sequence again with a different state raises Conflict:
    checkpoints never change once written.
    """
    checkpoint = validate(CheckpointCreate, data)
    created = await run(
        conn,
        _append,
        execution_id=checkpoint.execution_id,
        sequence=checkpoint.sequence,
        parent_id=checkpoint.parent_id,
        state=jsonb(checkpoint.state),
        metadata=jsonb(checkpoint.metadata),
    )
    if created is not None:
        return created
    existing = await run(
        conn, _get_at, execution_id=checkpoint.execution_id, sequence=checkpoint.sequence
    )
    if existing is None:  # deleted between the two statements
        raise Conflict(
            f"checkpoint {checkpoint.sequence} of {checkpoint.execution_id} changed concurrently"
        )
    if existing.state != checkpoint.state or existing.metadata != checkpoint.metadata:
        raise Conflict(
            f"checkpoint {checkpoint.sequence} of execution {checkpoint.execution_id} "
            "already exists with a different state"
        )
    return existing


async def get(conn: AsyncConnection, checkpoint_id: UUID | str) -> Checkpoint:
    """The checkpoint with this id; NotFound otherwise."""
    key = parse_id(checkpoint_id)
    return await run(conn, _get, key, id=key)


async def get_at(
    conn: AsyncConnection, execution_id: UUID | str, sequence: int
) -> Checkpoint | None:
    """The checkpoint of an execution at ``sequence``, or None."""
    return await run(
        conn,
        _get_at,
        execution_id=parse_id(execution_id, "execution_id"),
        sequence=_sequence(sequence),
    )


async def latest(conn: AsyncConnection, execution_id: UUID | str) -> Checkpoint | None:
    """The newest checkpoint of an execution, or None if it has none."""
    return await run(conn, _latest, execution_id=parse_id(execution_id, "execution_id"))


async def history(
    conn: AsyncConnection,
    execution_id: UUID | str,
    *,
    after_sequence: int = -1,
    limit: int = DEFAULT_LIMIT,
) -> list[Checkpoint]:
    """Checkpoints after ``after_sequence``, oldest first (pass the last one's sequence on)."""
    # -1 (the default) means from the first; checked before any comparison, since
    # comparing a Decimal NaN raises.
    after = check_int(after_sequence, "after_sequence", -1, MAX_SEQUENCE)
    return await run(
        conn,
        _history,
        execution_id=parse_id(execution_id, "execution_id"),
        after_sequence=after,
        limit=check_limit(limit),
    )


async def count(conn: AsyncConnection, execution_id: UUID | str) -> int:
    """How many checkpoints an execution has."""
    return await run(conn, _count, execution_id=parse_id(execution_id, "execution_id")) or 0


async def prune(conn: AsyncConnection, execution_id: UUID | str, *, keep: int) -> int:
    """Delete all but the newest ``keep`` checkpoints; returns how many went."""
    kept = check_int(keep, "keep", 1, 1_000_000)
    return await run(conn, _prune, execution_id=parse_id(execution_id, "execution_id"), keep=kept)


def _sequence(value: Any) -> int:
    return check_int(value, "sequence", 0, MAX_SEQUENCE)
