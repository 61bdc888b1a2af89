"""Retention without bloat: the partitioned outbox beside the unpartitioned one.

Run from the repository root: ``tox -e bench -- retention``, ``python -m
benchmarks.bench_retention`` or ``python benchmarks/bench_retention.py``
(``--help`` for options). It drops and recreates two databases of its own:
one migrated fully (the outbox partitioned by time, migration 0011), one
migrated up to the migration before it (today's unpartitioned outbox drained
with ``SKIP LOCKED``); its queue is declared under a prefix of its own,
purged as it goes and deleted afterwards.

On each database a REPEATABLE READ transaction takes a snapshot first and
stays open the whole run, so vacuum can remove no row version the relay
leaves behind. Then ``--messages`` messages (1,000,000 by default,
``TOOLKIT_BENCH_RETENTION_MESSAGES`` for a quick run) go through the outbox
and the relay in chunks, the two databases taking turns chunk by chunk (the
machine's load falls on both alike). On the partitioned one, partitions are
``--partition-seconds`` wide with no retention (a partition is dropped once
its range has ended and every row of it is sent), and ``toolkit maintain``
runs shortly after each partition boundary, as a deployment schedules it (a
thread wakes ``--maintain-lag`` seconds past each boundary: longer than any
transaction writing the outbox takes, far shorter than a partition). A
partition whose range ended lingers, full of dead row versions, beside the
one being filled for ``--maintain-lag`` seconds, so the peak is one
partition's worth plus what the relay sends during the lag. The lag cannot
be shorter than the longest writing transaction: one that began before the
boundary may still insert into the partition that ended, and a detach under
it fails that insert (no partition). Printed per tenth of the run: the relay's
throughput (messages per second of relay time) and the outbox's dead tuples
(``n_dead_tup`` summed over the partitions, peak of the samples taken after
each drain, when the most rows are sent, and just before each maintain
run, when an ended partition still waits beside the new one).

Targets: on the partitioned outbox, the throughput of the last tenth at
least 0.9x the first, and in every tenth the peak of dead tuples no more
than one partition's worth (the largest partition seen in that tenth). A
missed target is printed, never turned into a failing exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from yoyo import get_backend, read_migrations

from benchmarks._common import machine_summary, markdown_table, record_verdict
from benchmarks.bench_messaging import DEFAULT_AMQP, drop_database, event, purge
from toolkit.config import load_settings
from toolkit.db import Database
from toolkit.db.migrations import _yoyo_url, migrate, rollback
from toolkit.db.partitions import maintain
from toolkit.db.registry import package_directory
from toolkit.messaging import PipelinedPublisher, Relay, Topology, outbox
from toolkit.messaging.connection import close_quietly, connect
from toolkit.messaging.topology import declare, delete

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/toolkit_bench_retention"
PARTITIONING = "0011.outbox-partitions"

STATS_DELAY = 1.2
"""Seconds the backends' statistics take to reach the shared counters (n_dead_tup)."""

DEAD_TUPLES = """
SELECT coalesce(sum(s.n_dead_tup), 0)::bigint FROM pg_stat_user_tables AS s
WHERE s.relid = 'public.outbox'::regclass
    OR s.relid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'public.outbox'::regclass)
"""
LARGEST_PARTITION = """
SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM outbox GROUP BY tableoid) AS p
"""


def migrate_before_partitioning(url: str) -> None:
    """Create ``url``'s database with every migration before 0011: today's outbox."""
    drop_database(url)
    migrate(url)
    rollback(url, None)
    backend = get_backend(_yoyo_url(url))
    try:
        wanted = read_migrations(str(package_directory("migrations"))).filter(
            lambda m: m.id < PARTITIONING
        )
        with backend.lock():
            backend.apply_migrations(backend.to_apply(wanted))
    finally:
        backend.connection.close()


