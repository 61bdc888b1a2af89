"""LangGraph's serializer in strict mode, refusing loudly.

Install: ``pip install 'agent-persistence-toolkit[langgraph]'``.

LangGraph's ``JsonPlusSerializer`` stores objects as msgpack extensions
naming a module and a callable, and by default (langgraph-checkpoint 4.x)
imports and calls whatever a stored value names, with only a warning. Anyone
who can write ``lg_blobs`` or ``lg_writes`` could then run code in every
worker that loads the thread.

:class:`StrictSerializer` is LangGraph's strict mode (an allow-list: the
types LangGraph and LangChain store themselves, ``SAFE_MSGPACK_TYPES``, plus
the application's own) with one change: where strict LangGraph quietly
hands back the raw payload of a refused type, this raises
:class:`~toolkit.errors.DeserializationRefused`, so forged or unexpected data
never passes as state. A refused type is never imported or called: LangGraph
checks the allow-list before it imports. Only the formats this saver writes
(``msgpack``, ``bytes``, ``bytearray``, ``null``) are read; ``pickle`` and
``json`` rows are refused the same way. So is a msgpack value holding an
extension code LangGraph does not write (LangGraph's reader would turn it
into ``None`` without a word): every extension, nested ones included, is
checked before LangGraph's hook builds it, in the one pass that decodes the
value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import suppress
from contextvars import ContextVar
from typing import Any, Final

from toolkit.errors import DeserializationRefused, InvalidInput, bounded_repr

try:
    import ormsgpack
    from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
    from langgraph.checkpoint.serde import jsonplus as _jsonplus
    from langgraph.checkpoint.serde.event_hooks import (
        SerdeEvent,
        register_serde_event_listener,
    )
    from langgraph.checkpoint.serde.jsonplus import EXT_PYDANTIC_V2, JsonPlusSerializer
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "toolkit.integrations.langgraph_serde needs LangGraph's checkpoint serializer: "
        "pip install 'agent-persistence-toolkit[langgraph]'"
    ) from exc

__all__ = [
    "KNOWN_EXT_CODES",
    "READABLE_FORMATS",
    "AllowedType",
    "StrictSerializer",
    "unknown_ext_codes",
]

AllowedType = tuple[str, str] | type
"""An allow-list entry: a class, or its ``(module, name)``."""

READABLE_FORMATS: Final = frozenset({"null", "bytes", "bytearray", "msgpack"})
"""The formats ``JsonPlusSerializer.dumps_typed`` writes; nothing else is read."""

_REFUSAL_EVENTS: Final = frozenset({"msgpack_blocked", "msgpack_method_blocked"})
_NAME_LIMIT: Final = 120
_NAMES_SHOWN: Final = 5

# The extension codes the installed LangGraph writes and reads (EXT_CONSTRUCTOR_*,
# EXT_PYDANTIC_*, ...); each one's payload is msgpack again.
KNOWN_EXT_CODES: Final = frozenset(
    value
    for name, value in vars(_jsonplus).items()
    if name.startswith("EXT_") and type(value) is int
)


def _may_hold_extension(payload: bytes) -> bool:
    """Whether a byte that starts an extension (ext 8/16/32: 0xC7-0xC9, fixext 1-16:
    0xD4-0xD8) occurs anywhere in ``payload``.

    A payload holding none holds no extension: nothing in it can name a
    type, so it is decoded without the checks (ints, strings, plain lists
    and dicts, as most channel values are, and most messages' own fields).
    One ``in`` per lead byte is a memchr: a message's payload is scanned at
    memory speed, where a regex character class took ~10 ns a byte.
    """
    # Spelled out: a generator over a tuple of them cost more than the eight scans.
    return (
        0xC7 in payload
        or 0xC8 in payload
        or 0xC9 in payload
        or 0xD4 in payload
        or 0xD5 in payload
        or 0xD6 in payload
        or 0xD7 in payload
        or 0xD8 in payload
    )


_refusals: ContextVar[list[str] | None] = ContextVar("toolkit_serde_refusals", default=None)
"""The names LangGraph refused during the current ``loads_typed`` (None outside one)."""


def _note_refusal(event: SerdeEvent) -> None:
    refused = _refusals.get()
    if refused is not None and event["kind"] in _REFUSAL_EVENTS:
        parts = (event["module"], event["name"], event.get("method"))
        # The names come from stored data: bounded before they reach a message.
        refused.append(".".join(str(part) for part in parts if part)[:_NAME_LIMIT])


# LangGraph reports each refusal to its listeners before falling back to the
# raw payload; listening is the only way to learn of one nested in a value.
register_serde_event_listener(_note_refusal)


_PLAIN_MESSAGE_CLASSES: Final = (HumanMessage, AIMessage, SystemMessage)
_PLAIN_MESSAGES: Final = {
    (cls.__module__, cls.__name__): (
        cls,
        frozenset(cls.model_fields),
        cls.model_fields["type"].default,
    )
    for cls in _PLAIN_MESSAGE_CLASSES
}
"""The LangChain messages built without revalidation when stored plain: (module, name) ->
(class, its field names, its ``type``)."""


def _plain_message(payload: bytes) -> BaseMessage | None:
    """The message a pydantic extension's payload holds, if it is a plain one; else None.

    Plain: a human, AI or system message as this LangChain's ``model_dump``
    writes it (exactly the class's fields, its own ``type``), with text
    content and no tool calls, raw tool calls or usage: values on which the
    class's validators change nothing, so ``model_construct`` builds the
    same message as the class itself, at about half the cost (a thread's
    history is mostly such messages). Anything else (None) is built by
    LangGraph's hook. The class is one of LangChain's own, never one the
    payload names, and a payload holding an extension never gets here.
    Validation is no guard against forged fields anyway: LangGraph builds
    a message that fails it with ``model_construct``.
    """
    try:
        stored = ormsgpack.unpackb(payload, option=ormsgpack.OPT_NON_STR_KEYS)
    except (ormsgpack.MsgpackDecodeError, ValueError):
        return None  # LangGraph's hook reads a broken payload its own way
    if not (isinstance(stored, list) and len(stored) == 4):
        return None
    module, name, fields, _method = stored
    if not (isinstance(module, str) and isinstance(name, str) and type(fields) is dict):
        return None
    known = _PLAIN_MESSAGES.get((module, name))
    if known is None:
        return None
    cls, field_names, message_type = known
    if fields.keys() != field_names or fields["type"] != message_type:
        return None
    extra = fields["additional_kwargs"]
    if not (
        type(fields["content"]) is str
        and type(extra) is dict
        and "tool_calls" not in extra
        and type(fields["response_metadata"]) is dict
        and isinstance(fields["name"], (str, type(None)))
        and isinstance(fields["id"], (str, type(None)))
        and not fields.get("tool_calls")
        and not fields.get("invalid_tool_calls")
        and fields.get("usage_metadata") is None
    ):
        return None
    return cls.model_construct(**fields)


def unknown_ext_codes(payload: bytes) -> tuple[int, ...]:
    """The msgpack extension codes in ``payload``, at any depth, that LangGraph does not write.

    Decodes structure only: no type is imported or called. A payload that is
    not msgpack gives ``()``; LangGraph's own reader then reports it.
    """
    unknown: list[int] = []

    def visit(code: int, data: bytes) -> None:
        if code not in KNOWN_EXT_CODES:
            unknown.append(code)
            return
        # A known extension's payload is msgpack holding the nested values.
        with suppress(ormsgpack.MsgpackDecodeError, ValueError):
            ormsgpack.unpackb(data, ext_hook=visit, option=ormsgpack.OPT_NON_STR_KEYS)

    with suppress(ormsgpack.MsgpackDecodeError, ValueError):
        ormsgpack.unpackb(payload, ext_hook=visit, option=ormsgpack.OPT_NON_STR_KEYS)
    return tuple(dict.fromkeys(unknown))


def _allow_list(allowed_types: Iterable[AllowedType]) -> tuple[AllowedType, ...]:
    if isinstance(allowed_types, (str, bytes)) or not isinstance(allowed_types, Iterable):
        raise InvalidInput(
            "allowed_types must be an iterable of classes or (module, name) pairs",
            field="allowed_types",
            value=type(allowed_types).__name__,
        )
    entries = tuple(allowed_types)
    for entry in entries:
        if isinstance(entry, type):
            continue
        if (
            isinstance(entry, tuple)
            and len(entry) == 2
            and all(isinstance(part, str) and part for part in entry)
        ):
            continue
        raise InvalidInput(
            f"allowed_types entries must be classes or (module, name) pairs, "
            f"got {bounded_repr(entry)}",
            field="allowed_types",
            value=entry,
        )
    return entries


class StrictSerializer(JsonPlusSerializer):
    """``JsonPlusSerializer`` restricted to an allow-list; refused data raises.

    ``allowed_types`` adds the application's own classes (or ``(module,
    name)`` pairs) to LangGraph's ``SAFE_MSGPACK_TYPES``: the dataclasses,
    Pydantic models and enums its graph state holds. LangGraph extends the
    list itself with a compiled graph's state types when
    ``LANGGRAPH_STRICT_MSGPACK=true`` is set. Writing is unchanged; reading
    a value that names any other type raises
    :class:`~toolkit.errors.DeserializationRefused` and runs nothing.
    """

    def __init__(self, allowed_types: Iterable[AllowedType] = ()) -> None:
        # None is LangGraph's strict mode with only its safe types; True would
        # be its permissive default, which this class never passes.
        super().__init__(allowed_msgpack_modules=_allow_list(allowed_types) or None)

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        """The stored value; DeserializationRefused if it names a type outside the list."""
        format_, payload = data
        if format_ not in READABLE_FORMATS:
            raise DeserializationRefused(
                f"a stored checkpoint value is in format {str(format_)[:40]!r}, which this "
                f"saver never writes (it reads {', '.join(sorted(READABLE_FORMATS))}); "
                "it was not decoded",
                refused=(str(format_)[:40],),
            )
        unknown: list[int] = []
        refused: list[str] = []
        token = _refusals.set(refused)
        try:
            if format_ == "msgpack":
                if not _may_hold_extension(payload):
                    return ormsgpack.unpackb(payload, option=ormsgpack.OPT_NON_STR_KEYS)
                value = ormsgpack.unpackb(
                    payload,
                    ext_hook=self._checking_ext_hook(unknown),
                    option=ormsgpack.OPT_NON_STR_KEYS,
                )
            else:
                value = super().loads_typed(data)
        finally:
            _refusals.reset(token)
        if unknown:
            codes = tuple(dict.fromkeys(unknown))[:_NAMES_SHOWN]
            raise DeserializationRefused(
                "a stored checkpoint value holds msgpack extension code(s) "
                f"{', '.join(map(str, codes))}, which LangGraph does not write "
                f"(it writes {', '.join(map(str, sorted(KNOWN_EXT_CODES)))}); "
                "it was not decoded",
                refused=tuple(f"msgpack-ext-{code}" for code in codes),
            )
        if refused:
            names = tuple(dict.fromkeys(refused))[:_NAMES_SHOWN]
            raise DeserializationRefused(
                "a stored checkpoint value names types outside the deserialization "
                f"allow-list: {', '.join(names)}; none of them was imported or called. "
                "If they are your application's own types, pass them to "
                "ToolkitCheckpointSaver(allowed_types=...)",
                refused=names,
            )
        return value

    def _checking_ext_hook(self, unknown: list[int]) -> Callable[[int, bytes], Any]:
        """LangGraph's extension hook, building only extensions free of unknown codes.

        The value is decoded once: each extension is checked (its code, and
        any extension nested in its payload) before LangGraph's hook builds
        it; an unknown code is noted in ``unknown`` and builds nothing, and
        the caller refuses the whole value. The hook is looked up per value
        because ``with_msgpack_allowlist`` copies replace it.
        """
        build = self._unpack_ext_hook

        def checked(code: int, data: bytes) -> Any:
            if code not in KNOWN_EXT_CODES:
                unknown.append(code)
                return None
            if _may_hold_extension(data):
                nested = unknown_ext_codes(data)
                if nested:
                    unknown.extend(nested)
                    return None
            elif code == EXT_PYDANTIC_V2:
                message = _plain_message(data)
                if message is not None:
                    return message
            return build(code, data)

        return checked
