"""A LangGraph checkpointer on the toolkit's PostgreSQL.

Install: ``pip install 'agent-persistence-toolkit[langgraph]'``.

:class:`ToolkitCheckpointSaver` is a ``BaseCheckpointSaver`` over the
``lg_checkpoints``, ``lg_blobs`` and ``lg_writes`` tables of migration
0006, with sync methods on the toolkit's pooled :class:`~toolkit.db.Database`
and async ones on an :class:`~toolkit.aio.db.database.AsyncDatabase` to the
same database: every connection and commit goes through the toolkit's one
door (lost-COMMIT lookup, error translation), and there is no private pool.
Its SQL is in ``sql/langgraph.sql``; the tables come from ``toolkit
migrate`` like every other table: ``setup()`` only checks that they are
there, so two processes starting at once cannot race to create them.

How values are stored
---------------------
A checkpoint row holds the checkpoint without its channel values. Each
channel value is a row of ``lg_blobs`` keyed by (thread, namespace,
channel, version) and written only when LangGraph reports a new version,
so a channel that does not change is never stored again.

A list that grows by appending (LangGraph's ``messages``) would still be
stored in full at every version, which makes a thread's storage grow with
the square of its turns. When a list's serialized items start, byte for
byte, with the items of the version this process wrote before (checked by
a BLAKE2b digest, never assumed), only the items after a *base* version are
stored, with a link to it. Bases follow the skip-delta scheme: the n-th
version of an append run extends version ``n & (n - 1)``. The trade-off:

* reading a version takes ``popcount(n) + 1`` rows of its chain (at most 9
  for the first 255 appends, 12 for 2047), fetched by one recursive query
  in the same round trip as the checkpoint; the bytes read are the value's
  own, whatever the depth;
* storage is at most ``log2(n) + 1`` times the items themselves, against
  ``n / 2`` times for storing every version whole (200 turns: ~4x against
  ~100x);
* writing hashes the list's serialized bytes once, which costs less than
  serializing it (and PostgresSaver serializes it too).

The process remembers the newest version of each list channel (an LRU of
4096 by default). After a restart, or when another process wrote the
previous version, the next value is stored whole and starts a new chain.
A delta never outlives its base (triggers that act as the foreign key of
0006 did, which partitioned tables cannot keep): if retention deleted the
base meanwhile, the put retries with the whole value.

Stored values never run code
----------------------------
LangGraph's default serializer imports and calls whatever module and
function a stored value names. This saver reads with
:class:`~toolkit.integrations.langgraph_serde.StrictSerializer` instead:
LangGraph's strict allow-list (what LangGraph and LangChain store
themselves, plus the application's ``allowed_types``), and a value naming
anything else raises ``DeserializationRefused`` without importing it. So a
login that can write ``lg_blobs`` or ``lg_writes`` cannot make the workers
that load a thread run code.

Tenants
-------
Thread ids are per tenant. A run names its tenant in its config, as
``config["configurable"]["tenant_id"]`` (:data:`TENANT_KEY`: a UUID or its
text), and each call runs in one transaction of that tenant
(``Database.connection(tenant=...)``), so row-level security shows and
accepts that tenant's checkpoints only: two tenants may both run thread
``"t1"`` and neither sees the other's, and ``list`` without a thread id
lists the tenant's own. The configs the saver returns carry the tenant,
so a checkpoint's config reads it again; it is not copied into the
checkpoint's metadata (the row's ``tenant_id`` holds it). The methods that
take thread or run ids instead of a config (``delete_thread``,
``copy_thread``, ``prune``, ``delete_for_runs``, ``retain``) take it as
``tenant=``. Without a tenant a call runs as the role's own: as a
superuser or the tables' owner (one workspace), on the default tenant's
threads; as the application role, the database refuses it with
:class:`~toolkit.errors.TenantRequired`, never an empty answer.

Retention
---------
``prune`` (LangGraph's API: ``keep_latest`` or ``delete``) and
:meth:`ToolkitCheckpointSaver.retain`, which keeps the newest N checkpoints
of each thread namespace and drops threads idle longer than a given age,
in one transaction. Values no kept checkpoint reads (directly or as the
base of a delta) go with them. Threads whose graphs use LangGraph's beta
``DeltaChannel`` rebuild that channel from the writes of earlier
checkpoints: ``retain`` leaves them whole (and reports them) and
``prune("keep_latest")`` refuses them, as PostgresSaver does.

Retention without ``DELETE``: the three tables are partitioned by the time
a row was stored (migration 0014), and ``toolkit maintain`` drops the
partitions of *finished* threads (no checkpoint or write stored for four
weeks, by default) after moving the rows of live threads out of them, so a
live thread's get_tuple, list and put answer the same before and after
(see :mod:`toolkit.db.partitions`). Each read probes every attached
partition's index (about eight with weekly partitions). No unique index
refuses a second row of a key any more (it would have to hold the time), so
every write takes its thread's advisory lock, in a statement of its own,
before it inserts a key only when no row has it: racing writers leave one
row. maintain takes the same locks for the threads it moves; ``retain``,
``prune`` and ``delete_for_runs``, which take none, run again (up to three
times) when they meet a row being moved.

Why not the ``checkpoints`` table of migration 0001: it holds an
execution's snapshots, keyed by execution (a foreign key) and sequence;
LangGraph's threads are free text ids that need not be executions, with
namespaces, parent links and per-channel values, so they get tables of
their own (prefix ``lg_``) and the execution table keeps its constraints.
"""

