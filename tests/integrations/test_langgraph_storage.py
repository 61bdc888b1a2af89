"""What our checkpointer adds to the conformance suite: storage that does not explode.

* a channel value that does not change is stored once;
* a list that grows by appending costs storage within log2(turns) of its
  items, not turns/2 times, and every version reads back exactly;
* forks, restarts and a base deleted under a running thread fall back to
  storing the whole value, never to a wrong one;
* retention (keep the newest N, drop idle threads) is one call and keeps
  every kept checkpoint readable.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Annotated, Any, TypedDict

import psycopg
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Command, interrupt
from psycopg.conninfo import make_conninfo

from toolkit.aio.db.database import AsyncDatabase
from toolkit.config import Settings, load_settings
from toolkit.db.database import Database
from toolkit.errors import ConfigurationError, InvalidInput
from toolkit.integrations.langgraph import ToolkitCheckpointSaver

Config = dict[str, Any]


class ChatState(TypedDict, total=False):
    messages: Annotated[list[Any], add_messages]
    turns: int


class Thread:
    """Drives a thread the way LangGraph's loop does: new versions for changed channels."""

    def __init__(self, saver: ToolkitCheckpointSaver, thread_id: str | None = None) -> None:
        self.saver = saver
        self.thread_id = thread_id or f"t-{uuid.uuid4().hex}"
        self.config: Config = {"configurable": {"thread_id": self.thread_id, "checkpoint_ns": ""}}
        self.values: dict[str, Any] = {}
        self.versions: dict[str, Any] = {}

    @property
    def all(self) -> Config:
        """The config that lists every checkpoint of the thread's root namespace."""
        return {"configurable": {"thread_id": self.thread_id, "checkpoint_ns": ""}}

    def put(self, step: int, **changes: Any) -> Config:
        new = {}
        for channel, value in changes.items():
            self.values[channel] = value
            new[channel] = self.saver.get_next_version(self.versions.get(channel), None)
        self.versions.update(new)
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = dict(self.values)
        checkpoint["channel_versions"] = dict(self.versions)
        self.config = self.saver.put(self.config, checkpoint, {"source": "loop", "step": step}, new)
        return self.config


