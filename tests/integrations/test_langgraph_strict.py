"""Stored checkpoints never run code: the saver reads with an allow-list and refuses the rest.

Each forged value is first shown to run its payload under LangGraph's
permissive serializer (so the forgery is a real exploit, not a dud), then
written into ``lg_blobs`` / ``lg_writes`` with raw SQL; loading the thread
through the saver must raise DeserializationRefused and run nothing.
"""

from __future__ import annotations

import operator
import pickle
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypedDict

import ormsgpack
import psycopg
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Send

from toolkit.config import Settings
from toolkit.errors import DeserializationRefused, IntegrityError, InvalidInput
from toolkit.integrations.langgraph import ToolkitCheckpointSaver
from toolkit.integrations.langgraph_serde import StrictSerializer

EXT_CONSTRUCTOR_SINGLE_ARG = 0  # LangGraph's msgpack extension: module.name(arg)
EXT_PYDANTIC_V2 = 5  # LangGraph's msgpack extension: a pydantic v2 model's class and fields

CALLS: list[Any] = []
"""What :func:`plant_flag` was called with: non-empty means stored data ran code."""


def plant_flag(argument: Any) -> str:
    """The harmless sentinel a forged value names."""
    CALLS.append(argument)
    return "planted"


@pytest.fixture(autouse=True)
def _no_calls_yet() -> None:
    CALLS.clear()


def forged_call(module: str, name: str, argument: Any) -> bytes:
    """msgpack bytes that make LangGraph's default serializer call ``module.name(argument)``."""
    return ormsgpack.packb(
        ormsgpack.Ext(EXT_CONSTRUCTOR_SINGLE_ARG, ormsgpack.packb((module, name, argument)))
    )


def runs_under_permissive_langgraph(blob: bytes) -> Any:
    """Load ``blob`` the way LangGraph's default (non-strict) serializer would."""
    return JsonPlusSerializer(allowed_msgpack_modules=True).loads_typed(("msgpack", blob))


def put_thread(saver: ToolkitCheckpointSaver) -> tuple[dict[str, Any], str]:
    """A thread with one checkpoint holding channel ``note`` and one pending write."""
    thread_id = f"t-strict-{uuid.uuid4().hex}"
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {"note": "harmless"}
    checkpoint["channel_versions"] = {"note": saver.get_next_version(None, None)}
    config = saver.put(
        {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}},
        checkpoint,
        {"source": "loop", "step": 0},
        dict(checkpoint["channel_versions"]),
    )
    saver.put_writes(config, [("note", "pending")], task_id="task-1")
    return config, thread_id


def overwrite(url: str, table: str, thread_id: str, type_: str, blob: bytes) -> None:
    """Replace the thread's stored value(s) in ``table`` with raw SQL, as an intruder would."""
    statement = {
        "lg_blobs": "UPDATE lg_blobs SET type = %s, blob = %s WHERE thread_id = %s",
        "lg_writes": "UPDATE lg_writes SET type = %s, blob = %s WHERE thread_id = %s",
    }[table]
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute(statement, [type_, blob, thread_id]).rowcount == 1


@pytest.fixture
def strict_saver(shared_settings: Settings) -> Any:
    with ToolkitCheckpointSaver.from_settings(shared_settings) as made:
        yield made


@pytest.mark.parametrize("table", ["lg_blobs", "lg_writes"])
def test_a_forged_value_naming_a_function_raises_and_runs_nothing(
    strict_saver: ToolkitCheckpointSaver, shared_settings: Settings, table: str
) -> None:
    blob = forged_call(__name__, plant_flag.__name__, "from-storage")
    assert runs_under_permissive_langgraph(blob) == "planted"
    assert CALLS == ["from-storage"]
    CALLS.clear()

    config, thread_id = put_thread(strict_saver)
    overwrite(shared_settings.database_url, table, thread_id, "msgpack", blob)
    with pytest.raises(DeserializationRefused) as refused:
        strict_saver.get_tuple(config)
    assert refused.value.refused == (f"{__name__}.plant_flag",)
    assert isinstance(refused.value, IntegrityError)
    assert CALLS == []


