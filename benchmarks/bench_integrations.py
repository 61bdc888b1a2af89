"""The toolkit's LangGraph checkpointer against langgraph-checkpoint-postgres' PostgresSaver.

Run as ``python benchmarks/bench_integrations.py`` (PostgreSQL from
TOOLKIT_DATABASE_URL's server, default 127.0.0.1:5432 as postgres). Both
savers use one database made for the run: ours its ``lg_*`` tables from the
toolkit's migrations, PostgresSaver its own tables (from its ``setup()``)
in a schema of their own, since its ``checkpoints`` table would collide
with the toolkit's.

The workload is a 200-turn thread as LangGraph's loop saves it: each turn
is one ``put`` whose ``messages`` channel (LangChain messages, the way
``add_messages`` keeps them) grew by about 2 KB (a 600-byte question and a
1400-byte answer of prose-like text), beside four small channels: a turn
counter and a status string that change every turn, a plan that changes
every tenth turn and a user profile that never changes. Versions come from
each saver's own ``get_next_version``.

* put throughput: whole 200-turn threads, the two savers alternating over
  several rounds (a new thread each round); target: at least 1.5x
  PostgresSaver's puts per second;
* get_tuple of turn 1 and of turn 200 of one thread (medians, the savers'
  reads alternating, after warm-up); targets: at most 1.0x PostgresSaver's
  time at turn 1 and 0.8x at turn 200, and ours at turn 200 within 1.2x
  of ours at turn 1. The same reads are also timed with a serializer that
  hands values back still serialized, which leaves the storage path alone
  (rows fetched, delta chains joined);
* table bytes (``pg_total_relation_size`` of the three tables, TOAST and
  indexes included; of their partitions, for ours) after one 200-turn
  thread in empty tables; target: at most 0.25x PostgresSaver's.

All of those run in one warm process: the savers wrote the threads they
read, and their connections have run each statement before. The cold rows
(``--cold-read``) start a fresh process per sample that has never seen the
thread: it imports, builds the saver and opens its connection (ours:
``setup()``, which checks the tables; theirs: ``SELECT 1``), all untimed,
then times its first ``get_tuple`` of turn 1 (or of turn 200, in other
children), and a second one of the same checkpoint; the first call has the
same targets as the warm rows (1.0x at turn 1, 0.8x at turn 200). The
savers' children alternate. The server's caches stay warm: only the client
process is cold.

``run()`` returns the rows for a top-level runner, and notes each judged
row's verdict for ``benchmarks/run.py``'s summary.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver, empty_checkpoint
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from benchmarks._common import (
    interleaved,
    load_average,
    machine_summary,
    markdown_table,
    median,
    paired_ratio,
    record_verdict,
)
from toolkit.config import load_settings
from toolkit.db import migrate
from toolkit.integrations.langgraph import ToolkitCheckpointSaver

TURNS = 200
OURS = "ToolkitCheckpointSaver"
THEIRS = "PostgresSaver"
PG_SCHEMA = "lg_postgres_saver"
OUR_TABLES = ("lg_checkpoints", "lg_blobs", "lg_writes")
THEIR_TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
WORDS = [
    "the",
    "agent",
    "plans",
    "a",
    "step",
    "calls",
    "tool",
    "reads",
    "result",
    "answers",
    "user",
    "with",
    "short",
    "summary",
    "of",
    "what",
    "it",
    "found",
    "in",
    "store",
    "and",
    "will",
    "do",
    "next",
    "search",
    "query",
    "returned",
    "three",
    "documents",
    "about",
    "billing",
    "invoice",
    "refund",
    "policy",
    "customer",
    "account",
    "order",
    "shipping",
    "delay",
    "weather",
    "forecast",
    "meeting",
    "calendar",
    "schedule",
    "notes",
    "draft",
    "email",
    "reply",
    "approve",
    "deploy",
    "service",
    "database",
    "index",
    "latency",
    "error",
    "retry",
    "timeout",
    "budget",
    "cost",
    "tokens",
    "model",
    "prompt",
    "context",
    "window",
    "memory",
    "thread",
    "state",
    "graph",
    "node",
    "edge",
    "branch",
    "merge",
    "review",
    "test",
    "build",
    "release",
    "version",
    "config",
    "secret",
    "key",
    "value",
]


@dataclass
class Row:
    """One line of the report."""

    case: str
    ours: str
    theirs: str
    ratio: str
    target: str
    ok: bool | None
    process: str = "one warm process"
    """Where the row ran: the warm benchmark process, or fresh ones (cold)."""


def text(seed: int, size: int) -> str:
    """Prose-like text of ``size`` characters (compresses about as much as English does)."""
    rng = random.Random(seed)
    out: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(WORDS)
        if rng.random() < 0.15:
            word = f"{word}{rng.randrange(10_000)}"
        out.append(word)
        length += len(word) + 1
    return " ".join(out)[:size]


class Conversation:
    """Puts the turns of one thread into one saver, as LangGraph's loop would."""

    def __init__(self, saver: BaseCheckpointSaver[Any], thread_id: str) -> None:
        self.saver = saver
        self.config: Any = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
        self.values: dict[str, Any] = {}
        self.versions: dict[str, Any] = {}
        self.configs: list[Any] = []

    def turn(self, index: int) -> None:
        changes: dict[str, Any] = {
            "messages": [
                *self.values.get("messages", []),
                HumanMessage(text(2 * index, 600), id=f"human-{index}"),
                AIMessage(text(2 * index + 1, 1400), id=f"ai-{index}"),
            ],
            "turn": index,
            "status": f"answered turn {index}",
        }
        if index % 10 == 0:
            changes["plan"] = {"goal": text(-index - 1, 120), "steps": [f"step {index}", "reply"]}
        if index == 0:
            changes["user"] = {"id": "user-1", "name": "Ada", "locale": "en-GB"}
        new_versions = {}
        for channel, value in changes.items():
            self.values[channel] = value
            new_versions[channel] = self.saver.get_next_version(self.versions.get(channel), None)
        self.versions.update(new_versions)
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = dict(self.values)
        checkpoint["channel_versions"] = dict(self.versions)
        metadata: Any = {"source": "loop", "step": index, "parents": {}}
        self.config = self.saver.put(self.config, checkpoint, metadata, new_versions)
        self.configs.append(self.config)

    def play(self, turns: int = TURNS) -> None:
        for index in range(turns):
            self.turn(index)