def text(turn: int, size: int) -> str:
    words = ("plan", "tool", "call", "result", "agent", "cache", "store", "answer")
    out = " ".join(words[(turn * 7 + i) % len(words)] + str(i % 13) for i in range(size // 6))
    return out[:size]


def value_rows(url: str, thread_id: str, channel: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT version, base_version, item_count, octet_length(blob) FROM lg_blobs"
            " WHERE thread_id = %s AND channel = %s",
            [thread_id, channel],
        ).fetchall()


def test_unchanged_channels_are_stored_once(shared_settings: Settings) -> None:
    with ToolkitCheckpointSaver.from_settings(shared_settings) as saver:
        thread = Thread(saver)
        thread.put(0, counter=0, profile={"name": "Ada", "bio": "x" * 500})
        for step in range(1, 6):
            thread.put(step, counter=step)
        latest = saver.get_tuple(thread.config)
    assert latest is not None
    assert latest.checkpoint["channel_values"] == {
        "counter": 5,
        "profile": {"name": "Ada", "bio": "x" * 500},
    }
    url = shared_settings.database_url
    assert len(value_rows(url, thread.thread_id, "profile")) == 1
    assert len(value_rows(url, thread.thread_id, "counter")) == 6


def test_appended_messages_grow_storage_near_linearly(shared_settings: Settings) -> None:
    """120 turns of ~2 KB: every version reads back; storage stays within log2 of the items."""
    turns = 120
    with ToolkitCheckpointSaver.from_settings(shared_settings) as saver:
        thread = Thread(saver)
        messages: list[Any] = []
        configs = []
        for turn in range(turns):
            messages = [
                *messages,
                HumanMessage(text(turn, 600), id=f"h{turn}"),
                AIMessage(text(turn + 1, 1400), id=f"a{turn}"),
            ]
            configs.append((thread.put(turn, messages=messages, counter=turn), list(messages)))
        for config, expected in configs[::7] + configs[-3:]:
            found = saver.get_tuple(config)
            assert found is not None
            assert found.checkpoint["channel_values"]["messages"] == expected
        listed = list(saver.list(thread.all, limit=5))
        assert [len(t.checkpoint["channel_values"]["messages"]) for t in listed] == [
            2 * (turns - i) for i in range(5)
        ]
    rows = value_rows(shared_settings.database_url, thread.thread_id, "messages")
    stored = sum(row[3] for row in rows)
    final = len(saver.serde.dumps_typed(messages)[1])
    whole_every_turn = sum(
        len(saver.serde.dumps_typed(expected)[1]) for _, expected in configs
    )  # what storing each version whole would take
    assert len(rows) == turns
    assert sum(1 for row in rows if row[1] is not None) >= turns - 2
    assert stored <= (math.log2(turns) + 1) * final
    assert stored * 10 < whole_every_turn


def test_chains_stay_short(shared_settings: Settings) -> None:
    """Reading version n touches popcount(n) + 1 rows (skip deltas), never n."""
    with ToolkitCheckpointSaver.from_settings(shared_settings) as saver:
        thread = Thread(saver)
        items: list[str] = []
        for turn in range(70):
            items = [*items, text(turn, 400)]
            thread.put(turn, items=items)
    rows = {
        row[0]: row[1]
        for row in value_rows(shared_settings.database_url, thread.thread_id, "items")
    }
    depths = []
    for version in rows:
        depth, current = 0, version
        while rows[current] is not None:
            current, depth = rows[current], depth + 1
        depths.append(depth)
    assert max(depths) <= 7  # log2(64) + 1


def test_a_fork_that_rewrites_the_list_is_stored_whole(shared_settings: Settings) -> None:
    with ToolkitCheckpointSaver.from_settings(shared_settings) as saver:
        thread = Thread(saver)
        base = [text(i, 500) for i in range(6)]
        first = thread.put(0, items=base)
        grown = thread.put(1, items=[*base, "appended"])
        # A fork from the first checkpoint whose list drops an item: not an extension.
        thread.config = first
        forked_items = [*base[:-1], "rewritten", "and more"]
        forked = thread.put(2, items=forked_items)
        assert saver.get_tuple(grown).checkpoint["channel_values"]["items"] == [*base, "appended"]
        assert saver.get_tuple(forked).checkpoint["channel_values"]["items"] == forked_items
    rows = value_rows(shared_settings.database_url, thread.thread_id, "items")
    assert sorted(row[1] is None for row in rows) == [False, True, True]


def test_a_new_process_starts_a_new_chain(shared_settings: Settings) -> None:
    items = [text(i, 500) for i in range(4)]
    with ToolkitCheckpointSaver.from_settings(shared_settings) as first:
        thread = Thread(first)
        thread.put(0, items=items)
        thread.put(1, items=[*items, "one"])
    with ToolkitCheckpointSaver.from_settings(shared_settings) as second:
        thread.saver = second
        config = thread.put(2, items=[*items, "one", "two"])
        assert second.get_tuple(config).checkpoint["channel_values"]["items"] == [
            *items,
            "one",
            "two",
        ]
    rows = value_rows(shared_settings.database_url, thread.thread_id, "items")
    assert sum(1 for row in rows if row[1] is None) == 2


def test_a_deleted_base_makes_the_put_store_the_whole_value(shared_settings: Settings) -> None:
    """Another process deleted the thread: our delta's base is gone, the put still lands."""
    items = [text(i, 500) for i in range(4)]
    with (
        ToolkitCheckpointSaver.from_settings(shared_settings) as saver,
        ToolkitCheckpointSaver.from_settings(shared_settings) as other,
    ):
        thread = Thread(saver)
        thread.put(0, items=items)
        thread.put(1, items=[*items, "one"])
        other.delete_thread(thread.thread_id)
        config = thread.put(2, items=[*items, "one", "two"])
        assert saver.get_tuple(config).checkpoint["channel_values"]["items"] == [
            *items,
            "one",
            "two",
        ]
    rows = value_rows(shared_settings.database_url, thread.thread_id, "items")
    assert [row[1] for row in rows] == [None]


def test_keep_last_keeps_every_kept_checkpoint_readable(shared_settings: Settings) -> None:
    with ToolkitCheckpointSaver.from_settings(shared_settings) as saver:
        thread = Thread(saver)
        items: list[str] = []
        configs = []
        for turn in range(40):
            items = [*items, text(turn, 300)]
            configs.append((thread.put(turn, items=items, turn=turn), list(items)))
        saver.put_writes(configs[3][0], [("items", "pending")], "task-1")
        report = saver.retain(keep_last=5, thread_ids=[thread.thread_id])
        assert report.checkpoints_deleted == 35
        assert report.values_deleted > 0
        kept = list(saver.list(thread.all))
        assert len(kept) == 5
        for config, expected in configs[-5:]:
            found = saver.get_tuple(config)
            assert found is not None
            assert found.checkpoint["channel_values"]["items"] == expected
        assert saver.get_tuple(configs[3][0]) is None
    with psycopg.connect(shared_settings.database_url) as conn:
        writes = conn.execute(
            "SELECT count(*) FROM lg_writes WHERE thread_id = %s", [thread.thread_id]
        ).fetchone()
        values = conn.execute(
            "SELECT count(*) FROM lg_blobs WHERE thread_id = %s AND channel = 'turn'",
            [thread.thread_id],
        ).fetchone()
    assert writes == (0,)
    assert values == (5,)


def test_retain_drops_idle_threads_in_one_call(settings: Settings, superuser: Any) -> None:
    with ToolkitCheckpointSaver.from_settings(settings) as saver:
        idle, busy = Thread(saver), Thread(saver)
        for step in range(3):
            idle.put(step, items=[text(step, 100)])
            busy.put(step, items=[text(step, 100)])
        superuser.execute(
            "UPDATE lg_checkpoints SET created_at = now() - interval '40 days'"
            " WHERE thread_id = %s",
            [idle.thread_id],
        )
        report = saver.retain(keep_last=2, idle_for=timedelta(days=30))
        assert report.threads_dropped == (idle.thread_id,)
        assert report.checkpoints_deleted == 3 + 1
        assert saver.get_tuple(idle.all) is None
        assert len(list(saver.list(busy.all))) == 2
    rows = superuser.execute(
        "SELECT count(*) FROM lg_blobs WHERE thread_id = %s", [idle.thread_id]
    ).fetchone()
    assert rows == (0,)


@pytest.mark.asyncio
async def test_async_retain_and_graph_state(settings: Settings) -> None:
    """The async side end to end: a real LangGraph graph, then retention."""

    def reply(state: ChatState) -> dict[str, Any]:
        last = state["messages"][-1].content
        return {"messages": [AIMessage(f"echo: {last}")], "turns": state.get("turns", 0) + 1}

    builder = StateGraph(ChatState)
    builder.add_node("reply", reply)
    builder.add_edge(START, "reply")
    async with ToolkitCheckpointSaver.from_settings(settings) as saver:
        graph = builder.compile(checkpointer=saver)
        config: Any = {"configurable": {"thread_id": "graph-async"}}
        for turn in range(12):
            await graph.ainvoke({"messages": [HumanMessage(f"turn {turn} " + "x" * 300)]}, config)
        state = await graph.aget_state(config)
        assert state.values["turns"] == 12
        assert len(state.values["messages"]) == 24
        history = [s async for s in graph.aget_state_history(config)]
        assert len(history) >= 24
        report = await saver.aretain(keep_last=3)
        assert report.checkpoints_deleted == len(history) - 3
        state = await graph.aget_state(config)
        assert len(state.values["messages"]) == 24
        await graph.ainvoke({"messages": [HumanMessage("after retention")]}, config)
        state = await graph.aget_state(config)
        assert len(state.values["messages"]) == 26


def test_sync_graph_with_interrupt_and_resume(saver: ToolkitCheckpointSaver) -> None:
    """A real graph on the sync side: an interrupt's pending writes survive a resume."""

    def ask(state: ChatState) -> dict[str, Any]:
        answer = interrupt("approve?")
        return {"messages": [AIMessage(f"approved: {answer}")]}

    builder = StateGraph(ChatState)
    builder.add_node("ask", ask)
    builder.add_edge(START, "ask")
    graph = builder.compile(checkpointer=saver)
    config: Any = {"configurable": {"thread_id": "graph-sync"}}
    graph.invoke({"messages": [HumanMessage("deploy")]}, config)
    assert graph.get_state(config).next == ("ask",)
    graph.invoke(Command(resume="yes"), config)
    messages = graph.get_state(config).values["messages"]
    assert [m.content for m in messages] == ["deploy", "approved: yes"]


def test_bad_arguments_raise_invalid_input(saver: ToolkitCheckpointSaver) -> None:
    with pytest.raises(InvalidInput):
        saver.prune(["t"], strategy="keep_some")
    with pytest.raises(InvalidInput):
        saver.retain(keep_last=0)
    with pytest.raises(InvalidInput):
        saver.retain(idle_for=timedelta(0))
    thread = Thread(saver)
    checkpoint = empty_checkpoint()
    with pytest.raises(InvalidInput):
        saver.put(thread.config, checkpoint, {"source": "loop", "step": 0, "x": object()}, {})
    with pytest.raises(InvalidInput):
        list(saver.list(None, limit="3"))  # type: ignore[arg-type]


def test_delta_channel_threads_are_never_trimmed(shared_settings: Settings) -> None:
    """LangGraph's DeltaChannel rebuilds its value from earlier writes: keep them all."""
    with ToolkitCheckpointSaver.from_settings(shared_settings) as saver:
        delta, plain = Thread(saver), Thread(saver)
        for step in range(3):
            delta.put(step, items=[str(step)])
            plain.put(step, items=[str(step)])
        checkpoint = empty_checkpoint()
        metadata: Any = {
            "source": "loop",
            "step": 3,
            "counters_since_delta_snapshot": {"x": [1, 1]},
        }
        saver.put(delta.config, checkpoint, metadata, {})
        ids = [delta.thread_id, plain.thread_id]
        with pytest.raises(NotImplementedError, match=delta.thread_id):
            saver.prune(ids, strategy="keep_latest")
        assert len(list(saver.list(plain.all))) == 3  # the refusal changed nothing
        report = saver.retain(keep_last=1, thread_ids=ids)
        assert report.threads_skipped == (delta.thread_id,)
        assert len(list(saver.list(delta.all))) == 4
        assert len(list(saver.list(plain.all))) == 1


@pytest.fixture
def unmigrated_settings(shared_settings: Settings) -> Iterator[Settings]:
    """Settings for an empty database on the same server: migration 0006 never ran."""
    name = f"lg_unmigrated_{uuid.uuid4().hex[:8]}"
    server = make_conninfo(shared_settings.database_url, dbname="postgres")
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield load_settings(database_url=make_conninfo(server, dbname=name), pool_min_size=0)
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_setup_only_checks_the_migration(
    shared_settings: Settings, unmigrated_settings: Settings
) -> None:
    """setup() never creates tables: on a database without migration 0006 it says so."""
    with ToolkitCheckpointSaver.from_settings(shared_settings) as saver:
        saver.setup()
    with (
        ToolkitCheckpointSaver.from_settings(unmigrated_settings) as saver,
        pytest.raises(ConfigurationError, match="toolkit migrate"),
    ):
        saver.setup()
    assert _tables(unmigrated_settings) == []  # and it created nothing


@pytest.mark.asyncio
async def test_asetup_only_checks_the_migration(
    shared_settings: Settings, unmigrated_settings: Settings
) -> None:
    async with ToolkitCheckpointSaver.from_settings(shared_settings) as saver:
        await saver.asetup()
        assert await saver.aget_tuple(Thread(saver).config) is None  # the tables answer
    async with ToolkitCheckpointSaver.from_settings(unmigrated_settings) as saver:
        with pytest.raises(ConfigurationError, match="toolkit migrate"):
            await saver.asetup()
    assert _tables(unmigrated_settings) == []


def _tables(settings: Settings) -> list[str]:
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        ).fetchall()
    return [row[0] for row in rows]


@pytest.mark.asyncio
async def test_the_saver_runs_on_the_applications_own_databases(shared_settings: Settings) -> None:
    database = Database(shared_settings, warn_if_privileged=False)
    async_database = AsyncDatabase(shared_settings, warn_if_privileged=False)
    saver = ToolkitCheckpointSaver(database, async_database=async_database)
    try:
        await saver.asetup()
        saver.setup()
        # Every async call took its connection from the application's AsyncDatabase.
        assert async_database.stats().get("requests_num", 0) >= 1
        assert database.stats().get("requests_num", 0) >= 1
        await saver.aclose()
        # The saver closes only what it made: the application's databases stay open.
        async_database.stats()
        database.stats()
    finally:
        await async_database.close()
        database.close()
    with pytest.raises(ConfigurationError, match="async_database=AsyncDatabase"):
        ToolkitCheckpointSaver(database, async_pool=object())


def test_get_tuple_returns_pending_writes_in_task_path_task_id_idx_order(
    saver: ToolkitCheckpointSaver,
) -> None:
    config: Any = {"configurable": {"thread_id": "writes-order", "checkpoint_ns": ""}}
    stored = saver.put(config, empty_checkpoint(), {"source": "loop", "step": 0}, {})
    # Written out of order: task b before task a, a later path before an earlier one.
    saver.put_writes(stored, [("x", 1), ("y", 2)], task_id="task-b", task_path="2")
    saver.put_writes(stored, [("z", 3)], task_id="task-a", task_path="2")
    saver.put_writes(stored, [("w", 4), ("v", 5)], task_id="task-c", task_path="1")
    found = saver.get_tuple(stored)
    assert found is not None
    assert found.pending_writes == [
        ("task-c", "w", 4),
        ("task-c", "v", 5),
        ("task-a", "z", 3),
        ("task-b", "x", 1),
        ("task-b", "y", 2),
    ]
    listed = next(iter(saver.list(stored)))
    assert listed.pending_writes == found.pending_writes
