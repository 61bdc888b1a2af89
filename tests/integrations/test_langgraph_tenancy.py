"""The LangGraph saver runs each call as the tenant its run config names.

Every test connects as a fresh LOGIN role in toolkit_app (no BYPASSRLS,
owns nothing), so row-level security binds it; the tenants' rows are
written as the superuser. The saver tests run twice: through the async
methods and through the sync ones (in worker threads, ``SyncDriven``);
the graph tests run a real compiled ``StateGraph`` with ``invoke`` and with
``ainvoke``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any, TypedDict

import psycopg
import pytest
import pytest_asyncio
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import CheckpointTuple, empty_checkpoint
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.graph.state import CompiledStateGraph

from toolkit.config import Settings
from toolkit.errors import InvalidInput, TenancyUnavailable, TenantMismatch, TenantRequired
from toolkit.integrations.langgraph import TENANT_KEY, ToolkitCheckpointSaver

from .conftest import TENANT_A, TENANT_B, app_login
from .test_langgraph_conformance import SyncDriven

DRIVERS = {"async": ToolkitCheckpointSaver, "sync": SyncDriven}
BIG = 300
"""Characters per list item: a few items pass the size from which lists are stored as deltas."""


@pytest.fixture
def app_settings(database_url: str) -> Iterator[Settings]:
    """This test's database as the application role; TENANT_A and TENANT_B exist."""
    with app_login(database_url, [TENANT_A, TENANT_B]) as settings:
        yield settings


@pytest_asyncio.fixture(params=sorted(DRIVERS))
async def app_saver(
    request: pytest.FixtureRequest, app_settings: Settings
) -> AsyncIterator[ToolkitCheckpointSaver]:
    """A saver as the application role, driven through its async or its sync methods."""
    async with DRIVERS[request.param].from_settings(app_settings) as saver:
        yield saver


def run_config(tenant: uuid.UUID | str | None, thread_id: str = "t1", **more: Any) -> Any:
    """A run config for ``thread_id``, naming ``tenant`` (none when None)."""
    configurable = {"thread_id": thread_id, "checkpoint_ns": "", **more}
    if tenant is not None:
        configurable[TENANT_KEY] = tenant
    return {"configurable": configurable}


async def put(
    saver: ToolkitCheckpointSaver,
    config: Any,
    values: dict[str, Any],
    *,
    versions: dict[str, str] | None = None,
    metadata: dict[str, Any] | None = None,
) -> RunnableConfig:
    """Put a checkpoint holding ``values``, each channel at a new version (or at ``versions``)."""
    new = versions or {name: saver.get_next_version(None, None) for name in values}
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = dict(values)
    checkpoint["channel_versions"] = dict(new)
    return await saver.aput(
        config, checkpoint, {"source": "loop", "step": 0, **(metadata or {})}, new
    )


async def listed(saver: ToolkitCheckpointSaver, config: Any) -> list[CheckpointTuple]:
    return [item async for item in saver.alist(config)]


def checkpoint_id(config: RunnableConfig) -> str:
    return str(config["configurable"]["checkpoint_id"])


def items(prefix: str, count: int) -> list[str]:
    """A list of ``count`` items big enough (with more than 3 items) to be stored as deltas."""
    return [f"{prefix}{i} " + prefix * BIG for i in range(count)]


# -- one thread id, two tenants -------------------------------------------------------