class RawLoads(JsonPlusSerializer):
    """Hands values back still serialized: what is left is the storage path."""

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        return data[1]


def _server_url() -> str:
    base = os.environ.get("TOOLKIT_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    params = conninfo_to_dict(base)
    return make_conninfo(
        host=str(params.get("host") or "127.0.0.1"),
        port=str(params.get("port") or 5432),
        user=str(params.get("user") or "postgres"),
        dbname="postgres",
    )


def _table_bytes(conn: psycopg.Connection[Any], schema: str, tables: tuple[str, ...]) -> int:
    """Bytes of ``tables`` with TOAST and indexes, their partitions' included.

    A partitioned table has no storage of its own (its size is 0): its rows
    are in its partitions, which ``pg_partition_tree`` lists (nothing for a
    plain table, which counts itself).
    """
    total = 0
    for table in tables:
        row = conn.execute(
            "WITH t (rel) AS (SELECT format('%%I.%%I', %s::text, %s::text)::regclass)"
            " SELECT sum(pg_total_relation_size(part.rel)) FROM ("
            "   SELECT rel FROM t UNION SELECT tree.relid FROM t, pg_partition_tree(t.rel) AS tree"
            " ) AS part",
            [schema, table],
        ).fetchone()
        total += int(row[0]) if row else 0
    return total


def _reads(
    savers: dict[str, BaseCheckpointSaver[Any]],
    threads: dict[str, Conversation],
    reads: int,
) -> dict[str, tuple[float, float]]:
    """Median seconds of get_tuple at the first and at the last turn, per saver.

    Each saver reads each checkpoint 10 times first (PostgreSQL plans a
    prepared statement generically after 5 runs on a connection, as in a
    long-running service); then the samples alternate between the savers so
    that load on the machine falls on both alike.
    """
    samples: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in savers}
    for name, saver in savers.items():
        for config in (threads[name].configs[0], threads[name].configs[-1]):
            for _ in range(10):
                saver.get_tuple(config)
    for round_index in range(reads):
        names = list(savers) if round_index % 2 == 0 else list(reversed(savers))
        for name in names:
            ends = (threads[name].configs[0], threads[name].configs[-1])
            for index, config in enumerate(ends):
                start = time.perf_counter()
                savers[name].get_tuple(config)
                samples[name][index].append(time.perf_counter() - start)
    return {
        name: (statistics.median(first), statistics.median(last))
        for name, (first, last) in samples.items()
    }


