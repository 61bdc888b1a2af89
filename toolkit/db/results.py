"""What the drivers read and how json arrives: shared by the sync and async drivers.

json and jsonb results arrive as the bytes the server sent (the record
factory parses them straight into their field's type): the loaders are
registered once per connection, for binary results only, so text-format
queries of the caller's own on the same connection are unaffected.
"""

from __future__ import annotations

import enum
from typing import Any

import psycopg
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg.pq import Format


class Fetch(enum.Enum):
    """What a result kind reads from the cursor."""

    ONE = "one"
    ALL = "all"
    ROWCOUNT = "rowcount"


class _JsonBinaryBytes(Loader):
    """json in binary format: its text, as bytes."""

    format = Format.BINARY

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


class _JsonbBinaryBytes(Loader):
    """jsonb in binary format: a version byte, then its text, as bytes."""

    format = Format.BINARY

    def load(self, data: Buffer) -> bytes:
        return bytes(data[1:])


def json_as_bytes(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """Register the bytes loaders on ``conn`` unless done already (once per connection)."""
    adapters = conn.adapters
    jsonb = adapters.types.get("jsonb")
    if jsonb is None or adapters.get_loader(jsonb.oid, Format.BINARY) is _JsonbBinaryBytes:
        return
    adapters.register_loader("jsonb", _JsonbBinaryBytes)
    adapters.register_loader("json", _JsonBinaryBytes)
