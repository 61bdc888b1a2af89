"""Storage of LangGraph checkpoints in ``lg_*`` tables (queries in ``sql/langgraph.sql``).

This module holds what does not need LangGraph itself, so ``toolkit
verify`` can check its queries on an install without the ``langgraph``
extra: the records the queries return, their bindings, the delta encoding
of lists that grow by appending, and a small driver that runs one
operation's statements on a sync database or on an async one.

Operations are generators: they yield :class:`Call` (a bound query and its
parameters) and receive each call's result (a list of records, or the row
count of an ``:exec``). :func:`run` drives one on a connection (or in a
transaction) of a :class:`~toolkit.db.Database`, :func:`arun` of an
:class:`~toolkit.aio.db.database.AsyncDatabase`, with the drivers' one drive
loop per mode, as the tenant the run's config names (thread ids are per
tenant); the SQL text is the registry's in both cases. A failing statement
is thrown into the generator, which may catch it (a put whose delta base
vanished goes on in a new unit of work with the whole value:
:class:`Restart`) or let it out as a toolkit exception.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, TypeVar
from uuid import UUID

from toolkit.aio.db import drivers as async_drivers
from toolkit.aio.db.database import AsyncDatabase
from toolkit.db import drivers
from toolkit.db.bind import Exec, Many, OneOrNone, Runnable, Scalar
from toolkit.db.database import Database
from toolkit.errors import RetryableConflict, TenantRequired
from toolkit.records import Record

T = TypeVar("T")

__all__ = [
    "TENANT_KEY",
    "Call",
    "InsertedChannel",
    "LgCheckpoint",
    "LgRow",
    "Op",
    "Restart",
    "Tail",
    "TailCache",
    "TailKey",
    "ThreadCount",
    "ThreadId",
    "array_header",
    "arun",
    "retrying",
    "run",
    "split_array",
]


# -- records -------------------------------------------------------------------


class LgRow(Record):
    """One row of a checkpoint list (``langgraph.list``).

    ``kind`` is ``c`` for a checkpoint (``checkpoint_id``, parent, checkpoint,
    metadata), ``b`` for one segment of a channel value (``channel``,
    ``version`` the value's version, ``depth`` in its delta chain,
    ``item_count``, ``type``, ``data``) and ``w`` for a pending write
    (``checkpoint_id``, ``channel``, ``type``, ``task_id``, ``task_path``,
    ``idx``, ``data``).
    """

    kind: str
    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str | None
    parent_checkpoint_id: str | None
    channel: str | None
    version: str | None
    depth: int | None
    item_count: int | None
    type: str | None
    task_id: str | None
    task_path: str | None
    idx: int | None
    data: bytes | None
    checkpoint: dict[str, Any] | None
    metadata: dict[str, Any] | None


class LgCheckpoint(Record):
    """A checkpoint read by ``langgraph.get``: one row, its values and writes as arrays.

    ``channels`` .. ``blobs`` are the segments of its channel values (the
    channel, the value's version, the depth in its delta chain, the item
    count, the type and the bytes), ``write_*`` its pending writes; each
    group is None when there are none. One row instead of one per segment
    and write: a record per row costs more than the arrays do.
    """

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    parent_checkpoint_id: str | None
    checkpoint: dict[str, Any]
    metadata: dict[str, Any]
    channels: list[str] | None
    versions: list[str] | None
    depths: list[int] | None
    item_counts: list[int | None] | None
    types: list[str] | None
    blobs: list[bytes | None] | None
    write_task_ids: list[str] | None
    write_task_paths: list[str] | None
    write_idxs: list[int] | None
    write_channels: list[str] | None
    write_types: list[str] | None
    write_blobs: list[bytes] | None


class InsertedChannel(Record):
    """A channel whose value row a put wrote (not already there)."""

    channel: str


class ThreadId(Record):
    """A thread id."""

    thread_id: str


class ThreadCount(Record):
    """A thread and how many of its checkpoints an operation deleted."""

    thread_id: str
    checkpoints: int


# -- bindings ------------------------------------------------------------------

_BLOB_ARRAYS = ("channels", "versions", "types", "base_versions", "item_counts", "blobs")
_WRITE_ARRAYS = ("idxs", "channels", "types", "blobs")
_WRITE_KEYS = ("thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "task_path")

PUT = Many(
    "langgraph.put",
    InsertedChannel,
    (
        "thread_id",
        "checkpoint_ns",
        "checkpoint_id",
        "parent_checkpoint_id",
        "checkpoint",
        "metadata",
        *_BLOB_ARRAYS,
    ),
    prepare=True,
)
# The hot path is prepared on first use (its plan never changes); queries with
# optional filters are planned with their actual values.
# Every write of a thread's keys takes its lock first, in the same transaction (see the query).
LOCK_THREADS = Scalar("langgraph.lock_threads", int, ("thread_ids",), prepare=True)
PUT_WRITES = Exec("langgraph.put_writes", (*_WRITE_KEYS, *_WRITE_ARRAYS), prepare=True)
UPSERT_WRITES = Exec("langgraph.upsert_writes", (*_WRITE_KEYS, *_WRITE_ARRAYS), prepare=True)
GET = OneOrNone(
    "langgraph.get", LgCheckpoint, ("thread_id", "checkpoint_ns", "upper"), prepare=True
)
LIST = Many(
    "langgraph.list",
    LgRow,
    ("thread_id", "checkpoint_ns", "checkpoint_id", "before", "filter", "limit"),
    prepare=False,
)
DELETE_THREADS = Exec("langgraph.delete_threads", ("thread_ids",))
DELETE_RUNS = Many("langgraph.delete_runs", ThreadCount, ("run_ids",))
KEEP_LAST = Many("langgraph.keep_last", ThreadCount, ("thread_ids", "keep", "skip"), prepare=False)
DELTA_THREADS = Many("langgraph.delta_threads", ThreadId, ("thread_ids",), prepare=False)
DELETE_IDLE_THREADS = Many("langgraph.delete_idle_threads", ThreadCount, ("idle_for",))
COLLECT_BLOBS = Exec("langgraph.collect_blobs", ("thread_ids",))
COPY_THREAD = Exec("langgraph.copy_thread", ("source", "target"))
TABLES_READY = Scalar("langgraph.tables_ready", bool, ())


# -- running operations --------------------------------------------------------


class Call(NamedTuple):
    """One statement of an operation: a binding and its parameters."""

    binding: Runnable
    params: dict[str, Any]


Op = Generator[Call, Any, T]
"""An operation: yields calls, receives each one's result, returns its own."""


