"""Benchmarks of toolkit.messaging against the real RabbitMQ and PostgreSQL.

Run from the repository root: ``tox -e bench``, ``python -m benchmarks.bench_messaging``
or ``python benchmarks/bench_messaging.py`` (``--help`` for options). It drops
and recreates its own database (``toolkit_bench_messaging`` unless ``--url``
or ``TOOLKIT_BENCH_URL`` names another) and declares its queues under a
prefix of its own, deleted afterwards. In one run:

1. outbox relay throughput: the relay publishing with pipelined confirms
   (``PipelinedPublisher``: SelectConnection, delivery-tag tracking) against
   the same relay publishing one message at a time through a BlockingChannel
   that waits for each confirm; target: at least 20x (RabbitMQ's guide
   reports 20-30x for batched confirms). The relay against the same
   pipelined publisher publishing the same number of messages with no
   database, in the same alternated rounds; target: at least 0.5x;
2. end-to-end latency from COMMIT to the handler, p50 and p99, with the
   relay woken by LISTEN/NOTIFY and with polling only (1 s interval);
3. 10,000 messages through relay and worker with the broker cut off in the
   middle (every connection reset, new ones refused for 2 s, through a
   loopback TCP proxy): 0 lost and 0 applied twice (the inbox absorbs
   redeliveries).

A missed target is printed, never turned into a failing exit code.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from benchmarks._common import machine_summary, markdown_table, record_verdict
from tests.support.tcp_proxy import TcpProxy
from toolkit.config import load_settings
from toolkit.db import Connection, Database
from toolkit.db.migrations import migrate
from toolkit.messaging import (
    AuditLog,
    Delivery,
    PipelinedPublisher,
    Publisher,
    Relay,
    Topology,
    Worker,
    inbox,
    outbox,
)
from toolkit.messaging.connection import close_quietly, connect
from toolkit.messaging.publisher import outgoing
from toolkit.messaging.topology import declare, delete
from toolkit.tenants import DEFAULT_TENANT

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/toolkit_bench_messaging"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"


@dataclass
class Row:
    case: str
    result: str
    baseline: str
    target: str
    met: bool | None

    def cells(self) -> list[str]:
        verdict = "-" if self.met is None else ("yes" if self.met else "NO")
        return [self.case, self.result, self.baseline, self.target, verdict]


def judged(rows: list[Row], row: Row, measured: str, target: str) -> None:
    """Add ``row``, a judged target, and note its verdict for run.py's summary."""
    rows.append(row)
    record_verdict("messaging", row.case, measured, target, row.met)


def drop_database(url: str) -> None:
    name = str(conninfo_to_dict(url)["dbname"])
    with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def event(n: int, **details: Any) -> AuditLog:
    return AuditLog(action="user.created", entity="user", details={"n": n, **details})


def purge(amqp: str, topology: Topology) -> None:
    connection = connect(amqp)
    try:
        channel = connection.channel()
        for name in topology.queue_names():
            channel.queue_purge(name)
    finally:
        close_quietly(connection)


def empty_outbox(db: Database) -> None:
    with db.connection() as conn:
        conn.execute("TRUNCATE outbox, inbox")


def fill_outbox(db: Database, count: int) -> None:
    with db.transaction() as tx:
        outbox.enqueue_many(tx, [event(n) for n in range(count)])


# 1. throughput ---------------------------------------------------------------


