"""LangGraph threads under ``toolkit maintain`` (migration 0014).

A live thread whose newest checkpoint reads a value written long ago (a
channel unchanged for weeks, the base of a list's delta, the checkpoint of
a pending write) answers get_tuple, list and put exactly as before maintain
dropped the partition that value was stored in; a finished thread goes with
its partitions; a second run changes nothing.

Time is simulated: rows are stored now, then moved (as the superuser) into
the partition before the current week, and maintain is told the present is
four weeks and an hour after the current week began, so that partition is
expired and the current one is not.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.conftest import url_as
from tests.integrations.test_langgraph_storage import Thread, text
from toolkit.config import Settings
from toolkit.db import partitions
from toolkit.db.partitions import maintain
from toolkit.integrations.langgraph import ToolkitCheckpointSaver

TABLES = ("lg_checkpoints", "lg_blobs", "lg_writes")


def age(conn: psycopg.Connection[Any], thread_id: str, stored_at: datetime) -> None:
    """Move every row of ``thread_id`` to ``stored_at`` (as if written then)."""
    for table in TABLES:
        conn.execute(
            sql.SQL("UPDATE {} SET stored_at = %s WHERE thread_id = %s").format(
                sql.Identifier(table)
            ),
            [stored_at, thread_id],
        )


def rows_of(conn: psycopg.Connection[Any], thread_id: str) -> dict[str, int]:
    return {
        table: conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE thread_id = %s").format(sql.Identifier(table)),
            [thread_id],
        ).fetchone()[0]  # type: ignore[index]
        for table in TABLES
    }


def lg_only(partitions: list[str]) -> list[str]:
    """The LangGraph tables' partitions among ``partitions`` (the outbox's expire too)."""
    return sorted(name for name in partitions if name.startswith("toolkit_partitions.lg_"))


def week_start(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("SELECT toolkit_partitions.floor_time(now(), interval '7 days')").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def answers(saver: ToolkitCheckpointSaver, thread: Thread) -> tuple[Any, ...]:
    """What a reader of the thread gets: its newest tuple and its whole history."""
    newest = saver.get_tuple(thread.all)
    history = list(saver.list(thread.all))
    assert newest is not None
    return (
        newest.config,
        newest.checkpoint,
        newest.metadata,
        newest.parent_config,
        newest.pending_writes,
        [(t.config, t.checkpoint, t.metadata, t.parent_config, t.pending_writes) for t in history],
    )


def test_maintain_keeps_live_threads_whole_and_drops_finished_ones(
    settings: Settings, superuser: psycopg.Connection[Any], direct_database_url: str
) -> None:
    start = week_start(superuser)
    long_ago = start - timedelta(days=20)
    present = start + timedelta(days=28, hours=1)
    documents = [text(i, 400) for i in range(5)]
    with ToolkitCheckpointSaver.from_settings(settings) as saver:
        # Live: a channel written long ago and never changed since, and a list whose
        # newest version is a delta on a base written long ago.
        live = Thread(saver)
        live.put(0, documents=documents, items=["a", "b", "c"], turn=0)
        age(superuser, live.thread_id, long_ago)
        live.put(1, items=["a", "b", "c", "d"], turn=1)
        # Live by a pending write alone: its checkpoint and values are all long ago.
        waiting = Thread(saver)
        waiting.put(0, documents=documents, turn=0)
        age(superuser, waiting.thread_id, long_ago)
        saver.put_writes(waiting.config, [("turn", 7), ("items", ["x"])], "task-1")
        # Finished: nothing written since long ago.
        finished = Thread(saver)
        finished.put(0, documents=documents, items=["z"])
        finished.put(1, items=["z", "y"])
        saver.put_writes(finished.config, [("turn", 1)], "task-1")
        age(superuser, finished.thread_id, long_ago)

        live_before, waiting_before = answers(saver, live), answers(saver, waiting)
        assert saver.get_tuple(finished.all) is not None
        expired = superuser.execute(
            "SELECT p.partition::text FROM unnest(%s::regclass[]) AS t (parent) "
            "CROSS JOIN toolkit_partitions.partitions(t.parent) AS p "
            "WHERE p.upper_bound <= %s",
            [[f"public.{t}" for t in TABLES], present - timedelta(days=28)],
        ).fetchall()
        assert len(expired) == 3  # the partition before the current week, of each table

        report = maintain(direct_database_url, now=present)

        assert lg_only(report.dropped) == sorted(name for (name,) in expired)
        assert report.kept == []
        # Live rows were moved, not copied: one row per key, all out of the old partition.
        assert report.carried == {
            "public.lg_blobs": 5,  # live: documents, items, turn; waiting: documents, turn
            "public.lg_checkpoints": 2,  # live's first; waiting's
        }
        assert answers(saver, live) == live_before
        assert answers(saver, waiting) == waiting_before
        assert saver.get_tuple(finished.all) is None
        assert rows_of(superuser, finished.thread_id) == dict.fromkeys(TABLES, 0)

        again = maintain(direct_database_url, now=present)
        assert (again.created, lg_only(again.dropped), again.kept, again.carried) == (
            [],
            [],
            [],
            {},
        )
        assert answers(saver, live) == live_before

        # The live thread goes on: its unchanged channel is still read.
        live.put(2, items=["a", "b", "c", "d", "e"], turn=2)
        newest = saver.get_tuple(live.all)
        assert newest is not None
        assert newest.checkpoint["channel_values"] == {
            "documents": documents,
            "items": ["a", "b", "c", "d", "e"],
            "turn": 2,
        }


def test_a_thread_nobody_writes_to_ends_even_after_being_carried(
    settings: Settings, superuser: psycopg.Connection[Any], direct_database_url: str
) -> None:
    """Carried rows go to the thread's newest partition, never to "now": a thread
    left alone is dropped once its newest partition expires, not carried for ever."""
    start = week_start(superuser)
    with ToolkitCheckpointSaver.from_settings(settings) as saver:
        thread = Thread(saver)
        thread.put(0, documents=["old"])
        age(superuser, thread.thread_id, start - timedelta(days=20))
        thread.put(1, turn=1)  # stored this week
        first = maintain(direct_database_url, now=start + timedelta(days=28, hours=1))
        assert first.carried and saver.get_tuple(thread.all) is not None
        stored = superuser.execute(
            "SELECT DISTINCT stored_at >= %s FROM lg_blobs WHERE thread_id = %s",
            [start, thread.thread_id],
        ).fetchall()
        assert stored == [(True,)]
        # Four weeks after this week ended, nothing of it was written since: it goes.
        later = maintain(direct_database_url, now=start + timedelta(days=35, hours=1))
        assert later.carried == {} and len(lg_only(later.dropped)) == 3
        assert saver.get_tuple(thread.all) is None
        assert rows_of(superuser, thread.thread_id) == dict.fromkeys(TABLES, 0)


def test_without_the_carry_a_live_thread_pins_its_partition(
    settings: Settings, superuser: psycopg.Connection[Any], direct_database_url: str
) -> None:
    """keep_while (checked again on the detached table) never lets a live thread's
    partition go: without carry_forward the partition is kept, and the thread whole."""
    superuser.execute("UPDATE toolkit_partitions.policy SET carry_forward = NULL")
    start = week_start(superuser)
    with ToolkitCheckpointSaver.from_settings(settings) as saver:
        thread = Thread(saver)
        thread.put(0, documents=["old"])
        age(superuser, thread.thread_id, start - timedelta(days=20))
        thread.put(1, turn=1)
        before = answers(saver, thread)
        report = maintain(direct_database_url, now=start + timedelta(days=28, hours=1))
        # The thread has no pending writes: only lg_writes' old partition goes.
        assert [name.split("_before_")[0] for name in report.kept] == [
            "toolkit_partitions.lg_blobs",
            "toolkit_partitions.lg_checkpoints",
        ]
        assert [name.split("_before_")[0] for name in lg_only(report.dropped)] == [
            "toolkit_partitions.lg_writes"
        ]
        assert answers(saver, thread) == before


def test_the_application_role_reaches_the_lg_tables_only_through_their_parents(
    superuser: psycopg.Connection[Any], make_role: Any, direct_database_url: str
) -> None:
    login = make_role("LOGIN")
    with psycopg.connect(url_as(direct_database_url, login)) as app:
        app.execute("SELECT set_config('toolkit.tenant_id', %s, false)", [str(uuid.UUID(int=0))])
        for table in TABLES:
            partitions = superuser.execute(
                "SELECT partition::text FROM toolkit_partitions.partitions(%s)",
                [f"public.{table}"],
            ).fetchall()
            assert partitions
            assert app.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            ).fetchone() == (0,)
            for (partition,) in partitions:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    app.execute(sql.SQL("SELECT 1 FROM {}").format(sql.SQL(partition)))
                app.rollback()
                app.execute(
                    "SELECT set_config('toolkit.tenant_id', %s, false)", [str(uuid.UUID(int=0))]
                )


def test_a_thread_taken_up_again_during_the_drop_keeps_its_partition(
    settings: Settings,
    superuser: psycopg.Connection[Any],
    direct_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finished when maintain carried nothing of it, written to again before the detach
    ended: keep_while, checked again on the detached table, attaches it back."""
    start = week_start(superuser)
    with ToolkitCheckpointSaver.from_settings(settings) as saver:
        thread = Thread(saver)
        thread.put(0, documents=["old"], turn=0)
        age(superuser, thread.thread_id, start - timedelta(days=20))
        checks: list[str] = []
        real_check = partitions._has_rows_to_keep

        def check_then_take_up(conn: Any, partition: str, keep_while: str) -> bool:
            found = real_check(conn, partition, keep_while)
            if not partition.startswith("toolkit_partitions.lg_"):
                return found  # another table's expired partition (the inbox's)
            checks.append(partition)
            if len(checks) == 1:  # lg_blobs' old partition, checked, not yet detached
                assert partition.startswith("toolkit_partitions.lg_blobs_before_") and not found
                thread.put(1, turn=1)
            return found

        monkeypatch.setattr(partitions, "_has_rows_to_keep", check_then_take_up)
        report = maintain(direct_database_url, now=start + timedelta(days=28, hours=1))
        assert checks[:2] == [checks[0], checks[0]]  # checked again once detached
        # lg_blobs' partition attached back; lg_checkpoints, processed after, found the
        # thread live and carried its old checkpoint forward.
        assert [name.split("_before_")[0] for name in report.kept] == [
            "toolkit_partitions.lg_blobs"
        ]
        assert report.carried == {"public.lg_checkpoints": 1}
        whole = answers(saver, thread)
        assert whole[1]["channel_values"] == {"documents": ["old"], "turn": 1}
        # The next run carries the values forward and drops the partition.
        monkeypatch.undo()
        following = maintain(direct_database_url, now=start + timedelta(days=28, hours=1))
        assert following.carried == {"public.lg_blobs": 2} and following.kept == []
        assert answers(saver, thread) == whole