READ_TARGETS = (1.0, 0.8)
"""get_tuple's time against PostgresSaver's at turn 1 and at the last turn: at most this."""


def _read_rows(prefix: str, timing: dict[str, tuple[float, float]], turns: int) -> list[Row]:
    rows = []
    targeted = prefix == "get_tuple"
    for label, index in (("turn 1", 0), (f"turn {turns}", 1)):
        ratio = timing[OURS][index] / timing[THEIRS][index]
        limit = READ_TARGETS[index]
        rows.append(
            Row(
                f"{prefix} at {label} (ms)",
                f"{timing[OURS][index] * 1e3:.2f}",
                f"{timing[THEIRS][index] * 1e3:.2f}",
                f"{ratio:.2f}x the time",
                f"<= {limit:.1f}x" if targeted else "",
                ratio <= limit if targeted else None,
            )
        )
    ours = timing[OURS][1] / timing[OURS][0]
    theirs = timing[THEIRS][1] / timing[THEIRS][0]
    rows.append(
        Row(
            f"{prefix}: turn {turns} / turn 1",
            f"{ours:.1f}x",
            f"{theirs:.1f}x",
            "",
            "ours <= 1.2x" if targeted else "",
            ours <= 1.2 if targeted else None,
        )
    )
    return rows


def _open_saver(name: str, url: str) -> tuple[BaseCheckpointSaver[Any], Callable[[], None]]:
    """A saver of each kind as the benchmark builds it, with its connection open; and its closer."""
    if name == OURS:
        # One connection, as PostgresSaver has: with two, the pool hands them out in
        # turn and a fresh process's first calls would each warm another backend.
        ours = ToolkitCheckpointSaver.from_settings(
            load_settings(database_url=url, pool_min_size=1, pool_max_size=1)
        )
        ours.setup()  # checks the tables: the pool's connection is open afterwards
        return ours, ours.close
    conn = psycopg.Connection.connect(
        url,
        autocommit=True,
        prepare_threshold=0,
        row_factory=dict_row,
        options=f"-c search_path={PG_SCHEMA}",
    )
    conn.execute("SELECT 1")
    return PostgresSaver(conn), conn.close  # type: ignore[arg-type]


def _cold_read(name: str, url: str, config: Any) -> dict[str, float]:
    """In a fresh process: seconds of the first and the second get_tuple of ``config``."""
    saver, close = _open_saver(name, url)
    try:
        times = []
        for _ in range(2):
            # Each call starts from the same heap: the previous answer gone, garbage collected.
            gc.collect()
            start = time.perf_counter()
            found = saver.get_tuple(config) is not None
            times.append(time.perf_counter() - start)
            if not found:
                raise SystemExit(f"{name}: checkpoint not found")
        return {"first": times[0], "second": times[1]}
    finally:
        close()