def bench_throughput(
    db: Database,
    amqp: str,
    topology: Topology,
    rounds: int,
    rows: list[Row],
    *,
    label: str = "",
    raw: bool = True,
) -> None:
    pipelined_n, blocking_n = 10_000, 1_000
    rates: dict[str, list[float]] = {"pipelined": [], "blocking": []}
    if raw:
        rates["alone"] = []  # the pipelined publisher with no database, in the same rounds
    publishers: dict[str, Any] = {
        "pipelined": PipelinedPublisher(amqp, topology, window=2000),
        "blocking": Publisher(amqp, topology),
    }
    publishers["alone"] = publishers["pipelined"]
    counts = {"pipelined": pipelined_n, "blocking": blocking_n, "alone": pipelined_n}
    messages = [outgoing(topology, event(n), tenant=DEFAULT_TENANT) for n in range(pipelined_n)]
    try:
        for round_index in range(rounds + 1):  # the first round warms up
            order = list(rates) if round_index % 2 == 0 else list(reversed(rates))
            for name in order:
                empty_outbox(db)
                purge(amqp, topology)
                if name == "alone":
                    started = time.perf_counter()
                    result = publishers[name].publish_batch(messages, timeout=120)
                    published = len(result.acked)
                    seconds = time.perf_counter() - started
                else:
                    fill_outbox(db, counts[name])
                    relay = Relay(
                        db,
                        amqp,
                        topology,
                        publisher=publishers[name],
                        batch_size=1000,
                        listen=False,
                    )
                    started = time.perf_counter()
                    published = relay.drain(timeout=120)
                    seconds = time.perf_counter() - started
                assert published == counts[name], (name, published)
                if round_index:
                    rates[name].append(published / seconds)
        if raw:
            purge(amqp, topology)
            started = time.perf_counter()
            result = publishers["blocking"].publish_batch(messages[:blocking_n], timeout=120)
            raw_blocking = len(result.acked) / (time.perf_counter() - started)
            purge(amqp, topology)
    finally:
        for name in ("pipelined", "blocking"):
            publishers[name].close()
    pipelined = statistics.median(rates["pipelined"])
    blocking = statistics.median(rates["blocking"])
    ratio = pipelined / blocking
    judged(
        rows,
        Row(
            f"outbox relay throughput (claim, publish, confirm, mark sent){label}",
            f"pipelined confirms: {pipelined:,.0f} msg/s",
            f"BlockingChannel, one confirm per message: {blocking:,.0f} msg/s",
            f">= 20x ({ratio:.1f}x)",
            ratio >= 20,
        ),
        f"{ratio:.1f}x",
        ">= 20x",
    )
    if not raw:
        return
    alone = statistics.median(rates["alone"])
    # Per round, so that a slow moment of the machine falls on both sides.
    ratios = [r / a for r, a in zip(rates["pipelined"], rates["alone"], strict=True)]
    relay_ratio = statistics.median(ratios)
    judged(
        rows,
        Row(
            "outbox relay against publishing alone (same publisher and broker, rounds "
            "alternated; the relay claims, publishes and marks 1,000-row batches, marking "
            "one beside the next claim and publish)",
            f"relay: {pipelined:,.0f} msg/s",
            f"pipelined publishing of the same messages, no database: {alone:,.0f} msg/s",
            f">= 0.5x ({relay_ratio:.2f}x)",
            relay_ratio >= 0.5,
        ),
        f"{relay_ratio:.2f}x",
        ">= 0.5x",
    )
    raw_ratio = alone / raw_blocking
    rows.append(
        Row(
            "publishing alone, no database",
            f"pipelined confirms: {alone:,.0f} msg/s",
            f"BlockingChannel, one confirm per message: {raw_blocking:,.0f} msg/s",
            f"none ({raw_ratio:.1f}x)",
            None,
        )
    )


# 2. latency --------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def _arrival_recorder(
    arrived: dict[str, float], done: threading.Event, count: int
) -> Callable[[Delivery], None]:
    def handle(delivery: Delivery) -> None:
        arrived[str(delivery.message_id)] = time.perf_counter()
        if len(arrived) >= count:
            done.set()

    return handle


def bench_latency(db: Database, amqp: str, topology: Topology, count: int, rows: list[Row]) -> None:
    for listen in (True, False):
        empty_outbox(db)
        purge(amqp, topology)
        committed: dict[str, float] = {}
        arrived: dict[str, float] = {}
        done = threading.Event()
        handle = _arrival_recorder(arrived, done, count)

        stop = threading.Event()
        relay = Relay(db, amqp, topology, listen=listen, poll_interval=1.0)
        worker = Worker(amqp, topology, {"audit.log": handle}, prefetch=50)
        threads = [
            threading.Thread(target=relay.run, args=(stop,), daemon=True),
            threading.Thread(target=worker.run, daemon=True),
        ]
        for thread in threads:
            thread.start()
        worker.ready.wait(10)
        time.sleep(0.5)
        for n in range(count):
            with db.transaction() as tx:
                message_id = outbox.enqueue(tx, event(n))
            committed[str(message_id)] = time.perf_counter()
            time.sleep(0.005 + (n % 7) * 0.001)
        done.wait(30)
        stop.set()
        worker.stop()
        for thread in threads:
            thread.join(10)
        relay.close()
        latencies = [(arrived[k] - committed[k]) * 1000 for k in committed if k in arrived]
        lost = count - len(latencies)
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        mode = "LISTEN/NOTIFY (1 s poll fallback)" if listen else "polling only, every 1 s"
        rows.append(
            Row(
                f"commit -> handler latency, {mode}",
                f"p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(latencies)} msgs"
                + (f", {lost} MISSING" if lost else "")
                + ")",
                "-",
                "none (NOTIFY should beat polling)",
                None,
            )
        )


# 3. broker cut off ----------------------------------------------------------------


def record_effect(tx: Connection, delivery: Delivery) -> None:
    tx.execute("INSERT INTO bench_effects (message_id) VALUES (%s)", (delivery.message_id,))