TENANT_KEY: Final = "tenant_id"
"""The key of a run config's ``configurable`` that names the run's tenant (a UUID or its text)."""

_WHERE_THE_TENANT_GOES: Final = (
    f"the LangGraph saver takes it from the run config's configurable[{TENANT_KEY!r}], and "
    "from tenant= in delete_thread, copy_thread, prune, delete_for_runs and retain"
)


class Restart(Exception):
    """Raised by an operation to go on with ``then`` in a new unit of work.

    A failed statement ends the transaction it ran in (and with a tenant,
    every unit of work is a transaction), so an operation that recovers from
    one (a put whose delta base vanished) cannot go on on the same connection.
    """

    def __init__(self, then: Op[Any]) -> None:
        super().__init__("restart the operation in a new unit of work")
        self.then = then


CONFLICT_ATTEMPTS: Final = 3
"""How many times :func:`retrying` runs an operation that meets :class:`RetryableConflict`."""


def retrying(make: Callable[[], Op[T]], attempts: int = CONFLICT_ATTEMPTS) -> Op[T]:
    """The operation ``make()`` makes, made and run again after a :class:`RetryableConflict`.

    For operations that run in one transaction and may update or delete a
    row ``toolkit maintain`` is moving between partitions (SQLSTATE 40001:
    nothing of the transaction was written). Each new attempt is a new unit
    of work (:class:`Restart`); after ``attempts`` the conflict goes out.
    """
    try:
        return (yield from make())
    except RetryableConflict:
        if attempts <= 1:
            raise
        raise Restart(retrying(make, attempts - 1)) from None


def run(db: Database, op: Op[T], *, tenant: UUID | None = None, transaction: bool = False) -> T:
    """Run ``op`` on a connection of ``db`` (in one of its transactions if asked) as ``tenant``.

    With a tenant the connection's block is one transaction of that tenant
    (:meth:`~toolkit.db.Database.connection`); without one, as the role's
    own (the default tenant, or :class:`~toolkit.errors.TenantRequired`
    where row-level security binds the role; its message says where the
    saver takes the tenant from). A :class:`Restart` goes on in a new unit
    of work.
    """
    while True:
        try:
            with db.transaction(tenant) if transaction else db.connection(tenant) as conn:
                return drivers.drive(conn, op)
        except Restart as restart:
            op = restart.then
        except TenantRequired as exc:
            raise TenantRequired(f"{exc}; {_WHERE_THE_TENANT_GOES}") from exc


async def arun(
    db: AsyncDatabase, op: Op[T], *, tenant: UUID | None = None, transaction: bool = False
) -> T:
    """Async :func:`run`, on an :class:`~toolkit.aio.db.database.AsyncDatabase`."""
    while True:
        try:
            async with db.transaction(tenant) if transaction else db.connection(tenant) as conn:
                return await async_drivers.drive(conn, op)
        except Restart as restart:
            op = restart.then
        except TenantRequired as exc:
            raise TenantRequired(f"{exc}; {_WHERE_THE_TENANT_GOES}") from exc


# -- append-only lists as deltas -------------------------------------------------

_FIXARRAY: Final = 0x90
_ARRAY16: Final = 0xDC
_ARRAY32: Final = 0xDD


def split_array(data: bytes) -> tuple[int, int] | None:
    """(item count, header length) of a msgpack array, or None if ``data`` is not one."""
    if not data:
        return None
    first = data[0]
    if _FIXARRAY <= first <= _FIXARRAY + 15:
        return first - _FIXARRAY, 1
    if first == _ARRAY16 and len(data) >= 3:
        return int.from_bytes(data[1:3], "big"), 3
    if first == _ARRAY32 and len(data) >= 5:
        return int.from_bytes(data[1:5], "big"), 5
    return None