def test_a_forged_value_naming_os_system_raises_and_creates_nothing(
    strict_saver: ToolkitCheckpointSaver, shared_settings: Settings, tmp_path: Path
) -> None:
    control = tmp_path / "control-ran"
    runs_under_permissive_langgraph(forged_call("os", "system", f"touch {control}"))
    assert control.exists()

    target = tmp_path / "forged-ran"
    config, thread_id = put_thread(strict_saver)
    overwrite(
        shared_settings.database_url,
        "lg_blobs",
        thread_id,
        "msgpack",
        forged_call("os", "system", f"touch {target}"),
    )
    with pytest.raises(DeserializationRefused, match=r"os\.system"):
        strict_saver.get_tuple(config)
    with pytest.raises(DeserializationRefused):
        list(strict_saver.list({"configurable": {"thread_id": thread_id}}))
    assert not target.exists()


@pytest.mark.asyncio
async def test_the_async_path_refuses_a_forged_write_too(
    shared_settings: Settings, tmp_path: Path
) -> None:
    target = tmp_path / "forged-ran"
    async with ToolkitCheckpointSaver.from_settings(shared_settings) as saver:
        config, thread_id = put_thread(saver)
        overwrite(
            shared_settings.database_url,
            "lg_writes",
            thread_id,
            "msgpack",
            forged_call("os", "system", f"touch {target}"),
        )
        with pytest.raises(DeserializationRefused):
            await saver.aget_tuple(config)
    assert not target.exists()


def test_a_forged_type_nested_in_an_allowed_value_is_refused(
    strict_saver: ToolkitCheckpointSaver, shared_settings: Settings
) -> None:
    forged = ormsgpack.Ext(
        EXT_CONSTRUCTOR_SINGLE_ARG, ormsgpack.packb((__name__, "plant_flag", "nested"))
    )
    blob = ormsgpack.packb({"messages": ["hello", {"payload": forged}]})
    config, thread_id = put_thread(strict_saver)
    overwrite(shared_settings.database_url, "lg_blobs", thread_id, "msgpack", blob)
    with pytest.raises(DeserializationRefused):
        strict_saver.get_tuple(config)
    assert CALLS == []


UNKNOWN_EXT = ormsgpack.Ext(42, b"opaque")
TIMESTAMP_EXT = b"\xd6\xff\x00\x00\x00\x00"  # msgpack's own timestamp (code -1), 1970-01-01

# (stored msgpack bytes, what LangGraph itself reads from them, the code refused)
UNKNOWN_EXTENSIONS = {
    "top level": (ormsgpack.packb(UNKNOWN_EXT), None, 42),
    "in a dict": (ormsgpack.packb({"note": UNKNOWN_EXT}), {"note": None}, 42),
    "in an allowed type's arguments": (
        ormsgpack.packb(
            ormsgpack.Ext(
                EXT_CONSTRUCTOR_SINGLE_ARG, ormsgpack.packb(("builtins", "set", [UNKNOWN_EXT]))
            )
        ),
        {None},
        42,
    ),
    "msgpack timestamp": (TIMESTAMP_EXT, None, -1),
}


@pytest.mark.parametrize("case", sorted(UNKNOWN_EXTENSIONS))
def test_an_unknown_msgpack_extension_code_is_refused_never_read_as_none(
    strict_saver: ToolkitCheckpointSaver, shared_settings: Settings, case: str
) -> None:
    blob, langgraph_reads, code = UNKNOWN_EXTENSIONS[case]
    # LangGraph, strict or not, turns the unknown extension into None silently.
    assert JsonPlusSerializer(allowed_msgpack_modules=None).loads_typed(("msgpack", blob)) == (
        langgraph_reads
    )
    with pytest.raises(DeserializationRefused, match=rf"extension code\(s\) {code}\b") as refused:
        StrictSerializer().loads_typed(("msgpack", blob))
    assert refused.value.refused == (f"msgpack-ext-{code}",)

    config, thread_id = put_thread(strict_saver)
    for table in ("lg_blobs", "lg_writes"):
        overwrite(shared_settings.database_url, table, thread_id, "msgpack", blob)
    with pytest.raises(DeserializationRefused, match="not decoded") as refused:
        strict_saver.get_tuple(config)
    assert refused.value.refused == (f"msgpack-ext-{code}",)
    assert len(str(refused.value)) < 300


def test_many_unknown_extension_codes_are_named_boundedly() -> None:
    blob = ormsgpack.packb([ormsgpack.Ext(code, b"") for code in range(8, 128)])
    with pytest.raises(DeserializationRefused) as refused:
        StrictSerializer().loads_typed(("msgpack", blob))
    assert refused.value.refused == tuple(f"msgpack-ext-{code}" for code in range(8, 13))
    assert len(str(refused.value)) < 300