@pytest.mark.asyncio
async def test_two_tenants_keep_their_own_checkpoints_on_one_thread_id(
    app_saver: ToolkitCheckpointSaver,
) -> None:
    a1 = await put(app_saver, run_config(TENANT_A), {"owner": "a", "step": 1})
    a2 = await put(app_saver, a1, {"owner": "a", "step": 2})  # a returned config: A's again
    b1 = await put(app_saver, run_config(str(TENANT_B)), {"owner": "b", "step": 1})
    await app_saver.aput_writes(a2, [("owner", "a-pending")], "task-a")
    assert a2["configurable"][TENANT_KEY] == str(TENANT_A)
    assert b1["configurable"][TENANT_KEY] == str(TENANT_B)

    mine = await app_saver.aget_tuple(run_config(TENANT_A))
    theirs = await app_saver.aget_tuple(run_config(TENANT_B))
    assert mine is not None and theirs is not None
    assert mine.checkpoint["channel_values"] == {"owner": "a", "step": 2}
    assert mine.config == a2
    assert mine.parent_config == a1
    assert mine.pending_writes == [("task-a", "owner", "a-pending")]
    assert TENANT_KEY not in mine.metadata  # the row's tenant_id holds it
    assert theirs.checkpoint["channel_values"] == {"owner": "b", "step": 1}
    assert theirs.config == b1
    assert theirs.parent_config is None
    assert theirs.pending_writes == []

    # A's checkpoint id asked for as B: B has no such checkpoint.
    assert await app_saver.aget_tuple(run_config(TENANT_B, checkpoint_id=checkpoint_id(a2))) is None
    assert [t.config for t in await listed(app_saver, run_config(TENANT_A))] == [a2, a1]
    assert [t.config for t in await listed(app_saver, run_config(TENANT_B))] == [b1]
    # Across threads (no thread id): still the tenant's own only.
    assert [
        t.config for t in await listed(app_saver, {"configurable": {TENANT_KEY: TENANT_A}})
    ] == [
        a2,
        a1,
    ]
    assert [
        t.config for t in await listed(app_saver, {"configurable": {TENANT_KEY: TENANT_B}})
    ] == [b1]


@pytest.mark.asyncio
async def test_a_call_without_a_tenant_is_refused_on_the_application_role(
    app_saver: ToolkitCheckpointSaver,
) -> None:
    """TenantRequired, never an empty answer, whether the thread has checkpoints or not."""
    stored = await put(app_saver, run_config(TENANT_A), {"owner": "a"})
    bare = run_config(None, checkpoint_id=checkpoint_id(stored))
    refused = [
        app_saver.aget_tuple(run_config(None)),
        app_saver.aget_tuple(run_config(None, thread_id="never-used")),
        listed(app_saver, None),
        listed(app_saver, run_config(None)),
        put(app_saver, run_config(None), {"owner": "nobody"}),
        app_saver.aput_writes(bare, [("owner", "nobody")], "task"),
        app_saver.adelete_thread("t1"),
        app_saver.acopy_thread("t1", "t2"),
        app_saver.aprune(["t1"]),
        app_saver.adelete_for_runs(["run-1"]),
        app_saver.aretain(keep_last=1),
    ]
    for call in refused:
        with pytest.raises(TenantRequired, match=rf"configurable\['{TENANT_KEY}'\]"):
            await call
    found = await app_saver.aget_tuple(run_config(TENANT_A))
    assert found is not None and found.config == stored


@pytest.mark.asyncio
async def test_the_thread_and_run_id_methods_act_on_the_given_tenant_only(
    app_saver: ToolkitCheckpointSaver,
) -> None:
    for tenant in (TENANT_A, TENANT_B):  # the same thread and run ids in both tenants
        first = await put(app_saver, run_config(tenant), {"n": 1}, metadata={"run_id": "run-1"})
        await put(app_saver, first, {"n": 2}, metadata={"run_id": "run-1"})

    async def count(tenant: uuid.UUID, thread_id: str) -> int:
        return len(await listed(app_saver, run_config(tenant, thread_id)))

    await app_saver.acopy_thread("t1", "t2", tenant=TENANT_B)
    assert (await count(TENANT_B, "t2"), await count(TENANT_A, "t2")) == (2, 0)
    await app_saver.aprune(["t1"], strategy="keep_latest", tenant=TENANT_B)
    assert (await count(TENANT_B, "t1"), await count(TENANT_A, "t1")) == (1, 2)
    await app_saver.adelete_for_runs(["run-1"], tenant=TENANT_A)
    assert (await count(TENANT_A, "t1"), await count(TENANT_B, "t1")) == (0, 1)
    assert await count(TENANT_B, "t2") == 2
    report = await app_saver.aretain(keep_last=1, tenant=TENANT_B)
    assert (report.checkpoints_deleted, await count(TENANT_B, "t2")) == (1, 1)
    await put(app_saver, run_config(TENANT_A, "t2"), {"n": 3})
    await app_saver.adelete_thread("t2", tenant=TENANT_B)
    assert (await count(TENANT_B, "t2"), await count(TENANT_A, "t2")) == (0, 1)