def _cold_reads(
    url: str, threads: dict[str, Conversation], samples: int
) -> dict[str, dict[int, tuple[float, float]]]:
    """Median first and second get_tuple of turn 1 and of turn N, per saver and turn index
    (0, -1): each sample a fresh child process that reads one checkpoint."""
    found: dict[str, dict[int, dict[str, list[float]]]] = {
        name: {index: {"first": [], "second": []} for index in (0, -1)} for name in threads
    }
    for sample in range(samples):
        names = list(threads) if sample % 2 == 0 else list(reversed(threads))
        for index in (0, -1):
            for name in names:
                done = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--cold-read",
                        name,
                        url,
                        json.dumps(threads[name].configs[index]),
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=300,
                )
                if done.returncode != 0:
                    raise RuntimeError(f"cold read by {name}: {done.stderr.strip()[-2000:]}")
                numbers = json.loads(done.stdout.strip().splitlines()[-1])
                for key in ("first", "second"):
                    found[name][index][key].append(numbers[key])
    return {
        name: {
            index: (statistics.median(times["first"]), statistics.median(times["second"]))
            for index, times in by_turn.items()
        }
        for name, by_turn in found.items()
    }


def _cold_rows(
    cold: dict[str, dict[int, tuple[float, float]]], turns: int, samples: int
) -> list[Row]:
    rows = []
    process = f"cold: fresh process that never saw the thread (median of {samples} each)"
    for index, label, limit in (
        (0, "turn 1", READ_TARGETS[0]),
        (-1, f"turn {turns}", READ_TARGETS[1]),
    ):
        for call in (0, 1):
            ours, theirs = cold[OURS][index][call], cold[THEIRS][index][call]
            first = call == 0
            which = "first" if first else "second"
            rows.append(
                Row(
                    f"get_tuple at {label}, {which} call in the process (ms)",
                    f"{ours * 1e3:.2f}",
                    f"{theirs * 1e3:.2f}",
                    f"{ours / theirs:.2f}x the time",
                    f"<= {limit:.1f}x" if first else "",
                    ours / theirs <= limit if first else None,
                    process,
                )
            )
    return rows