@pytest.mark.parametrize("format_", ["pickle", "json"])
def test_formats_the_saver_never_writes_are_refused_undecoded(
    strict_saver: ToolkitCheckpointSaver, shared_settings: Settings, format_: str
) -> None:
    payload = {
        # pickle calls plant_flag("pickled") on load.
        "pickle": pickle.dumps(_PickleBomb()),
        "json": b'{"lc": 2, "type": "constructor", "id": ["os", "system"], "args": ["true"]}',
    }[format_]
    config, thread_id = put_thread(strict_saver)
    overwrite(shared_settings.database_url, "lg_blobs", thread_id, format_, payload)
    with pytest.raises(DeserializationRefused, match=format_):
        strict_saver.get_tuple(config)
    assert CALLS == []


class _PickleBomb:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (plant_flag, ("pickled",))


@dataclass
class Ticket:
    """An application type in graph state: refused unless the saver allows it."""

    title: str
    priority: int


class FanOut(TypedDict, total=False):
    messages: Annotated[list[Any], add_messages]
    tickets: Annotated[list[Ticket], operator.add]
    done: Annotated[list[str], operator.add]


def fan_out_graph(saver: ToolkitCheckpointSaver) -> Any:
    """Messages, Send to a worker per ticket, and Ticket objects in state."""

    def plan(state: FanOut) -> dict[str, Any]:
        return {"messages": [AIMessage("planning")], "tickets": [Ticket("db", 1), Ticket("ui", 2)]}

    def route(state: FanOut) -> list[Send]:
        return [Send("work", {"title": t.title}) for t in state["tickets"]]

    def work(task: dict[str, Any]) -> dict[str, Any]:
        return {"done": [task["title"]]}

    builder = StateGraph(FanOut)
    builder.add_node("plan", plan)
    builder.add_node("work", work)
    builder.add_edge(START, "plan")
    builder.add_conditional_edges("plan", route, ["work"])
    return builder.compile(checkpointer=saver)


def test_langgraph_types_and_allowed_application_types_round_trip(
    shared_settings: Settings,
) -> None:
    config: Any = {"configurable": {"thread_id": f"t-fan-{uuid.uuid4().hex}"}}
    with ToolkitCheckpointSaver.from_settings(shared_settings, allowed_types=[Ticket]) as saver:
        fan_out_graph(saver).invoke({"messages": [HumanMessage("triage")]}, config)
    with ToolkitCheckpointSaver.from_settings(
        shared_settings, allowed_types=[(__name__, "Ticket")]
    ) as reader:
        state = fan_out_graph(reader).get_state(config).values
        history = list(fan_out_graph(reader).get_state_history(config))
    assert [m.content for m in state["messages"]] == ["triage", "planning"]
    assert state["tickets"] == [Ticket("db", 1), Ticket("ui", 2)]
    assert sorted(state["done"]) == ["db", "ui"]
    assert len(history) >= 3

    with (
        ToolkitCheckpointSaver.from_settings(shared_settings) as default,
        pytest.raises(DeserializationRefused, match="Ticket"),
    ):
        fan_out_graph(default).get_state(config)


def test_bad_allow_lists_raise_invalid_input(shared_settings: Settings) -> None:
    for bad in (True, "os.system", [("os",)], [("os", "")], [42]):
        with pytest.raises(InvalidInput):
            ToolkitCheckpointSaver.from_settings(shared_settings, allowed_types=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="serde"):
        ToolkitCheckpointSaver.from_settings(
            shared_settings, serde=StrictSerializer(), allowed_types=[Ticket]
        )


@pytest.mark.parametrize("size", [1, 2, 4, 8, 16, 3, 300, 70_000])
def test_every_extension_format_is_checked_whatever_its_size(size: int) -> None:
    # fixext 1/2/4/8/16 and ext 8/16/32: each starts with a lead byte of its own, and a
    # value holding none of them is decoded without the check; none may slip through.
    blob = ormsgpack.packb({"value": [1, ormsgpack.Ext(42, b"x" * size)]})
    with pytest.raises(DeserializationRefused, match=r"extension code\(s\) 42\b"):
        StrictSerializer().loads_typed(("msgpack", blob))


@pytest.mark.parametrize(
    "value",
    [
        0,
        7,
        -3,
        2**40,
        1.5,
        "",
        "status \u00e9\u4e2d",
        b"raw",
        [1, [2, "three"]],
        {"a": {"b": None}},
    ],
)
def test_values_without_extensions_read_as_langgraph_reads_them(value: Any) -> None:
    blob = ormsgpack.packb(value)
    expected = JsonPlusSerializer(allowed_msgpack_modules=None).loads_typed(("msgpack", blob))
    assert StrictSerializer().loads_typed(("msgpack", blob)) == expected == value