from __future__ import annotations

import builtins
import json
import random
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any, Final, cast
from uuid import UUID

from psycopg.types.json import Jsonb

from toolkit.aio.db.database import AsyncDatabase
from toolkit.config import Settings, default_settings
from toolkit.db.database import Database
from toolkit.errors import ConfigurationError, InvalidInput, InvalidReference, TenantMismatch
from toolkit.integrations.checkpoint_store import (
    COLLECT_BLOBS,
    COPY_THREAD,
    DELETE_IDLE_THREADS,
    DELETE_RUNS,
    DELETE_THREADS,
    DELTA_THREADS,
    GET,
    KEEP_LAST,
    LIST,
    LOCK_THREADS,
    PUT,
    PUT_WRITES,
    TABLES_READY,
    TENANT_KEY,
    UPSERT_WRITES,
    Call,
    InsertedChannel,
    LgCheckpoint,
    LgRow,
    Op,
    Restart,
    Segment,
    TailCache,
    TailKey,
    ThreadCount,
    ThreadId,
    arun,
    join_segments,
    plan_list,
    retrying,
    run,
)
from toolkit.tenants import tenant_id

try:
    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.base import (
        WRITES_IDX_MAP,
        BaseCheckpointSaver,
        ChannelVersions,
        Checkpoint,
        CheckpointMetadata,
        CheckpointTuple,
        get_checkpoint_id,
        get_serializable_checkpoint_metadata,
    )
    from langgraph.checkpoint.serde.base import SerializerProtocol

    from toolkit.integrations.langgraph_serde import AllowedType, StrictSerializer
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "toolkit.integrations.langgraph needs LangGraph's checkpoint interfaces: "
        "pip install 'agent-persistence-toolkit[langgraph]'"
    ) from exc

__all__ = ["PRUNE_STRATEGIES", "TENANT_KEY", "RetentionReport", "ToolkitCheckpointSaver"]

PRUNE_STRATEGIES: Final = ("keep_latest", "delete")
_LATEST: Final = "\U0010ffff"
"""Sorts after every checkpoint id (ids compare bytewise)."""


@dataclass(frozen=True)
class RetentionReport:
    """What :meth:`ToolkitCheckpointSaver.retain` deleted."""

    threads_dropped: tuple[str, ...]
    """Threads deleted whole because they were idle."""
    checkpoints_deleted: int
    """Checkpoints deleted, idle threads' included."""
    values_deleted: int
    """Value rows no kept checkpoint read any more (idle threads' not counted)."""
    threads_skipped: tuple[str, ...] = ()
    """Threads ``keep_last`` left whole because their graphs use LangGraph's DeltaChannel."""


@dataclass
class _Row:
    """A value row being written by a put."""

    channel: str
    version: str
    type: str
    data: bytes
    segment: Segment | None
    """Set for lists (msgpack arrays): how the value is stored."""


