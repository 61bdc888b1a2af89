"""The building blocks of every record: bases, checked text and JSON types, Page.

Any layer may build on these (db, messaging, storage, the repositories, an
application); the toolkit's seven entities are in
:mod:`toolkit.repositories.records`. A record's fields are the columns of
its queries, in order; ``toolkit verify`` checks that against the live
schema. Records are frozen: a change goes through a repository function and
comes back as a new record.

jsonb columns held as models (:class:`StoredJson`, e.g. an agent's
``config``) are read tolerantly and written strictly. Reading, keys the
model does not know, e.g. written by another service or a newer release,
are kept: they are in the record's ``model_extra`` and in ``model_dump()``,
so one odd row never breaks a ``get`` or a whole page of ``list``. A stored
value that does not fit a known key's type cannot be held by the record and
raises :class:`~toolkit.errors.IntegrityError` naming it (never a pydantic
error). Writing (:data:`WrittenJson`, :data:`JsonObject`), unknown keys are
rejected with :class:`~toolkit.errors.InvalidInput`, as are JSON too deep,
too large or holding what PostgreSQL cannot store; so a record read with
unknown keys must have them removed before it is written back.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    StringConstraints,
)

from toolkit.errors import bounded_repr

MAX_JSON_DEPTH = 32
MAX_JSON_BYTES = 1 << 20


def _clean_text(value: str) -> str:
    """Reject what PostgreSQL text cannot hold: NUL bytes and lone surrogates."""
    if "\x00" in value:
        raise ValueError("text must not contain NUL (0x00) characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return value


def _depth(value: Any, limit: int) -> int:
    depth = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > limit:
            return level
        depth = max(depth, level)
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((v, level + 1) for v in item)
    return depth


def _within_depth(value: Any) -> Any:
    """Reject JSON nested deeper than MAX_JSON_DEPTH, without recursing."""
    if _depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _clean_json(value: Any) -> Any:
    """Reject JSON too deep, too large, or holding text PostgreSQL cannot store."""
    _within_depth(value)
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not JSON-serialisable: {exc}") from None
    _clean_text(encoded.replace("\\u0000", "\x00"))
    if len(encoded.encode("utf-8")) > MAX_JSON_BYTES:
        raise ValueError(f"JSON larger than {MAX_JSON_BYTES} bytes")
    return value


Text = Annotated[str, AfterValidator(_clean_text)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_clean_text)]
LongText = Annotated[str, StringConstraints(max_length=4000), AfterValidator(_clean_text)]
Email = Annotated[
    str,
    StringConstraints(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
    AfterValidator(_clean_text),
]
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
JsonObject = Annotated[dict[str, Any], AfterValidator(_clean_json)]


class Record(BaseModel):
    """Base of every record: frozen, and strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    if not TYPE_CHECKING:  # mypy would take the hook to allow any attribute name

        def __getattr__(self, name: str) -> Any:
            # A record built from a row (toolkit.db.bind.record_factory) has every
            # field set; its set of set fields is made when first asked for (by
            # model_fields_set, model_copy, exclude_unset), not once per row: a set
            # per row cost a third of what a list-100 page's records cost over tuples.
            if name == "__pydantic_fields_set__":
                fields = set(type(self).__pydantic_fields__)
                object.__setattr__(self, name, fields)
                return fields
            return super().__getattr__(name)


class Input(BaseModel):
    """Base of every input model: unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class StoredJson(BaseModel):
    """Base of a model stored in a jsonb column: read tolerantly, written strictly.

    Unknown keys are kept on read (``model_extra``); :data:`WrittenJson`
    rejects them on write. Read from a row, a value that does not fit raises
    IntegrityError (see :func:`toolkit.db.bind.record_factory`).
    """

    model_config = ConfigDict(frozen=True, extra="allow")


def _unknown_keys(value: BaseModel, path: str = "") -> list[str]:
    """The paths of every key a model (and the models inside it) does not know."""
    found = [f"{path}{key}" for key in value.model_extra or {}]
    for name in type(value).model_fields:
        item = getattr(value, name)
        elements = enumerate(item) if isinstance(item, list) else [(None, item)]
        for index, element in elements:
            if isinstance(element, BaseModel):
                where = f"{path}{name}." if index is None else f"{path}{name}.{index}."
                found.extend(_unknown_keys(element, where))
    return found


StoredT = TypeVar("StoredT", bound=StoredJson)


def _written_strictly(value: StoredT) -> StoredT:
    unknown = _unknown_keys(value)
    if unknown:
        raise ValueError(
            f"unknown key {bounded_repr(unknown[0], 60)}"
            + (f" and {len(unknown) - 1} more" if len(unknown) > 1 else "")
            + f"; {type(value).__name__} takes {', '.join(type(value).model_fields)}"
        )
    _clean_json(value.model_dump())  # python mode: NaN is refused here, not turned into null
    return value


WrittenJson = Annotated[StoredT, BeforeValidator(_within_depth), AfterValidator(_written_strictly)]
"""A :class:`StoredJson` model as an input: no unknown keys, and storable JSON."""


RecordT = TypeVar("RecordT", bound=BaseModel)


class Page(BaseModel, Generic[RecordT]):
    """One page of a list, with the cursor of the next page (None at the end)."""

    model_config = ConfigDict(frozen=True)

    items: list[RecordT]
    next_cursor: str | None