@pytest.mark.asyncio
async def test_remembered_list_tails_are_per_tenant(app_saver: ToolkitCheckpointSaver) -> None:
    """B's list is never stored as a delta on A's list of the same thread, channel and version.

    Versions are chosen here (LangGraph's carry a random fraction), so both
    tenants have a version ``v1`` of ``t1``'s ``items``, holding different lists.
    """
    v1, v2 = f"{1:032}.1", f"{2:032}.1"
    theirs, mine = items("b", 6), items("a", 6)
    b1 = await put(app_saver, run_config(TENANT_B), {"items": theirs}, versions={"items": v1})
    await put(app_saver, run_config(TENANT_A), {"items": mine}, versions={"items": v1})
    # B's list now starts with A's v1, byte for byte: a delta on A's tail would read B's v1.
    b2 = await put(app_saver, b1, {"items": [*mine, "more"]}, versions={"items": v2})
    found = await app_saver.aget_tuple(b2)
    assert found is not None
    assert found.checkpoint["channel_values"]["items"] == [*mine, "more"]


@pytest.mark.asyncio
async def test_a_vanished_delta_base_is_stored_whole_as_the_tenant(
    app_saver: ToolkitCheckpointSaver, superuser: psycopg.Connection[Any]
) -> None:
    """The retry runs in a new transaction: the failed insert ended the tenant's one."""
    start = items("a", 6)
    first = await put(app_saver, run_config(TENANT_A), {"items": start})
    second = await put(app_saver, first, {"items": [*start, "one"]})
    for table in ("lg_writes", "lg_checkpoints", "lg_blobs"):  # another process deleted it
        superuser.execute(f"DELETE FROM {table} WHERE tenant_id = %s", [TENANT_A])
    third = await put(app_saver, second, {"items": [*start, "one", "two"]})
    found = await app_saver.aget_tuple(third)
    assert found is not None
    assert found.checkpoint["channel_values"]["items"] == [*start, "one", "two"]
    rows = superuser.execute(
        "SELECT base_version FROM lg_blobs WHERE tenant_id = %s AND channel = 'items'", [TENANT_A]
    ).fetchall()
    assert rows == [(None,)]


@pytest.mark.asyncio
async def test_a_tenant_mismatch_in_a_put_surfaces_without_a_retry(
    app_saver: ToolkitCheckpointSaver, superuser: psycopg.Connection[Any]
) -> None:
    """A row of another tenant is refused at once, not retried as if a delta's base had vanished.

    A trigger (the superuser's) moves each new value row to TENANT_B and
    counts its calls in a sequence, which a rollback does not undo.
    """
    start = items("a", 6)
    first = await put(app_saver, run_config(TENANT_A), {"items": start})
    superuser.execute(
        f"""
        CREATE SEQUENCE public.put_attempts;
        GRANT USAGE ON SEQUENCE public.put_attempts TO PUBLIC;
        CREATE FUNCTION public.move_to_tenant_b() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM nextval('public.put_attempts');
            NEW.tenant_id := '{TENANT_B}';
            RETURN NEW;
        END $$;
        CREATE TRIGGER move_to_tenant_b BEFORE INSERT ON lg_blobs
            FOR EACH ROW EXECUTE FUNCTION public.move_to_tenant_b();
        """
    )
    with pytest.raises(TenantMismatch) as refused:
        await put(app_saver, first, {"items": [*start, "one"]})  # a delta on the first list
    assert refused.value.table == "lg_blobs"
    attempts = superuser.execute("SELECT last_value FROM public.put_attempts").fetchone()
    assert attempts == (1,)