class ToolkitCheckpointSaver(BaseCheckpointSaver[str]):
    """LangGraph checkpoints in the toolkit's PostgreSQL (see the module docstring).

    ``database``
        The toolkit :class:`~toolkit.db.Database` the sync methods use; by
        default one is made from the toolkit's settings (TOOLKIT_*) and
        closed by :meth:`close`.
    ``async_database``
        The :class:`~toolkit.aio.db.database.AsyncDatabase` the async
        methods use; by default one is made with ``database``'s settings and
        URL, opened on the first async call and closed by :meth:`aclose`.
    ``async_pool``
        No longer accepted (a private pool was a second door): passing one
        raises :class:`~toolkit.errors.ConfigurationError`; pass
        ``async_database`` instead.
    ``allowed_types``
        Classes (or ``(module, name)`` pairs) that stored state may hold
        besides the types LangGraph and LangChain store themselves: the
        application's dataclasses, Pydantic models and enums. A value naming
        any other type raises :class:`~toolkit.errors.DeserializationRefused`
        on load and runs nothing (see :mod:`toolkit.integrations.langgraph_serde`).
    ``serde``
        A serializer of the application's own instead of the default
        :class:`~toolkit.integrations.langgraph_serde.StrictSerializer`
        (give it the allow-list then; not both). Appended lists are stored
        as deltas only with the ``msgpack`` encoding; an encrypting
        serializer (wrap a ``StrictSerializer``) stores every version whole.
    ``tail_cache_size``
        How many list channels the process remembers for deltas.

    Each call runs as the tenant its run config names in
    ``configurable["tenant_id"]`` (the thread-id methods: ``tenant=``), so
    thread ids are per tenant; see the module docstring.

    Use :meth:`from_settings` to build one from the toolkit's settings, and
    ``with`` / ``async with`` (or :meth:`close` / :meth:`aclose`) to release
    what it opened. Migrate first (``toolkit migrate``): it never creates
    tables itself.
    """

    def __init__(
        self,
        database: Database | None = None,
        *,
        async_database: AsyncDatabase | None = None,
        async_pool: object = None,
        serde: SerializerProtocol | None = None,
        allowed_types: Iterable[AllowedType] = (),
        tail_cache_size: int = 4096,
    ) -> None:
        super().__init__(serde=_serializer(serde, allowed_types))
        if async_pool is not None:
            raise ConfigurationError(
                "ToolkitCheckpointSaver no longer takes async_pool: pass "
                "async_database=AsyncDatabase(settings) so async checkpoints commit "
                "through the toolkit's own transactions"
            )
        if database is not None and not isinstance(database, Database):
            raise InvalidInput("database must be a toolkit Database", field="database")
        if async_database is not None and not isinstance(async_database, AsyncDatabase):
            raise InvalidInput(
                "async_database must be a toolkit AsyncDatabase", field="async_database"
            )
        self._owns_database = database is None
        self.database = database or Database(default_settings())
        self._owns_async_database = async_database is None
        # The sync database already warned about a privileged role, if it is one.
        self.async_database = async_database or AsyncDatabase(
            self.database.settings, url=self.database.url, warn_if_privileged=False
        )
        self._tails = TailCache(tail_cache_size)

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        serde: SerializerProtocol | None = None,
        allowed_types: Iterable[AllowedType] = (),
    ) -> ToolkitCheckpointSaver:
        """A saver with databases of its own, to ``settings.database_url`` (TOOLKIT_*)."""
        chosen = _serializer(serde, allowed_types)  # checked before a pool is made
        saver = cls(Database(settings or default_settings()), serde=chosen)
        saver._owns_database = True
        return saver

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        """Close the Database if this saver made it (the AsyncDatabase: :meth:`aclose`)."""
        if self._owns_database:
            self.database.close()

    async def aclose(self) -> None:
        """Close the databases this saver made."""
        if self._owns_async_database:
            await self.async_database.close()
        self.close()

    def __enter__(self) -> ToolkitCheckpointSaver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> ToolkitCheckpointSaver:
        return self  # the AsyncDatabase opens on the first async call

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def setup(self) -> None:
        """Check that the tables exist; they come from ``toolkit migrate``, never from here.

        LangGraph's own savers create their tables in ``setup()``, where two
        processes starting at once can race. This one only checks, and raises
        ConfigurationError when migration 0006 has not run.
        """
        run(self.database, _tables_ready())

    async def asetup(self) -> None:
        """Async :meth:`setup`."""
        await arun(self.async_database, _tables_ready())

    # -- LangGraph API: sync ---------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names (or the thread namespace's newest), or None."""
        tenant = _tenant_of(config)
        return run(self.database, self._get(tenant, config), tenant=tenant)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Checkpoints matching the filters, newest first (of the config's tenant only)."""
        tenant = _tenant_of(config)
        yield from run(
            self.database, self._list(tenant, config, filter, before, limit), tenant=tenant
        )

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store a checkpoint and the channel values of ``new_versions``; one round trip."""
        tenant = _tenant_of(config)
        op = self._put(tenant, config, checkpoint, metadata, new_versions)
        return run(self.database, op, tenant=tenant, transaction=True)

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's pending writes for the checkpoint ``config`` names."""
        call = self._writes_call(config, writes, task_id, task_path)
        if call is not None:
            op = _locked([call.params["thread_id"]], call)
            run(self.database, op, tenant=_tenant_of(config), transaction=True)

    def delete_thread(self, thread_id: str, *, tenant: UUID | str | None = None) -> None:
        """Delete every checkpoint, value and write of a thread (of ``tenant``)."""
        scoped = _scoped(tenant)
        op = self._delete_thread(scoped, thread_id)
        run(self.database, op, tenant=scoped, transaction=True)

    def delete_for_runs(self, run_ids: Sequence[str], *, tenant: UUID | str | None = None) -> None:
        """Delete the checkpoints (with their writes and unread values) of ``tenant``'s runs."""
        scoped = _scoped(tenant)
        if run_ids:
            run(self.database, self._delete_runs(scoped, run_ids), tenant=scoped, transaction=True)

    def copy_thread(
        self, source_thread_id: str, target_thread_id: str, *, tenant: UUID | str | None = None
    ) -> None:
        """Copy every checkpoint, value and write of a thread to another thread id of ``tenant``."""
        op = _locked([target_thread_id], _copy_call(source_thread_id, target_thread_id))
        run(self.database, op, tenant=_scoped(tenant), transaction=True)

    def prune(
        self,
        thread_ids: Sequence[str],
        *,
        strategy: str = "keep_latest",
        tenant: UUID | str | None = None,
    ) -> None:
        """Keep only the newest checkpoint per namespace (``keep_latest``) or ``delete`` all."""
        scoped = _scoped(tenant)
        op = self._prune(scoped, thread_ids, strategy)
        if op is not None:
            run(self.database, op, tenant=scoped, transaction=True)

    def retain(
        self,
        *,
        keep_last: int | None = None,
        idle_for: timedelta | None = None,
        thread_ids: Sequence[str] | None = None,
        tenant: UUID | str | None = None,
    ) -> RetentionReport:
        """Apply a retention policy to ``tenant``'s threads in one transaction.

        ``keep_last``: keep the newest N checkpoints of each namespace of each
        thread (of ``thread_ids``, or every thread), except threads whose
        graphs use LangGraph's DeltaChannel (reported as skipped: that
        channel is rebuilt from earlier checkpoints' writes). ``idle_for``:
        delete every thread whose newest checkpoint is older than that, of
        any thread. Values no kept checkpoint reads any more go with them.
        Without a tenant: the role's own threads (see the module docstring).
        """
        scoped = _scoped(tenant)
        op = self._retain(scoped, keep_last, idle_for, thread_ids)
        return run(self.database, op, tenant=scoped, transaction=True)

    # -- LangGraph API: async --------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """Async :meth:`get_tuple`."""
        tenant = _tenant_of(config)
        return await arun(self.async_database, self._get(tenant, config), tenant=tenant)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Async :meth:`list`."""
        tenant = _tenant_of(config)
        op = self._list(tenant, config, filter, before, limit)
        for item in await arun(self.async_database, op, tenant=tenant):
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Async :meth:`put`."""
        tenant = _tenant_of(config)
        op = self._put(tenant, config, checkpoint, metadata, new_versions)
        return await arun(self.async_database, op, tenant=tenant, transaction=True)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Async :meth:`put_writes`."""
        call = self._writes_call(config, writes, task_id, task_path)
        if call is not None:
            op = _locked([call.params["thread_id"]], call)
            await arun(self.async_database, op, tenant=_tenant_of(config), transaction=True)

    async def adelete_thread(self, thread_id: str, *, tenant: UUID | str | None = None) -> None:
        """Async :meth:`delete_thread`."""
        scoped = _scoped(tenant)
        op = self._delete_thread(scoped, thread_id)
        await arun(self.async_database, op, tenant=scoped, transaction=True)

    async def adelete_for_runs(
        self, run_ids: Sequence[str], *, tenant: UUID | str | None = None
    ) -> None:
        """Async :meth:`delete_for_runs`."""
        scoped = _scoped(tenant)
        if run_ids:
            op = self._delete_runs(scoped, run_ids)
            await arun(self.async_database, op, tenant=scoped, transaction=True)

    async def acopy_thread(
        self, source_thread_id: str, target_thread_id: str, *, tenant: UUID | str | None = None
    ) -> None:
        """Async :meth:`copy_thread`."""
        op = _locked([target_thread_id], _copy_call(source_thread_id, target_thread_id))
        await arun(self.async_database, op, tenant=_scoped(tenant), transaction=True)

    async def aprune(
        self,
        thread_ids: Sequence[str],
        *,
        strategy: str = "keep_latest",
        tenant: UUID | str | None = None,
    ) -> None:
        """Async :meth:`prune`."""
        scoped = _scoped(tenant)
        op = self._prune(scoped, thread_ids, strategy)
        if op is not None:
            await arun(self.async_database, op, tenant=scoped, transaction=True)

    async def aretain(
        self,
        *,
        keep_last: int | None = None,
        idle_for: timedelta | None = None,
        thread_ids: Sequence[str] | None = None,
        tenant: UUID | str | None = None,
    ) -> RetentionReport:
        """Async :meth:`retain`."""
        scoped = _scoped(tenant)
        op = self._retain(scoped, keep_last, idle_for, thread_ids)
        return await arun(self.async_database, op, tenant=scoped, transaction=True)

    def get_next_version(self, current: str | None, channel: None) -> str:
        """The next version of a channel: a zero-padded counter and a random fraction.

        The fraction tells apart the versions two forks of one checkpoint
        give the same channel, so that neither overwrites the other's value.
        """
        if current is None:
            number = 0
        elif isinstance(current, int):
            number = current
        else:
            number = int(str(current).split(".")[0])
        # Not security-relevant: it only separates forks.
        return f"{number + 1:032}.{random.random():016}"  # noqa: S311

    # -- operations (run sync or async) -----------------------------------------------

    def _get(self, tenant: UUID | None, config: RunnableConfig) -> Op[CheckpointTuple | None]:
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        checkpoint_ns = str(configurable.get("checkpoint_ns") or "")
        wanted = get_checkpoint_id(config)
        row: LgCheckpoint | None = yield Call(
            GET,
            {
                "thread_id": thread_id,
                "checkpoint_ns": checkpoint_ns,
                "upper": str(wanted) if wanted else _LATEST,
            },
        )
        if row is None or (wanted and row.checkpoint_id != str(wanted)):
            return None
        chains: dict[str, builtins.list[_Segment]] = {}
        if row.channels:
            for channel, depth, count, type_, data in zip(
                row.channels,
                cast(builtins.list[int], row.depths),
                cast(builtins.list[int | None], row.item_counts),
                cast(builtins.list[str], row.types),
                cast(builtins.list[bytes | None], row.blobs),
                strict=True,
            ):
                chains.setdefault(channel, []).append((depth, count, type_, data or b""))
        values = {channel: self._value(chain) for channel, chain in chains.items()}
        writes: builtins.list[_Write] = []
        if row.write_task_ids:
            writes = builtins.list(
                zip(
                    cast(builtins.list[str], row.write_task_paths),
                    row.write_task_ids,
                    cast(builtins.list[int], row.write_idxs),
                    cast(builtins.list[str], row.write_channels),
                    cast(builtins.list[str], row.write_types),
                    cast(builtins.list[bytes], row.write_blobs),
                    strict=True,
                )
            )
        return self._tuple(tenant, row, values, writes)

    def _list(
        self,
        tenant: UUID | None,
        config: RunnableConfig | None,
        filter: dict[str, Any] | None,
        before: RunnableConfig | None,
        limit: int | None,
    ) -> Op[builtins.list[CheckpointTuple]]:
        configurable = (config or {}).get("configurable") or {}
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise InvalidInput("limit must be an integer or None", field="limit", value=limit)
        thread_id = configurable.get("thread_id")
        checkpoint_ns = configurable.get("checkpoint_ns")
        checkpoint_id = configurable.get("checkpoint_id")
        before_id = get_checkpoint_id(before) if before else None
        rows: builtins.list[LgRow] = yield Call(
            LIST,
            {
                "thread_id": None if thread_id is None else str(thread_id),
                "checkpoint_ns": None if checkpoint_ns is None else str(checkpoint_ns),
                "checkpoint_id": checkpoint_id or None,
                "before": before_id or None,
                "filter": _jsonb(filter or {}, "filter"),
                "limit": None if limit is None else max(0, limit),
            },
        )
        return self._tuples(tenant, rows)

    def _put(
        self,
        tenant: UUID | None,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
        *,
        whole: bool = False,
    ) -> Op[RunnableConfig]:
        """Store a checkpoint; lists as deltas on a remembered tail they extend unless ``whole``."""
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        checkpoint_ns = str(configurable.get("checkpoint_ns") or "")
        parent_id = configurable.get("checkpoint_id")
        values = checkpoint["channel_values"]
        rows: builtins.list[_Row] = []
        for channel, raw_version in new_versions.items():
            if channel not in values:
                continue
            value = values[channel]
            version = str(raw_version)
            type_, data = self.serde.dumps_typed(value)
            segment = None
            key = _tail_key(tenant, thread_id, checkpoint_ns, channel)
            if type_ == "msgpack" and isinstance(value, list):
                segment = plan_list(data, version, None if whole else self._tails.get(key))
            else:
                self._tails.discard(key)
            rows.append(_Row(channel, version, type_, data, segment))
        stored = {name: item for name, item in checkpoint.items() if name != "channel_values"}
        params: dict[str, Any] = {
            "thread_id": thread_id,
            "checkpoint_ns": checkpoint_ns,
            "checkpoint_id": str(checkpoint["id"]),
            "parent_checkpoint_id": None if parent_id is None else str(parent_id),
            "checkpoint": _jsonb(stored, "checkpoint"),
            "metadata": _jsonb(
                dict(get_serializable_checkpoint_metadata(_without_tenant(config), metadata)),
                "metadata",
            ),
        }
        yield _lock_call([thread_id])
        try:
            inserted: builtins.list[InsertedChannel] = yield Call(
                PUT, {**params, **_blob_arrays(rows)}
            )
        except TenantMismatch:
            raise  # a row of another tenant: never retried
        except InvalidReference:
            if whole or not any(row.segment and row.segment.base_version for row in rows):
                raise
            # A delta's base was deleted meanwhile (retention): store the values whole,
            # in a new unit of work (the failed statement ended this one's transaction).
            raise Restart(
                self._put(tenant, config, checkpoint, metadata, new_versions, whole=True)
            ) from None
        written = {item.channel for item in inserted}
        for row in rows:
            if row.segment is None:
                continue
            key = _tail_key(tenant, thread_id, checkpoint_ns, row.channel)
            tail = row.segment.tail
            if row.channel in written and tail is not None:
                self._tails.put(key, tail)
            else:
                self._tails.discard(key)
        return _config(tenant, thread_id, checkpoint_ns, str(checkpoint["id"]))

    def _writes_call(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str,
    ) -> Call | None:
        if not writes:
            return None
        configurable = config["configurable"]
        idxs, channels, types, blobs = [], [], [], []
        for idx, (channel, value) in enumerate(writes):
            type_, data = self.serde.dumps_typed(value)
            idxs.append(WRITES_IDX_MAP.get(channel, idx))
            channels.append(channel)
            types.append(type_)
            blobs.append(data)
        special = all(channel in WRITES_IDX_MAP for channel, _ in writes)
        return Call(
            UPSERT_WRITES if special else PUT_WRITES,
            {
                "thread_id": str(configurable["thread_id"]),
                "checkpoint_ns": str(configurable.get("checkpoint_ns") or ""),
                "checkpoint_id": str(configurable["checkpoint_id"]),
                "task_id": str(task_id),
                "task_path": str(task_path or ""),
                "idxs": idxs,
                "channels": channels,
                "types": types,
                "blobs": blobs,
            },
        )

    def _delete_thread(self, tenant: UUID | None, thread_id: str) -> Op[None]:
        self._tails.forget_threads(_tenant_text(tenant), [str(thread_id)])
        yield from _locked([thread_id], _delete_threads_call([str(thread_id)]))

    def _delete_runs(self, tenant: UUID | None, run_ids: Sequence[str]) -> Op[None]:
        # Deletes rows of threads not known beforehand: no thread lock, so a row
        # maintain is moving meanwhile aborts the transaction; it runs again.
        return retrying(lambda: self._delete_runs_once(tenant, run_ids))

    def _delete_runs_once(self, tenant: UUID | None, run_ids: Sequence[str]) -> Op[None]:
        touched: builtins.list[ThreadCount] = yield Call(
            DELETE_RUNS, {"run_ids": [str(r) for r in run_ids]}
        )
        threads = [row.thread_id for row in touched]
        if threads:
            yield Call(COLLECT_BLOBS, {"thread_ids": threads})
            self._tails.forget_threads(_tenant_text(tenant), threads)

    def _prune(
        self, tenant: UUID | None, thread_ids: Sequence[str], strategy: str
    ) -> Op[Any] | None:
        if strategy not in PRUNE_STRATEGIES:
            raise InvalidInput(
                f"unknown prune strategy {strategy!r}; use one of {', '.join(PRUNE_STRATEGIES)}",
                field="strategy",
                value=strategy,
            )
        ids = [str(thread_id) for thread_id in thread_ids]
        if not ids:
            return None
        if strategy == "delete":
            self._tails.forget_threads(_tenant_text(tenant), ids)
            return _locked(ids, _delete_threads_call(ids))
        return self._retain(tenant, 1, None, ids, refuse_delta=True)

    def _retain(
        self,
        tenant: UUID | None,
        keep_last: int | None,
        idle_for: timedelta | None,
        thread_ids: Sequence[str] | None,
        *,
        refuse_delta: bool = False,
    ) -> Op[RetentionReport]:
        # As _delete_runs: retried when it meets a row maintain is moving.
        return retrying(
            lambda: self._retain_once(
                tenant, keep_last, idle_for, thread_ids, refuse_delta=refuse_delta
            )
        )

    def _retain_once(
        self,
        tenant: UUID | None,
        keep_last: int | None,
        idle_for: timedelta | None,
        thread_ids: Sequence[str] | None,
        *,
        refuse_delta: bool = False,
    ) -> Op[RetentionReport]:
        if keep_last is not None and (
            isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1
        ):
            raise InvalidInput(
                f"keep_last must be a positive integer, got {keep_last!r}", field="keep_last"
            )
        if idle_for is not None and (
            not isinstance(idle_for, timedelta) or idle_for <= timedelta(0)
        ):
            raise InvalidInput(
                f"idle_for must be a positive timedelta, got {idle_for!r}", field="idle_for"
            )
        ids = None if thread_ids is None else [str(thread_id) for thread_id in thread_ids]
        dropped: builtins.list[ThreadCount] = []
        trimmed: builtins.list[ThreadCount] = []
        values = 0
        if idle_for is not None:
            dropped = yield Call(DELETE_IDLE_THREADS, {"idle_for": idle_for})
        skipped: builtins.list[str] = []
        if keep_last is not None and ids != []:
            # A DeltaChannel rebuilds its value from the writes of earlier checkpoints:
            # trimming them would silently empty it, so such threads are left whole.
            delta: builtins.list[ThreadId] = yield Call(DELTA_THREADS, {"thread_ids": ids})
            skipped = sorted(row.thread_id for row in delta)
            if skipped and refuse_delta:
                raise NotImplementedError(
                    "keep_latest cannot prune threads whose graphs use a DeltaChannel: "
                    + ", ".join(skipped)
                )
            trimmed = yield Call(KEEP_LAST, {"thread_ids": ids, "keep": keep_last, "skip": skipped})
            touched = [row.thread_id for row in trimmed]
            if touched:
                values = yield Call(COLLECT_BLOBS, {"thread_ids": touched})
        forgotten = [row.thread_id for row in (*dropped, *trimmed)]
        self._tails.forget_threads(_tenant_text(tenant), forgotten)
        return RetentionReport(
            threads_dropped=tuple(sorted(row.thread_id for row in dropped)),
            checkpoints_deleted=sum(row.checkpoints for row in (*dropped, *trimmed)),
            values_deleted=values,
            threads_skipped=tuple(skipped),
        )

    # -- rows to tuples ---------------------------------------------------------

    def _tuples(
        self, tenant: UUID | None, rows: builtins.list[LgRow]
    ) -> builtins.list[CheckpointTuple]:
        """Checkpoint tuples from a list's row stream, newest first; configs name ``tenant``."""
        heads: builtins.list[LgRow] = []
        segments: dict[tuple[str, str, str, str], builtins.list[_Segment]] = {}
        writes: dict[tuple[str, str, str], builtins.list[_Write]] = {}
        for row in rows:
            if row.kind == "c":
                heads.append(row)
            elif row.kind == "b":
                key = (row.thread_id, row.checkpoint_ns, cast(str, row.channel), row.version or "")
                segments.setdefault(key, []).append(
                    (row.depth or 0, row.item_count, cast(str, row.type), row.data or b"")
                )
            else:
                owner = (row.thread_id, row.checkpoint_ns, cast(str, row.checkpoint_id))
                writes.setdefault(owner, []).append(
                    (
                        row.task_path or "",
                        cast(str, row.task_id),
                        row.idx or 0,
                        cast(str, row.channel),
                        cast(str, row.type),
                        row.data or b"",
                    )
                )
        heads.sort(key=lambda head: cast(str, head.checkpoint_id), reverse=True)
        decoded: dict[tuple[str, str, str, str], Any] = {}
        result = []
        for head in heads:
            stored = head.checkpoint or {}
            values: dict[str, Any] = {}
            for channel, version in (stored.get("channel_versions") or {}).items():
                key = (head.thread_id, head.checkpoint_ns, channel, str(version))
                if key not in segments:
                    continue
                if key not in decoded:
                    decoded[key] = self._value(segments[key])
                values[channel] = decoded[key]
            owner = (head.thread_id, head.checkpoint_ns, cast(str, head.checkpoint_id))
            result.append(self._tuple(tenant, head, values, writes.get(owner, [])))
        return result

    def _tuple(
        self,
        tenant: UUID | None,
        head: LgRow | LgCheckpoint,
        values: dict[str, Any],
        writes: builtins.list[_Write],
    ) -> CheckpointTuple:
        """``head``'s tuple: its stored JSON with ``values``, its writes decoded in order."""
        checkpoint = dict(head.checkpoint or {})
        checkpoint["channel_values"] = values
        if len(writes) > 1:
            # (task_path, task_id, idx) order, as LangGraph's own savers return them.
            writes = sorted(writes, key=lambda write: write[:3])
        loads = self.serde.loads_typed
        thread_id, checkpoint_ns = head.thread_id, head.checkpoint_ns
        parent_id = head.parent_checkpoint_id
        return CheckpointTuple(
            config=_config(tenant, thread_id, checkpoint_ns, cast(str, head.checkpoint_id)),
            checkpoint=cast(Checkpoint, checkpoint),
            metadata=cast(CheckpointMetadata, head.metadata or {}),
            parent_config=(
                _config(tenant, thread_id, checkpoint_ns, parent_id) if parent_id else None
            ),
            pending_writes=[
                (task_id, channel, loads((type_, data)))
                for _path, task_id, _idx, channel, type_, data in writes
            ],
        )

    def _value(self, chain: builtins.list[_Segment]) -> Any:
        """A channel value from its segments: (depth, item count, type, bytes), any order."""
        if len(chain) == 1:
            _depth, _count, type_, data = chain[0]
            return self.serde.loads_typed((type_, data))
        joined = join_segments([(depth, count, data) for depth, count, _type, data in chain])
        return self.serde.loads_typed(("msgpack", joined))


_Segment = tuple[int, int | None, str, bytes]
"""A segment of a channel value: its depth in the delta chain, item count, type and bytes."""
_Write = tuple[str, str, int, str, str, bytes]
"""A pending write: task path, task id, index, channel, type and bytes (sorted by the first 3)."""


def _serializer(
    serde: SerializerProtocol | None, allowed_types: Iterable[AllowedType]
) -> SerializerProtocol:
    """The application's serializer, or a strict one with its allow-list."""
    if serde is None:
        return StrictSerializer(allowed_types)
    if allowed_types:
        raise InvalidInput(
            "pass allowed_types to the serializer given as serde, not to the saver",
            field="allowed_types",
        )
    return serde


def _lock_call(thread_ids: Sequence[str]) -> Call:
    """Take the write locks of ``thread_ids`` until the transaction ends (see the query)."""
    return Call(LOCK_THREADS, {"thread_ids": [str(thread_id) for thread_id in thread_ids]})


def _locked(thread_ids: Sequence[str], call: Call) -> Op[Any]:
    """``call`` after the write locks of ``thread_ids`` (run it in one transaction).

    Without a unique index on a key (migration 0014), a statement that
    inserts a key only when no row has it is exact only if its check runs
    after every earlier writer of that thread committed: the lock is taken in
    a statement of its own, whose end gives the next one a fresh snapshot.
    """
    yield _lock_call(thread_ids)
    result = yield call
    return result


def _tables_ready() -> Op[None]:
    ready = yield Call(TABLES_READY, {})
    if not ready:
        raise ConfigurationError(
            "the LangGraph checkpoint tables are missing: run `toolkit migrate` "
            "(migration 0006.langgraph-checkpoints) on this database"
        )


def _delete_threads_call(thread_ids: list[str]) -> Call:
    return Call(DELETE_THREADS, {"thread_ids": thread_ids})


def _copy_call(source: str, target: str) -> Call:
    return Call(COPY_THREAD, {"source": str(source), "target": str(target)})


def _config(
    tenant: UUID | None, thread_id: str, checkpoint_ns: str, checkpoint_id: str
) -> RunnableConfig:
    """The config that names a checkpoint (and its tenant, when the call had one)."""
    configurable: dict[str, Any] = {
        "thread_id": thread_id,
        "checkpoint_ns": checkpoint_ns,
        "checkpoint_id": checkpoint_id,
    }
    if tenant is not None:
        configurable[TENANT_KEY] = str(tenant)
    return {"configurable": configurable}


def _scoped(tenant: UUID | str | None) -> UUID | None:
    """A ``tenant=`` argument as a tenant id (InvalidInput if it is none), or None."""
    return None if tenant is None else tenant_id(tenant)


def _tenant_of(config: RunnableConfig | None) -> UUID | None:
    """The tenant a run's config names under :data:`TENANT_KEY`, or None."""
    return _scoped(((config or {}).get("configurable") or {}).get(TENANT_KEY))


def _tenant_text(tenant: UUID | None) -> str:
    return "" if tenant is None else str(tenant)


def _tail_key(tenant: UUID | None, thread_id: str, checkpoint_ns: str, channel: str) -> TailKey:
    return (_tenant_text(tenant), thread_id, checkpoint_ns, channel)


def _without_tenant(config: RunnableConfig) -> RunnableConfig:
    """``config`` without the tenant, whose key LangGraph would copy into the metadata."""
    configurable = config.get("configurable") or {}
    if TENANT_KEY not in configurable:
        return config
    kept = {key: value for key, value in configurable.items() if key != TENANT_KEY}
    return cast(RunnableConfig, {**config, "configurable": kept})


def _blob_arrays(rows: list[_Row]) -> dict[str, list[Any]]:
    arrays: dict[str, list[Any]] = {
        "channels": [],
        "versions": [],
        "types": [],
        "base_versions": [],
        "item_counts": [],
        "blobs": [],
    }
    for row in rows:
        segment = row.segment
        arrays["channels"].append(row.channel)
        arrays["versions"].append(row.version)
        arrays["types"].append(row.type)
        arrays["base_versions"].append(segment.base_version if segment else None)
        arrays["item_counts"].append(segment.item_count if segment else None)
        arrays["blobs"].append(segment.data if segment else row.data)
    return arrays


_NUL_ESCAPE: Final = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _jsonb(value: dict[str, Any], field: str) -> Jsonb:
    """``value`` as jsonb (serialized once); InvalidInput naming ``field`` if it cannot be."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{field} is not JSON: {exc}", field=field) from None
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        raise InvalidInput(f"{field} holds a NUL character, which jsonb cannot store", field=field)
    return Jsonb(value, dumps=lambda _: text)