def run(
    *, rounds: int = 3, reads: int = 25, turns: int = TURNS, cold_samples: int = 7
) -> tuple[list[Row], str]:
    """Run every comparison; returns the rows and a description of the machine."""
    server = _server_url()
    dbname = f"toolkit_bench_lg_{os.getpid()}"
    url = make_conninfo(server, dbname=dbname)
    migrate(url)
    admin = psycopg.connect(url, autocommit=True)
    admin.execute(f"CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}")
    with psycopg.Connection.connect(
        url, autocommit=True, options=f"-c search_path={PG_SCHEMA}"
    ) as setup_conn:
        PostgresSaver(setup_conn).setup()  # type: ignore[arg-type]
    ours, close_ours = _open_saver(OURS, url)
    theirs, close_theirs = _open_saver(THEIRS, url)
    assert isinstance(ours, ToolkitCheckpointSaver) and isinstance(theirs, PostgresSaver)
    savers: dict[str, BaseCheckpointSaver[Any]] = {OURS: ours, THEIRS: theirs}
    rows: list[Row] = []
    try:
        # Storage: one thread each, in empty tables.
        threads = {
            name: Conversation(saver, f"bench-{uuid.uuid4().hex}") for name, saver in savers.items()
        }
        for conversation in threads.values():
            conversation.play(turns)
        admin.execute("VACUUM ANALYZE")
        our_bytes = _table_bytes(admin, "public", OUR_TABLES)
        their_bytes = _table_bytes(admin, PG_SCHEMA, THEIR_TABLES)
        ours_last = ours.get_tuple(threads[OURS].configs[-1])
        theirs_last = theirs.get_tuple(threads[THEIRS].configs[-1])
        assert ours_last is not None and theirs_last is not None
        assert ours_last.checkpoint["channel_values"] == theirs_last.checkpoint["channel_values"]

        # Reads of the first and the last checkpoint of those threads.
        read = _reads(savers, threads, reads)
        raw_savers: dict[str, BaseCheckpointSaver[Any]] = {
            OURS: ToolkitCheckpointSaver(ours.database, serde=RawLoads()),
            THEIRS: PostgresSaver(theirs.conn, serde=RawLoads()),
        }
        raw_read = _reads(raw_savers, threads, reads)
        cold = _cold_reads(url, threads, cold_samples)

        # Put throughput: whole threads, the savers alternating.
        def batch(name: str) -> Callable[[int], object]:
            return lambda _round: Conversation(savers[name], f"bench-{uuid.uuid4().hex}").play(
                turns
            )

        times = interleaved({OURS: batch(OURS), THEIRS: batch(THEIRS)}, rounds)
        speedup = 1 / paired_ratio(times[OURS], times[THEIRS])
        rows.append(
            Row(
                f"put, {turns}-turn thread (puts/s)",
                f"{turns / median(times[OURS]):,.0f}",
                f"{turns / median(times[THEIRS]):,.0f}",
                f"{speedup:.2f}x their rate",
                ">= 1.5x",
                speedup >= 1.5,
            )
        )
        rows.extend(_read_rows("get_tuple", read, turns))
        rows.extend(_read_rows("storage path of get_tuple", raw_read, turns))
        rows.extend(_cold_rows(cold, turns, cold_samples))
        rows.append(
            Row(
                f"table bytes after {turns} turns",
                f"{our_bytes / 1e6:.2f} MB",
                f"{their_bytes / 1e6:.2f} MB",
                f"{our_bytes / their_bytes:.3f}x",
                "<= 0.25x",
                our_bytes / their_bytes <= 0.25,
                "- (server-side size)",
            )
        )
    finally:
        close_ours()
        close_theirs()
        admin.close()
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    record_verdicts(rows)
    summary = machine_summary(
        {
            "rounds": str(rounds),
            "reads": str(reads),
            "warm rows": "one process: each saver reads the thread it wrote, on connections "
            "that ran every statement before",
            "load average at end": str(load_average()),
        }
    )
    return rows, summary


def record_verdicts(rows: list[Row]) -> None:
    """Note each targeted row's verdict for ``run.py``'s summary (its figure as printed)."""
    for row in rows:
        if row.ok is not None:
            measured = row.ratio or row.ours  # turn N / turn 1 is judged on ours alone
            record_verdict(
                "integrations", f"{row.case} ({row.process})", measured, row.target, row.ok
            )


def render(rows: list[Row]) -> str:
    def verdict(ok: bool | None) -> str:
        return "" if ok is None else ("yes" if ok else "NO")

    return markdown_table(
        ["case", "process", OURS, THEIRS, "ours vs theirs", "target", "met"],
        [[r.case, r.process, r.ours, r.theirs, r.ratio, r.target, verdict(r.ok)] for r in rows],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of whole threads")
    parser.add_argument("--reads", type=int, default=25, help="samples per get_tuple median")
    parser.add_argument("--turns", type=int, default=TURNS)
    parser.add_argument("--cold", type=int, default=7, help="fresh processes per saver")
    parser.add_argument("--cold-read", nargs=3, metavar=("SAVER", "URL", "CONFIG"))
    args = parser.parse_args()
    if args.cold_read:
        name, url, config = args.cold_read
        print(json.dumps(_cold_read(name, url, json.loads(config))))
        return
    rows, summary = run(
        rounds=args.rounds, reads=args.reads, turns=args.turns, cold_samples=args.cold
    )
    print(summary)
    print()
    print(render(rows))


if __name__ == "__main__":
    main()
