"""Benchmark of the toolkit's reads through PgBouncer (transaction mode) beside direct.

Run from the repository root: ``tox -e bench -- pgbouncer``, ``python -m
benchmarks.bench_pgbouncer`` or ``python benchmarks/bench_pgbouncer.py``
(``--help`` for options). It drops and recreates its own database
(``toolkit_bench_pgbouncer`` unless ``--url`` or ``TOOLKIT_BENCH_PGBOUNCER_URL``
names another), seeds it as bench_core does (100,000 agents), starts a
private PgBouncer 1.18 in transaction mode on a free loopback port in front
of the same server (as the ``postgres`` user; stopped at the end), and times,
interleaved:

* ``agents.get`` by id, and ``agents.list`` of 100 filtered by type;
* for: the toolkit direct with today's default (psycopg prepares after 5
  runs), the toolkit direct with ``TOOLKIT_PREPARE_THRESHOLD=off``, and the
  toolkit through PgBouncer with ``off`` (what a pooler needs);
* each contender holds one pooled connection for its loop, as in bench_core.

The ratio is the median over rounds of contender time / direct-default time
in the same round (above 1 is slower). Nothing here is a target: the figures
say what the pooler's extra hop and the unprepared statements cost.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: make the repository root (toolkit and benchmarks) importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from benchmarks._common import (
    interleaved,
    load_average,
    machine_summary,
    markdown_table,
    median,
    paired_ratio,
)
from benchmarks.bench_core import PAGE, TYPES, drop_database, seed
from tests.reliability.private_servers import pgbouncer_available, private_pgbouncer
from toolkit.config import load_settings
from toolkit.db import Database
from toolkit.db.migrations import migrate
from toolkit.repositories import agents

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/toolkit_bench_pgbouncer"

DIRECT = "toolkit direct, prepare_threshold=5 (default)"
DIRECT_OFF = "toolkit direct, prepare_threshold=off"
POOLED_OFF = "toolkit through PgBouncer (transaction mode), prepare_threshold=off"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("TOOLKIT_BENCH_PGBOUNCER_URL", DEFAULT_URL),
        help="database to drop, create, fill and drop again (default: %(default)s)",
    )
    parser.add_argument("--get-batch", type=int, default=300)
    parser.add_argument("--list-batch", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=20)
    return parser.parse_args(argv)


@contextmanager
def held_connections(urls: dict[str, tuple[str, str]]) -> Iterator[dict[str, Any]]:
    """One pooled connection per contender (name -> (url, prepare_threshold)), held throughout."""
    with ExitStack() as stack:
        held = {}
        for name, (url, threshold) in urls.items():
            settings = load_settings(
                database_url=url,
                pool_max_size=2,
                statement_timeout_ms=0,  # PgBouncer 1.18 refuses the options parameter
                prepare_threshold=threshold,
            )
            db = stack.enter_context(Database(settings, warn_if_privileged=False))
            held[name] = stack.enter_context(db.connection())
        yield held


def timed(
    held: dict[str, Any], rounds: int, work: Callable[[Any, int], None]
) -> dict[str, list[float]]:
    contenders = {name: (lambda i, conn=conn: work(conn, i)) for name, conn in held.items()}
    return interleaved(contenders, rounds)


def rows_for(operation: str, times: dict[str, list[float]], batch: int) -> list[list[str]]:
    return [
        [
            operation,
            name,
            f"{batch / median(times[name]):,.0f}",
            f"{paired_ratio(times[name], times[DIRECT]):.2f}",
        ]
        for name in times
    ]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not pgbouncer_available():
        print("pgbouncer, root and the postgres user are needed: apt-get install -y pgbouncer")
        return
    started = time.perf_counter()
    load_before = load_average()
    drop_database(args.url)
    migrate(args.url)
    params = conninfo_to_dict(args.url)
    table: list[list[str]] = []
    try:
        with Database(load_settings(database_url=args.url), warn_if_privileged=False) as db:
            ids = seed(db, args.url, random.Random(0))
        with private_pgbouncer(
            str(params.get("host", "127.0.0.1")), int(params.get("port", 5432))
        ) as bouncer:
            through = make_conninfo(args.url, host="127.0.0.1", port=bouncer.port)
            urls = {
                DIRECT: (args.url, "5"),
                DIRECT_OFF: (args.url, "off"),
                POOLED_OFF: (through, "off"),
            }
            rng = random.Random(1)
            batches = [rng.sample(ids, args.get_batch) for _ in range(args.rounds + 1)]

            def get(conn: Any, round_index: int) -> None:
                for key in batches[round_index]:
                    agents.get(conn, key)

            def list_page(conn: Any, round_index: int) -> None:
                for n in range(args.list_batch):
                    agents.list(conn, {"type": TYPES[(round_index + n) % len(TYPES)]}, limit=PAGE)

            with held_connections(urls) as held:
                table += rows_for("get-by-id", timed(held, args.rounds, get), args.get_batch)
                table += rows_for("list-100", timed(held, args.rounds, list_page), args.list_batch)
    finally:
        drop_database(args.url)
    print("# toolkit reads through PgBouncer\n")
    print(
        machine_summary(
            {
                "load average (1 min) before / after": f"{load_before} / {load_average()}",
                "runtime": f"{time.perf_counter() - started:.0f} s",
            }
        )
    )
    print(
        f"\n- get-by-id: {args.get_batch} random ids per round; list-100: {args.list_batch} "
        f"pages per round, WHERE type = ... ORDER BY created_at, id LIMIT {PAGE}; "
        f"{args.rounds} rounds after a warm-up round, contenders in rotating order."
        "\n- ratio: median over rounds of contender time / direct-default time (above 1 is "
        "slower)."
    )
    print()
    print(markdown_table(["operation", "contender", "ops/s", "time ratio vs direct"], table))


if __name__ == "__main__":
    main()