@dataclass
class Contender:
    """One outbox under the workload, with its long transaction and its samples."""

    name: str
    url: str
    partitioned: bool
    relay_seconds: float = 0.0
    maintain_seconds: float = 0.0
    step_seconds: list[float] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)
    largest: list[int] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    peak_dead: int = 0
    peak_largest: int = 0
    peaks_dead: list[int] = field(default_factory=list)
    peaks_largest: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def sample(contender: Contender) -> None:
    """Record the dead tuples, the largest partition and the partition count now."""
    with psycopg.connect(contender.url, autocommit=True) as conn:
        dead = conn.execute(DEAD_TUPLES).fetchone()
        largest = conn.execute(LARGEST_PARTITION).fetchone()
        count = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'public.outbox'::regclass"
        ).fetchone()
    contender.dead.append(int(dead[0]) if dead else 0)
    contender.largest.append(int(largest[0]) if largest else 0)
    contender.partitions.append(int(count[0]) if count else 0)


def peek(contender: Contender) -> None:
    """Note the largest partition and the dead tuples now, the step's peaks."""
    with psycopg.connect(contender.url, autocommit=True) as conn:
        dead = conn.execute(DEAD_TUPLES).fetchone()
        largest = conn.execute(LARGEST_PARTITION).fetchone()
    with contender.lock:
        contender.peak_dead = max(contender.peak_dead, int(dead[0]) if dead else 0)
        contender.peak_largest = max(contender.peak_largest, int(largest[0]) if largest else 0)