@pytest.mark.asyncio
async def test_a_tenant_that_is_no_uuid_is_refused_before_any_io(
    app_saver: ToolkitCheckpointSaver,
) -> None:
    for call in [
        app_saver.aget_tuple(run_config("workspace-1")),
        listed(app_saver, {"configurable": {TENANT_KEY: 42}}),
        put(app_saver, run_config(""), {"n": 1}),
        app_saver.adelete_thread("t1", tenant="not-a-uuid"),
    ]:
        with pytest.raises(InvalidInput):
            await call


def test_a_tenant_on_a_superuser_is_refused(settings: Settings) -> None:
    """Row-level security would not bind a superuser: tenant-scoped work does not start."""
    with ToolkitCheckpointSaver.from_settings(settings) as saver, pytest.raises(TenancyUnavailable):
        saver.get_tuple(run_config(TENANT_A))


# -- a real graph ----------------------------------------------------------------------


class ChatState(TypedDict, total=False):
    messages: Annotated[list[Any], add_messages]
    turns: int


def chat_graph(saver: ToolkitCheckpointSaver) -> CompiledStateGraph[Any]:
    def reply(state: ChatState) -> dict[str, Any]:
        last = state["messages"][-1].content
        return {"messages": [AIMessage(f"echo: {last}")], "turns": state.get("turns", 0) + 1}

    builder = StateGraph(ChatState)
    builder.add_node("reply", reply)
    builder.add_edge(START, "reply")
    return builder.compile(checkpointer=saver)


def said(state: Any) -> list[str]:
    return [message.content for message in state.values["messages"]]


TURNS = {TENANT_A: ["a one", "a two"], TENANT_B: ["b one"]}


def expected(tenant: uuid.UUID) -> list[str]:
    return [text for turn in TURNS[tenant] for text in (turn, f"echo: {turn}")]


def test_a_graph_keeps_each_tenants_state_on_one_thread_id(app_settings: Settings) -> None:
    with ToolkitCheckpointSaver.from_settings(app_settings) as saver:
        graph = chat_graph(saver)
        configs = {tenant: run_config(str(tenant)) for tenant in TURNS}
        for turn in range(2):
            for tenant, turns in TURNS.items():
                if turn < len(turns):
                    graph.invoke({"messages": [HumanMessage(turns[turn])]}, configs[tenant])
        for tenant, config in configs.items():
            state = graph.get_state(config)
            assert said(state) == expected(tenant)
            assert state.values["turns"] == len(TURNS[tenant])
            history = list(graph.get_state_history(config))
            assert {s.config["configurable"][TENANT_KEY] for s in history} == {str(tenant)}
            # A snapshot's own config reads it again: the tenant travels with it.
            oldest = graph.get_state(history[-1].config)
            assert oldest.values == history[-1].values
        with pytest.raises(TenantRequired):
            graph.invoke(
                {"messages": [HumanMessage("nobody")]}, {"configurable": {"thread_id": "t1"}}
            )


@pytest.mark.asyncio
async def test_an_async_graph_keeps_each_tenants_state_on_one_thread_id(
    app_settings: Settings,
) -> None:
    async with ToolkitCheckpointSaver.from_settings(app_settings) as saver:
        graph = chat_graph(saver)
        configs = {tenant: run_config(tenant) for tenant in TURNS}
        for turn in range(2):
            for tenant, turns in TURNS.items():
                if turn < len(turns):
                    await graph.ainvoke({"messages": [HumanMessage(turns[turn])]}, configs[tenant])
        for tenant, config in configs.items():
            state = await graph.aget_state(config)
            assert said(state) == expected(tenant)
            assert state.values["turns"] == len(TURNS[tenant])
            history = [s async for s in graph.aget_state_history(config)]
            assert {s.config["configurable"][TENANT_KEY] for s in history} == {str(tenant)}
            oldest = await graph.aget_state(history[-1].config)
            assert oldest.values == history[-1].values
        with pytest.raises(TenantRequired):
            await graph.ainvoke(
                {"messages": [HumanMessage("nobody")]}, {"configurable": {"thread_id": "t1"}}
            )
