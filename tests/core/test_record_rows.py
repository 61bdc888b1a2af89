"""Rows become records without per-row validation, and they are the validated records.

``toolkit verify`` proves a binding's columns match its record once, so the
row factory (:func:`toolkit.db.bind.record_factory`) builds each record from
psycopg's decoded values without pydantic's per-field validation; only json
columns are parsed into their field's type. These tests hold the fast path to
what ``model_validate`` builds from the same row, for every column type a
record holds, sync and async.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

import pytest
from pydantic import BaseModel, ConfigDict

from tests.support.modes import Mode, both
from toolkit.db import bind
from toolkit.db.registry import QueryRegistry
from toolkit.errors import IntegrityError
from toolkit.records import Record
from toolkit.repositories.records import AgentConfig

pytestmark = pytest.mark.usefixtures("mode")
db_api = both("toolkit.db")

SQL = """
-- name: probe.every_type :many
-- Every row of the probe table, one column per type a record holds.
SELECT
    id, label, note, count, big, ratio, amount, flag, at, day, status, blob,
    config, maybe_config, settings, items
FROM pg_temp.every_type
ORDER BY label;
"""

TABLE = """
CREATE TEMP TABLE every_type (
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    label text NOT NULL,
    note text,
    count integer NOT NULL,
    big bigint NOT NULL,
    ratio double precision NOT NULL,
    amount numeric NOT NULL,
    flag boolean NOT NULL,
    at timestamptz NOT NULL,
    day date NOT NULL,
    status text NOT NULL,
    blob bytea NOT NULL,
    config jsonb NOT NULL,
    maybe_config jsonb,
    settings jsonb NOT NULL,
    items json NOT NULL
);
INSERT INTO every_type
    (label, note, count, big, ratio, amount, flag, at, day, status, blob,
     config, maybe_config, settings, items)
VALUES
    ('a', 'a note', 1, 9007199254740993, 0.1, 12.50, true, '2026-01-02 03:04:05.678901+00',
     '2026-01-02', 'draft', '\\x68c3a9',
     '{"model": "m", "temperature": 0.5, "tools": ["x"], "from_elsewhere": {"k": [1]}}',
     '{"max_tokens": 10}', '{"nested": {"list": [1, 2.5, null, "é"]}}', '[1, 2, 3]'),
    ('b', NULL, -7, 0, -1e300, 0, false, '1999-12-31 23:59:59+05', '1999-12-31', 'published',
     '', '{}', NULL, '{}', '[]');
"""


class EveryType(Record):
    id: UUID
    label: str
    note: str | None
    count: int
    big: int
    ratio: float
    amount: Decimal
    flag: bool
    at: datetime
    day: date
    status: Literal["draft", "published"]
    blob: bytes
    config: AgentConfig
    maybe_config: AgentConfig | None
    settings: dict[str, Any]
    items: list[int]


@pytest.fixture
def probe(monkeypatch, mode: Mode, conn) -> Iterator[bind.Many[EveryType]]:
    """The probe table on ``conn`` and its query bound to EveryType."""
    mode.run(conn.execute(TABLE))
    queries = QueryRegistry()
    queries.load_text(SQL, "sql/probe.sql")
    monkeypatch.setattr(bind, "registry", lambda: queries)
    before = list(bind.BINDINGS)
    yield bind.Many("probe.every_type", EveryType, ())
    bind.BINDINGS[:] = before


def validated(mode: Mode, conn, query: bind.Many[EveryType]) -> list[EveryType]:
    """The same rows through pydantic's full validation, from psycopg's default values."""
    cursor = conn.cursor()
    mode.run(cursor.execute(query.statement_text()))  # text format: jsonb parsed to dicts
    names = [column.name for column in cursor.description]
    rows = mode.run(cursor.fetchall())
    return [EveryType.model_validate(dict(zip(names, row, strict=True))) for row in rows]


def test_records_built_without_validation_equal_the_validated_ones(mode, conn, probe) -> None:
    fast = db_api.run(conn, probe)
    slow = validated(mode, conn, probe)
    assert fast == slow
    for built, checked in zip(fast, slow, strict=True):
        for name in EveryType.model_fields:
            value, expected = getattr(built, name), getattr(checked, name)
            assert type(value) is type(expected), name
            assert value == expected, name
        assert built.model_fields_set == checked.model_fields_set
        assert built.model_dump() == checked.model_dump()
        assert built.model_dump_json() == checked.model_dump_json()
        assert built.config.model_extra == checked.config.model_extra
    assert fast[0].config.model_extra == {"from_elsewhere": {"k": [1]}}
    assert fast[0].at.tzinfo is not None and fast[1].maybe_config is None


def test_records_are_frozen_and_share_no_mutable_state(conn, probe) -> None:
    first, second = db_api.run(conn, probe)
    with pytest.raises(ValueError, match="frozen"):
        first.label = "changed"  # type: ignore[misc]
    assert first.model_fields_set is not second.model_fields_set
    copied = first.model_copy(update={"label": "copy"})
    assert copied.label == "copy" and first.label == "a"
    assert first.__pydantic_extra__ is None and first.__pydantic_private__ is None


def test_every_field_of_a_record_from_a_row_counts_as_set(mode, conn, probe) -> None:
    first, second = db_api.run(conn, probe)
    every = set(EveryType.model_fields)
    # Made when first asked for (Record.__getattr__), one set per record; inside the
    # config, what the stored JSON held, as model_validate has it.
    assert first.model_dump(exclude_unset=True) == (
        validated(mode, conn, probe)[0].model_dump(exclude_unset=True)
    )
    assert set(first.model_dump(exclude_unset=True)) == every
    assert second.model_fields_set == every and second.model_fields_set is second.model_fields_set
    copied = second.model_copy(update={"note": "set"})
    assert copied.model_fields_set == every and second.model_fields_set == every
    assert pickle.loads(pickle.dumps(first)) == first
    assert pickle.loads(pickle.dumps(first)).model_fields_set == every
    assert EveryType.model_validate(first.model_dump()) == first


class PlainModel(BaseModel):
    """A record that is a pydantic model but not a toolkit Record (an application's own)."""

    model_config = ConfigDict(frozen=True)

    id: UUID
    label: str


def test_a_plain_pydantic_model_from_a_row_has_its_own_set_of_set_fields(
    monkeypatch, mode, conn, probe
) -> None:
    queries = bind.registry()
    queries.load_text(
        "-- name: probe.plain :many\n-- Ids and labels.\n"
        "SELECT id, label FROM pg_temp.every_type ORDER BY label;",
        "sql/plain.sql",
    )
    first, second = db_api.run(conn, bind.Many("probe.plain", PlainModel, ()))
    assert first.model_fields_set == {"id", "label"}
    assert first.model_fields_set is not second.model_fields_set
    assert first == PlainModel.model_validate(first.model_dump())


def test_a_stored_json_value_that_does_not_fit_is_an_integrity_error(mode, conn, probe) -> None:
    stored = "UPDATE pg_temp.every_type SET config = '{\"temperature\": \"hot\"}' WHERE label = 'b'"
    mode.run(conn.execute(stored))
    with pytest.raises(
        IntegrityError, match=r"stored JSON does not fit AgentConfig: 'temperature'.*got 'hot'"
    ):
        db_api.run(conn, probe)