class BoundaryMaintainer:
    """Runs ``maintain`` on a thread of its own ``lag`` seconds past each partition boundary
    (a cron entry just after each boundary, in a deployment), until stopped."""

    def __init__(self, contender: Contender, width: float, lag: float) -> None:
        self.contender = contender
        self.width = width
        self.lag = lag
        self.runs = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="maintain", daemon=True)

    def start(self) -> BoundaryMaintainer:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            boundary = (now // self.width + 1) * self.width
            # The other peak, sampled just before the run: the partition that ended, not
            # dropped yet, beside the new one (after the 1.2 s the backends' statistics
            # take to reach the shared counters).
            if self._stop.wait(max(0.0, boundary + self.lag - STATS_DELAY - now)):
                return
            time.sleep(STATS_DELAY)
            peek(self.contender)
            started = time.perf_counter()
            try:
                maintain(self.contender.url)
            except BaseException as exc:  # reported by stop()
                self.error = exc
                return
            self.contender.maintain_seconds += time.perf_counter() - started
            self.runs += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        if self.error is not None:
            raise RuntimeError(f"maintain failed: {self.error!r}")


def run(
    url: str,
    amqp: str,
    *,
    messages: int,
    chunk: int,
    partition_seconds: int,
    maintain_lag: float = 3.0,
) -> tuple[list[list[str]], list[str]]:
    """Run the workload on both outboxes; returns the table's rows and the verdict lines."""
    partitioned = Contender("partitioned", make_conninfo(url, dbname=_name(url, "part")), True)
    flat = Contender("unpartitioned", make_conninfo(url, dbname=_name(url, "flat")), False)
    drop_database(partitioned.url)
    migrate(partitioned.url)
    migrate_before_partitioning(flat.url)
    with psycopg.connect(partitioned.url, autocommit=True) as conn:
        conn.execute(
            "UPDATE toolkit_partitions.policy SET partition_interval = make_interval(secs => %s),"
            " premake = 60, retention = '0' WHERE parent = 'public.outbox'",
            [partition_seconds],
        )
        # The migration's day-wide partitions (empty) make way for narrow ones.
        for (name,) in conn.execute(
            "SELECT partition::text FROM toolkit_partitions.partitions('public.outbox')"
        ).fetchall():
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.SQL(name)))
    maintain(partitioned.url)
    topology = Topology(prefix=f"bench-retention-{uuid.uuid4().hex[:8]}-", queues=("audit.log",))
    connection = connect(amqp)
    declare(connection, topology)
    close_quietly(connection)
    holders: list[psycopg.Connection[Any]] = []
    step = max(chunk, messages // 10 // chunk * chunk)  # a tenth, in whole chunks
    maintainer = BoundaryMaintainer(partitioned, partition_seconds, maintain_lag)
    try:
        for contender in (partitioned, flat):
            # The long transaction: a snapshot taken and held to the end (its xmin holds
            # back vacuum in the whole database); it locks no table.
            holder = psycopg.connect(contender.url)
            holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            holder.execute("SELECT txid_current_snapshot()").fetchone()
            holders.append(holder)
        settings = {
            c.name: load_settings(database_url=c.url, pool_min_size=1, pool_max_size=2)
            for c in (partitioned, flat)
        }
        with (
            Database(settings["partitioned"]) as part_db,
            Database(settings["unpartitioned"]) as flat_db,
        ):
            relays = {
                c.name: Relay(
                    db,
                    amqp,
                    topology,
                    publisher=PipelinedPublisher(amqp, topology, window=2000),
                    batch_size=1000,
                    listen=False,
                )
                for c, db in ((partitioned, part_db), (flat, flat_db))
            }
            databases = {"partitioned": part_db, "unpartitioned": flat_db}
            maintainer.start()
            pushed = 0
            step_start = {c.name: 0.0 for c in (partitioned, flat)}
            while pushed < messages:
                size = min(chunk, messages - pushed)
                order = (partitioned, flat) if (pushed // chunk) % 2 == 0 else (flat, partitioned)
                for contender in order:
                    db = databases[contender.name]
                    with db.transaction() as tx:
                        outbox.enqueue_many(tx, [event(n) for n in range(pushed, pushed + size)])
                    started = time.perf_counter()
                    published = relays[contender.name].drain(timeout=600)
                    contender.relay_seconds += time.perf_counter() - started
                    if published != size:
                        raise RuntimeError(f"{contender.name}: {published} of {size} published")
                    # The peak: every row of the turn sent, nothing of it dropped yet.
                    peek(contender)
                purge(amqp, topology)
                pushed += size
                if pushed % step == 0 or pushed == messages:
                    time.sleep(STATS_DELAY)
                    for contender in (partitioned, flat):
                        contender.step_seconds.append(
                            contender.relay_seconds - step_start[contender.name]
                        )
                        step_start[contender.name] = contender.relay_seconds
                        sample(contender)
                        with contender.lock:
                            contender.peaks_dead.append(
                                max(contender.peak_dead, contender.dead[-1])
                            )
                            contender.peaks_largest.append(
                                max(contender.peak_largest, contender.largest[-1])
                            )
                            contender.peak_dead = contender.peak_largest = 0
                    print(
                        f"  {pushed:>9,} pushed: "
                        + ", ".join(
                            f"{c.name} {step / c.step_seconds[-1]:,.0f} msg/s "
                            f"dead {c.peaks_dead[-1]:,}"
                            for c in (partitioned, flat)
                        ),
                        flush=True,
                    )
            for relay in relays.values():
                relay.close()
    finally:
        maintainer.stop()
        for holder in holders:
            holder.rollback()
            holder.close()
        connection = connect(amqp)
        delete(connection, topology)
        close_quietly(connection)
        drop_database(partitioned.url)
        drop_database(flat.url)
    rows = []
    for index in range(len(partitioned.step_seconds)):
        rows.append(
            [
                f"{(index + 1) * step:,}",
                f"{step / partitioned.step_seconds[index]:,.0f}",
                f"{partitioned.peaks_dead[index]:,}",
                f"{partitioned.peaks_largest[index]:,}",
                f"{partitioned.partitions[index]}",
                f"{step / flat.step_seconds[index]:,.0f}",
                f"{flat.peaks_dead[index]:,}",
            ]
        )
    first = step / partitioned.step_seconds[0]
    last = step / partitioned.step_seconds[-1]
    flat_ratio = (step / flat.step_seconds[-1]) / (step / flat.step_seconds[0])
    # Judged tenth by tenth: the peak of dead tuples against the largest partition of the
    # same tenth (a peak of the whole run against the largest partition of the whole run
    # would let one big partition late hide a two-partition peak early).
    worst = max(
        dead / max(largest, 1)
        for dead, largest in zip(partitioned.peaks_dead, partitioned.peaks_largest, strict=True)
    )
    record_verdict(
        "retention",
        "partitioned outbox: last tenth's throughput / first tenth's",
        f"{last / first:.2f}x",
        ">= 0.90x",
        last / first >= 0.9,
    )
    record_verdict(
        "retention",
        "partitioned outbox: dead tuples, worst tenth / one partition's worth",
        f"{worst:.2f}x",
        "<= 1.00x in every tenth",
        worst <= 1,
    )
    verdicts = [
        f"partitioned: last tenth {last:,.0f} msg/s = {last / first:.2f}x the first "
        f"(target >= 0.90x: {'met' if last / first >= 0.9 else 'NOT met'}); "
        f"unpartitioned: {flat_ratio:.2f}x",
        f"partitioned: dead tuples at most {max(partitioned.peaks_dead):,}; in the worst tenth "
        f"{worst:.2f}x one partition's worth (the largest partition of that tenth; target "
        f"<= 1.00x in every tenth: {'met' if worst <= 1 else 'NOT met'}); "
        f"unpartitioned: {max(flat.peaks_dead):,}",
        f"relay time: partitioned {partitioned.relay_seconds:.0f} s "
        f"(maintain ran {maintainer.runs} times beside it, {partitioned.maintain_seconds:.0f} s), "
        f"unpartitioned {flat.relay_seconds:.0f} s",
    ]
    return rows, verdicts


def _name(url: str, suffix: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    return f"{conninfo_to_dict(url)['dbname']}_{suffix}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("TOOLKIT_BENCH_URL", DEFAULT_URL))
    parser.add_argument("--amqp-url", default=os.environ.get("TOOLKIT_AMQP_URL", DEFAULT_AMQP))
    parser.add_argument(
        "--messages",
        type=int,
        default=int(os.environ.get("TOOLKIT_BENCH_RETENTION_MESSAGES", "1000000")),
        help="messages through each outbox",
    )
    parser.add_argument("--chunk", type=int, default=10_000, help="messages per turn")
    parser.add_argument(
        "--partition-seconds", type=int, default=10, help="width of a partition in seconds"
    )
    parser.add_argument(
        "--maintain-lag",
        type=float,
        default=3.0,
        help="seconds after each partition boundary that maintain runs: longer than any "
        "transaction that writes the outbox (one still open could write into the partition "
        "that just ended, and a partition detached under it fails its insert)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    rows, verdicts = run(
        args.url,
        args.amqp_url,
        messages=args.messages,
        chunk=args.chunk,
        partition_seconds=args.partition_seconds,
        maintain_lag=args.maintain_lag,
    )
    print("outbox retention benchmark (a REPEATABLE READ transaction open throughout)")
    print(
        machine_summary(
            {
                "messages": f"{args.messages:,} per outbox, {args.chunk:,} per turn",
                "partitions": f"{args.partition_seconds} s wide, dropped once sent, "
                f"maintain {args.maintain_lag} s after each boundary",
                "load before/after": f"{load_before:.1f}/{os.getloadavg()[0]:.1f}",
                "runtime": f"{time.perf_counter() - started:.0f} s",
            }
        )
    )
    print()
    print(
        markdown_table(
            [
                "messages",
                "partitioned msg/s",
                "partitioned dead tuples (peak)",
                "largest partition (peak)",
                "partitions",
                "unpartitioned msg/s",
                "unpartitioned dead tuples (peak)",
            ],
            rows,
        )
    )
    print()
    for line in verdicts:
        print(f"- {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