def _message_zoo() -> list[Any]:
    """Messages as graphs store them: plain ones and ones the fast path must leave to LangChain."""
    from langchain_core.messages import (
        AIMessageChunk,
        RemoveMessage,
        SystemMessage,
        ToolMessage,
    )

    tool_call = {"name": "search", "args": {"q": "refund"}, "id": "call-1"}
    raw_call = {"id": "call-2", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    return [
        HumanMessage("hello"),
        HumanMessage("named", name="ada", id="h-1", additional_kwargs={"k": [1, {"x": None}]}),
        SystemMessage("be brief", response_metadata={"source": "config"}),
        AIMessage("answer \u00e9\u4e2d", id="a-1", response_metadata={"model": "m", "n": 2}),
        AIMessage("", tool_calls=[tool_call]),
        AIMessage("", additional_kwargs={"tool_calls": [raw_call]}),
        AIMessage(
            "with usage",
            usage_metadata={"input_tokens": 3, "output_tokens": 4, "total_tokens": 7},
        ),
        AIMessage([{"type": "text", "text": "blocks"}, "plain"]),
        AIMessageChunk("chunk"),
        ToolMessage("42", tool_call_id="call-1", artifact={"rows": 1}),
        RemoveMessage(id="h-1"),
    ]


def test_messages_read_exactly_as_langgraph_builds_them() -> None:
    stored = JsonPlusSerializer().dumps_typed(_message_zoo())
    ours = StrictSerializer().loads_typed(stored)
    theirs = JsonPlusSerializer(allowed_msgpack_modules=None).loads_typed(stored)
    assert ours == theirs
    for mine, expected in zip(ours, theirs, strict=True):
        assert type(mine) is type(expected)
        assert mine.model_dump() == expected.model_dump()
        assert mine.__pydantic_fields_set__ == expected.__pydantic_fields_set__
        assert mine.__pydantic_extra__ == expected.__pydantic_extra__


@pytest.mark.parametrize(
    "payload", [b"\xc1\xc1 not msgpack", ormsgpack.packb(["module", "Name", {}])[:-3]]
)
def test_a_broken_message_payload_reads_as_langgraph_reads_it(payload: bytes) -> None:
    blob = ormsgpack.packb([ormsgpack.Ext(EXT_PYDANTIC_V2, payload), "after"])
    expected = JsonPlusSerializer(allowed_msgpack_modules=None).loads_typed(("msgpack", blob))
    assert StrictSerializer().loads_typed(("msgpack", blob)) == expected


def test_plain_messages_are_not_validated_again(monkeypatch: pytest.MonkeyPatch) -> None:
    zoo = _message_zoo()
    stored = JsonPlusSerializer().dumps_typed(zoo)
    built: list[str] = []
    for cls in (HumanMessage, AIMessage):
        original = cls.__init__

        def counting(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> None:
            built.append(type(self).__name__)
            _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", counting)
    assert StrictSerializer().loads_typed(stored) == zoo
    # Only the AI messages with tool calls, raw tool calls, usage or content blocks
    # went through the class (LangGraph's hook); the plain ones were constructed.
    assert [name for name in built if name in ("HumanMessage", "AIMessage")] == ["AIMessage"] * 4


def test_a_value_is_decoded_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    from toolkit.integrations import langgraph_serde

    scans: list[bytes] = []
    real_scan = langgraph_serde.unknown_ext_codes

    def counting_scan(payload: bytes) -> tuple[int, ...]:
        scans.append(payload)
        return real_scan(payload)

    monkeypatch.setattr(langgraph_serde, "unknown_ext_codes", counting_scan)
    messages = [HumanMessage(f"question {i}") for i in range(50)]
    assert StrictSerializer().loads_typed(JsonPlusSerializer().dumps_typed(messages)) == messages
    # No extension holds another: nothing is decoded twice to look for unknown codes.
    assert scans == []
    nested = ormsgpack.packb(
        [
            ormsgpack.Ext(
                EXT_CONSTRUCTOR_SINGLE_ARG, ormsgpack.packb(("builtins", "set", [UNKNOWN_EXT]))
            )
        ]
    )
    with pytest.raises(DeserializationRefused, match=r"extension code\(s\) 42\b"):
        StrictSerializer().loads_typed(("msgpack", nested))
    assert len(scans) == 1  # only the extension that holds one is scanned