def bench_outage(
    db: Database, amqp_port: int, topology: Topology, total: int, rows: list[Row]
) -> None:
    empty_outbox(db)
    with db.connection() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_effects (message_id uuid NOT NULL)")
        conn.execute("TRUNCATE bench_effects")
    with TcpProxy(upstream_port=amqp_port) as proxy:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F"
        purge(url, topology)
        stop = threading.Event()
        relay = Relay(db, url, topology, batch_size=500, poll_interval=0.2, max_backoff=0.5)
        worker = Worker(
            url,
            topology,
            {"audit.log": inbox.transactional(db, "bench", record_effect)},
            prefetch=100,
            concurrency=4,
            max_reconnect_delay=0.5,
        )
        threads = [
            threading.Thread(target=relay.run, args=(stop,), daemon=True),
            threading.Thread(target=worker.run, daemon=True),
        ]
        for thread in threads:
            thread.start()
        started = time.perf_counter()
        ids: set[str] = set()
        per_tx = 500

        def applied() -> int:
            with db.connection() as conn:
                row = conn.execute("SELECT count(*) FROM bench_effects").fetchone()
                return int(row[0]) if row else 0

        for batch in range(total // per_tx):
            with db.transaction() as tx:
                new = outbox.enqueue_many(tx, [event(batch * per_tx + n) for n in range(per_tx)])
                ids |= {str(i) for i in new}
            if batch == total // per_tx // 2:
                while applied() < total // 4:
                    time.sleep(0.05)
                cut = proxy.cut_all()
                proxy.refuse_new()
                time.sleep(2.0)
                proxy.restore()
        deadline = time.monotonic() + 300
        while applied() < total and time.monotonic() < deadline:
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        time.sleep(1.0)  # let any late redelivery land
        stop.set()
        worker.stop()
        for thread in threads:
            thread.join(15)
        relay.close()
    with db.connection() as conn:
        counts = dict(
            conn.execute(
                "SELECT message_id::text, count(*) FROM bench_effects GROUP BY message_id"
            ).fetchall()
        )
        pending = outbox.stats(conn).pending
    lost = len(ids - set(counts))
    twice = sum(1 for c in counts.values() if c > 1)
    judged(
        rows,
        Row(
            f"{total:,} messages, broker cut off in the middle ({cut} connections reset, "
            "refused for 2 s)",
            f"{len(counts):,} applied in {seconds:.1f} s; {lost} lost, {twice} applied twice; "
            f"{worker.stats.duplicates} redeliveries absorbed by the inbox, "
            f"{relay.stats.broker_outages} relay backoffs, {pending} left in the outbox",
            "-",
            "0 lost, 0 applied twice",
            lost == 0 and twice == 0 and pending == 0,
        ),
        f"{lost} lost, {twice} applied twice, {pending} left in the outbox",
        "0 lost, 0 applied twice, 0 left",
    )


def run(
    url: str, amqp: str, *, rounds: int = 3, latency_count: int = 300, outage_total: int = 10_000
) -> list[Row]:
    """Run the three benchmarks; returns the table's rows."""
    drop_database(url)
    migrate(url)
    topology = Topology(prefix=f"bench-{uuid.uuid4().hex[:8]}-", queues=("audit.log",))
    connection = connect(amqp)
    declare(connection, topology)
    close_quietly(connection)
    rows: list[Row] = []
    settings = load_settings(database_url=url, pool_min_size=1, pool_max_size=8)
    try:
        with Database(settings) as db:
            bench_throughput(db, amqp, topology, rounds, rows)
            port = int(amqp.rsplit("@", maxsplit=1)[-1].split("/", maxsplit=1)[0].split(":")[1])
            with TcpProxy(upstream_port=port) as proxy:
                proxy.add_latency(0.0005)
                bench_throughput(
                    db,
                    f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F",
                    topology,
                    rounds,
                    rows,
                    label=", broker 1 ms round trip away (proxy)",
                    raw=False,
                )
            bench_latency(db, amqp, topology, latency_count, rows)
            port = int(amqp.rsplit("@", maxsplit=1)[-1].split("/", maxsplit=1)[0].split(":")[1])
            bench_outage(db, port, topology, outage_total, rows)
    finally:
        connection = connect(amqp)
        delete(connection, topology)
        close_quietly(connection)
        drop_database(url)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("TOOLKIT_BENCH_URL", DEFAULT_URL))
    parser.add_argument("--amqp-url", default=os.environ.get("TOOLKIT_AMQP_URL", DEFAULT_AMQP))
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds per contender")
    parser.add_argument("--latency-count", type=int, default=300)
    parser.add_argument("--outage-total", type=int, default=10_000)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    rows = run(
        args.url,
        args.amqp_url,
        rounds=args.rounds,
        latency_count=args.latency_count,
        outage_total=args.outage_total,
    )
    print("toolkit.messaging benchmark")
    print(
        machine_summary(
            {
                "load before/after": f"{load_before:.1f}/{os.getloadavg()[0]:.1f}",
                "runtime": f"{time.perf_counter() - started:.0f} s",
            }
        )
    )
    print()
    print(
        markdown_table(["case", "toolkit", "baseline", "target", "met"], [r.cells() for r in rows])
    )
    missed = [row.case for row in rows if row.met is False]
    if missed:
        print("\ntargets missed: " + "; ".join(missed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
