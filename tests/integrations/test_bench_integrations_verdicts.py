"""The LangGraph benchmark notes every judged target for ``benchmarks/run.py``'s summary."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from benchmarks._common import VERDICTS_FILE_ENV
from benchmarks.bench_integrations import Row, record_verdicts
from toolkit.config import Settings


def test_every_targeted_row_is_recorded_with_its_printed_figure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = tmp_path / "verdicts.jsonl"
    monkeypatch.setenv(VERDICTS_FILE_ENV, str(sink))
    rows = [
        Row("get_tuple at turn 1 (ms)", "0.50", "0.60", "0.83x the time", "<= 1.0x", True),
        Row("storage path of get_tuple at turn 1 (ms)", "0.30", "0.40", "0.75x the time", "", None),
        Row("get_tuple: turn 200 / turn 1", "1.3x", "9.0x", "", "ours <= 1.2x", False),
        Row(
            "get_tuple at turn 200, first call",
            "5.0",
            "6.0",
            "0.83x the time",
            "<= 0.8x",
            False,
            "cold",
        ),
    ]
    record_verdicts(rows)
    noted = [json.loads(line) for line in sink.read_text().splitlines()]
    assert [(n["row"], n["measured"], n["target"], n["met"]) for n in noted] == [
        ("get_tuple at turn 1 (ms) (one warm process)", "0.83x the time", "<= 1.0x", True),
        ("get_tuple: turn 200 / turn 1 (one warm process)", "1.3x", "ours <= 1.2x", False),
        ("get_tuple at turn 200, first call (cold)", "0.83x the time", "<= 0.8x", False),
    ]
    assert {n["benchmark"] for n in noted} == {"integrations"}


def test_table_bytes_count_a_partitioned_tables_partitions_and_a_plain_table_itself(
    shared_settings: Settings,
) -> None:
    from benchmarks.bench_integrations import OUR_TABLES, _table_bytes

    with psycopg.connect(shared_settings.database_url, autocommit=True) as conn:
        partitions = conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits"
            " WHERE inhparent = ANY(%s::regclass[])",
            [list(OUR_TABLES)],
        ).fetchone()
        assert partitions is not None and partitions[0] > 0
        # The parents themselves have no storage: the bytes are their partitions'.
        assert _table_bytes(conn, "public", OUR_TABLES) == partitions[0]
        plain = conn.execute("SELECT pg_total_relation_size('public.tenants')").fetchone()
        assert plain is not None and plain[0] > 0
        assert _table_bytes(conn, "public", ("tenants",)) == plain[0]
