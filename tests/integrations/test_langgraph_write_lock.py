"""One row per key without a unique index (migration 0014): the thread write lock.

The partitioned LangGraph tables' primary keys end with ``stored_at``, so no
index refuses a second row of a key: the saver inserts a key only when no
row has it, after taking its thread's advisory lock in a statement of its
own. Writers racing on one key leave exactly one row; maintain's carry takes
the same locks, so a saver update of a row being moved waits and succeeds
instead of failing with a serialization error.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from langgraph.checkpoint.base import empty_checkpoint

from tests.integrations.test_langgraph_partitions import age, week_start
from toolkit.config import Settings, load_settings
from toolkit.integrations.langgraph import ToolkitCheckpointSaver

WRITERS = 4
ROUNDS = 25


def race(writers: int, action: Callable[[int], None]) -> None:
    """Run ``action(i)`` in ``writers`` threads released at once; re-raise the first error."""
    start = threading.Barrier(writers)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            start.wait()
            action(i)
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def duplicates(conn: psycopg.Connection[Any], thread_id: str) -> dict[str, int]:
    """Per table, how many keys of ``thread_id`` have more than one row."""
    keys = {
        "lg_checkpoints": "checkpoint_ns, checkpoint_id",
        "lg_blobs": "checkpoint_ns, channel, version",
        "lg_writes": "checkpoint_ns, checkpoint_id, task_id, idx",
    }
    found = {}
    for table, columns in keys.items():
        row = conn.execute(
            f"SELECT count(*) FROM (SELECT FROM {table} WHERE thread_id = %s"
            f" GROUP BY tenant_id, {columns} HAVING count(*) > 1) AS d",
            [thread_id],
        ).fetchone()
        assert row is not None
        found[table] = row[0]
    return found


@pytest.fixture
def racing_saver(database_url: str) -> Any:
    """A saver whose pool lets every writer hold a connection at once."""
    settings = load_settings(
        database_url=database_url, pool_min_size=0, pool_max_size=WRITERS, pool_timeout=60.0
    )
    with ToolkitCheckpointSaver.from_settings(settings) as saver:
        yield saver


def test_writers_racing_on_one_key_leave_one_row(
    racing_saver: ToolkitCheckpointSaver, superuser: psycopg.Connection[Any]
) -> None:
    saver = racing_saver
    thread_id = f"race-{uuid.uuid4().hex}"
    for step in range(ROUNDS):
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = {"turn": step, "notes": f"note {step}"}
        checkpoint["channel_versions"] = {"turn": step + 1, "notes": step + 1}
        config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
        versions = {"turn": step + 1, "notes": step + 1}
        stored = saver.put(config, checkpoint, {"step": step}, versions)

        def put_everything(
            i: int, stored: Any = stored, checkpoint: Any = checkpoint, step: int = step
        ) -> None:
            # The same task's writes, an error (replaced by key), the same
            # checkpoint again, and a new one with the same new values.
            saver.put_writes(stored, [("turn", i), ("notes", "x")], "task-1")
            saver.put_writes(stored, [("__error__", f"boom {i}")], "task-2")
            again = {**checkpoint, "id": f"{checkpoint['id']}-next"}
            saver.put(stored, again, {"step": step, "writer": i}, {"turn": f"{step}-next"})

        race(WRITERS, put_everything)

    assert duplicates(superuser, thread_id) == {
        "lg_checkpoints": 0,
        "lg_blobs": 0,
        "lg_writes": 0,
    }
    history = list(saver.list({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}))
    assert len(history) == 2 * ROUNDS
    for item in history:
        if not item.checkpoint["id"].endswith("-next"):
            assert sorted((t, c) for t, c, _ in item.pending_writes) == [
                ("task-1", "notes"),
                ("task-1", "turn"),
                ("task-2", "__error__"),
            ]


def test_a_saver_update_of_a_row_being_carried_waits_and_succeeds(
    settings: Settings, superuser: psycopg.Connection[Any], direct_database_url: str
) -> None:
    start = week_start(superuser)
    present = start + timedelta(days=28, hours=1)
    with ToolkitCheckpointSaver.from_settings(settings) as saver:
        thread_id = f"carried-{uuid.uuid4().hex}"
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = {"turn": 0}
        checkpoint["channel_versions"] = {"turn": 1}
        config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
        stored = saver.put(config, checkpoint, {"step": 0}, {"turn": 1})
        saver.put_writes(stored, [("__error__", "first")], "task-1")
        age(superuser, thread_id, start - timedelta(days=20))
        # A write of this week keeps the thread live: maintain will carry its old rows.
        saver.put_writes(stored, [("turn", 1)], "task-2")

        with psycopg.connect(direct_database_url) as carrier:
            # The carry, its transaction left open: the rows are moved, not yet committed.
            carrier.execute("SELECT set_config('toolkit.maintain_now', %s, false)", [str(present)])
            moved = carrier.execute(
                "SELECT toolkit_partitions.lg_carry_forward('public.lg_checkpoints')"
                " + toolkit_partitions.lg_carry_forward('public.lg_writes')"
            ).fetchone()
            assert moved == (2,)
            errors: list[BaseException] = []

            def rewrite() -> None:
                # Both update a row the carry is moving: the checkpoint, the error.
                try:
                    saver.put(stored, checkpoint, {"step": 0, "again": True}, {})
                    saver.put_writes(stored, [("__error__", "second")], "task-1")
                except BaseException as exc:  # handed to the test thread
                    errors.append(exc)

            writer = threading.Thread(target=rewrite)
            writer.start()
            deadline = time.monotonic() + 60
            while not superuser.execute("SELECT FROM pg_locks WHERE NOT granted").fetchall():
                assert time.monotonic() < deadline, "the saver never waited for the carry"
                time.sleep(0.01)
            carrier.commit()
            writer.join()

        assert errors == []
        newest = saver.get_tuple(config)
        assert newest is not None
        assert newest.metadata == {"step": 0, "again": True}
        assert sorted(newest.pending_writes) == [
            ("task-1", "__error__", "second"),
            ("task-2", "turn", 1),
        ]
        assert duplicates(superuser, thread_id) == {
            "lg_checkpoints": 0,
            "lg_blobs": 0,
            "lg_writes": 0,
        }
        # Moved out of the expired week, into the thread's newest partition.
        old = superuser.execute(
            "SELECT count(*) FROM lg_checkpoints WHERE thread_id = %s AND stored_at < %s",
            [thread_id, start],
        ).fetchone()
        assert old == (0,)


def test_retain_meeting_a_row_being_carried_runs_again(
    settings: Settings, superuser: psycopg.Connection[Any], direct_database_url: str
) -> None:
    # retain deletes rows of threads it does not know beforehand, so it takes no
    # thread lock: it meets the moved row, is aborted (40001), and runs again.
    start = week_start(superuser)
    present = start + timedelta(days=28, hours=1)
    with ToolkitCheckpointSaver.from_settings(settings) as saver:
        thread_id = f"retained-{uuid.uuid4().hex}"
        config: Any = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
        for step in range(2):
            checkpoint = empty_checkpoint()
            checkpoint["channel_values"] = {"turn": step}
            checkpoint["channel_versions"] = {"turn": step + 1}
            config = saver.put(config, checkpoint, {"step": step}, {"turn": step + 1})
        age(superuser, thread_id, start - timedelta(days=20))
        saver.put_writes(config, [("turn", 9)], "task-1")  # live: a write of this week

        with psycopg.connect(direct_database_url) as carrier:
            carrier.execute("SELECT set_config('toolkit.maintain_now', %s, false)", [str(present)])
            moved = carrier.execute(
                "SELECT toolkit_partitions.lg_carry_forward('public.lg_checkpoints')"
            ).fetchone()
            assert moved == (2,)
            outcome: list[Any] = []

            def trim() -> None:
                try:
                    outcome.append(saver.retain(keep_last=1, thread_ids=[thread_id]))
                except BaseException as exc:  # handed to the test thread
                    outcome.append(exc)

            writer = threading.Thread(target=trim)
            writer.start()
            deadline = time.monotonic() + 60
            while not superuser.execute("SELECT FROM pg_locks WHERE NOT granted").fetchall():
                assert time.monotonic() < deadline, "retain never waited for the carry"
                time.sleep(0.01)
            carrier.commit()
            writer.join()

        [report] = outcome
        assert not isinstance(report, BaseException), report
        assert report.checkpoints_deleted == 1
        newest = saver.get_tuple(config)
        assert newest is not None
        assert newest.checkpoint["channel_values"] == {"turn": 1}
        assert len(list(saver.list(config))) == 1