def array_header(count: int) -> bytes:
    """The msgpack header of an array of ``count`` items."""
    if count < 16:
        return bytes((_FIXARRAY + count,))
    if count < 1 << 16:
        return bytes((_ARRAY16,)) + count.to_bytes(2, "big")
    return bytes((_ARRAY32,)) + count.to_bytes(4, "big")


@dataclass(frozen=True, slots=True)
class Link:
    """One version in a delta chain: its run position and the length of its items."""

    run: int
    version: str
    body_len: int


@dataclass(frozen=True, slots=True)
class Tail:
    """The newest version this process wrote of one list channel.

    ``digest`` covers the serialized items (the msgpack body after the
    array header); ``chain`` is the version's skip-delta chain, oldest
    first, starting at the whole value (run 0) and ending with itself.
    """

    version: str
    item_count: int
    digest: bytes
    chain: tuple[Link, ...]

    @property
    def run(self) -> int:
        return self.chain[-1].run

    @property
    def body_len(self) -> int:
        return self.chain[-1].body_len


class Segment(NamedTuple):
    """How one list value is stored: whole, or as the items after a base version."""

    base_version: str | None
    item_count: int | None
    data: bytes
    tail: Tail | None
    """What to remember once the row is written (None: forget the channel)."""


MIN_DELTA_BYTES: Final = 1024
"""A list whose earlier version is smaller than this is stored whole."""


def plan_list(
    data: bytes,
    version: str,
    previous: Tail | None,
) -> Segment:
    """Store ``data`` (a msgpack array) whole, or as a delta on ``previous``'s chain.

    A delta is used when the items of ``previous`` are, byte for byte, the
    first items of ``data`` (checked by digest) and the list grew. Deltas
    follow the skip-delta scheme: the value at run position ``n`` extends the
    one at ``n & (n - 1)``, so reading any version takes at most
    ``popcount(n) + 1`` rows (9 for 255 appends) while storage stays within
    a factor ``log2(n)`` of the items themselves.
    """
    shape = split_array(data)
    if shape is None:
        return Segment(None, None, data, None)
    count, header = shape
    body = memoryview(data)[header:]
    hasher = hashlib.blake2b(digest_size=16)
    if (
        previous is not None
        and previous.body_len >= MIN_DELTA_BYTES
        and count > previous.item_count
        and len(body) > previous.body_len
    ):
        hasher.update(body[: previous.body_len])
        if hasher.copy().digest() == previous.digest:
            hasher.update(body[previous.body_len :])
            run_index = previous.run + 1
            base_run = run_index & (run_index - 1)
            kept = tuple(link for link in previous.chain if link.run <= base_run)
            base = kept[-1]
            chain = (*kept, Link(run_index, version, len(body)))
            tail = Tail(version, count, hasher.digest(), chain)
            return Segment(base.version, count, bytes(body[base.body_len :]), tail)
        hasher = hashlib.blake2b(digest_size=16)
    hasher.update(body)
    tail = Tail(version, count, hasher.digest(), (Link(0, version, len(body)),))
    return Segment(None, None, data, tail)


def join_segments(segments: list[tuple[int, int | None, bytes]]) -> bytes:
    """Rebuild a msgpack array from its chain: (depth, item_count, data), any order.

    The deepest segment holds a whole array; each shallower one the items
    appended after it; the shallowest (depth 0) gives the item count.
    """
    ordered = sorted(segments, key=lambda segment: -segment[0])
    root = ordered[0][2]
    shape = split_array(root)
    if shape is None:
        raise ValueError("the root of a delta chain is not a msgpack array")
    count = ordered[-1][1]
    if count is None:
        raise ValueError("the top of a delta chain has no item count")
    parts: list[bytes | memoryview] = [array_header(count), memoryview(root)[shape[1] :]]
    parts.extend(memoryview(segment[2]) for segment in ordered[1:])
    return b"".join(parts)


TailKey = tuple[str, str, str, str]
"""(tenant, thread, namespace, channel) of a list channel; the tenant is ``""`` without one.

The tenant leads because thread ids are per tenant: another tenant's
thread of the same id has versions of the same names holding other values,
so a delta must never be planned on its tail.
"""


class TailCache:
    """The newest written version of each list channel, per :data:`TailKey`.

    Bounded (least recently used entries go first) and safe to share
    between threads. A miss only costs storage: the next value is written
    whole and starts a new chain.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self._entries: OrderedDict[TailKey, Tail] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()

    def get(self, key: TailKey) -> Tail | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: TailKey, tail: Tail) -> None:
        with self._lock:
            self._entries[key] = tail
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def discard(self, key: TailKey) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def forget_threads(self, tenant: str, thread_ids: list[str] | None) -> None:
        """Drop the entries of these threads of ``tenant`` (of every thread when None)."""
        with self._lock:
            if thread_ids is None:
                self._entries.clear()
                return
            wanted = {(tenant, thread_id) for thread_id in thread_ids}
            for key in [key for key in self._entries if key[:2] in wanted]:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
