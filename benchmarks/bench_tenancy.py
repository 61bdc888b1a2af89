"""Benchmark of row level security: the toolkit's reads with the tenant policies on and off.

Run from the repository root: ``tox -e bench -- tenancy``, ``python -m
benchmarks.bench_tenancy`` or ``python benchmarks/bench_tenancy.py``
(``--help`` for options). It drops and recreates its own database
(``toolkit_bench_tenancy`` unless ``--url`` or ``TOOLKIT_BENCH_TENANCY_URL``
names another), migrates it, seeds two tenants of 100,000 agents each, and
times, as an application login (a member of toolkit_app, no BYPASSRLS,
owning nothing) in ``Database.transaction(tenant=...)``:

* ``agents.get`` by id, and ``agents.list`` of 100 filtered by type;
* each with one transaction per call, and with a whole batch in one
  transaction (where a statement's own cost, the policies' included, weighs
  the most).

Like with like: both sides of a pair are the same function on the same
connection, role and tenant, against the same table and the same rows; the
only difference is the table's row level security, enabled (the policies
``tenant_id = (SELECT public.toolkit_tenant())`` apply, forced) or disabled
(``ALTER TABLE agents DISABLE ROW LEVEL SECURITY``, run untimed before each
batch that needs it, and after it a check that the application role does
see every tenant's rows through a query without the toolkit's tenant
predicate). The superuser, which bypasses the policies, is not the "off"
side: it cannot run tenant-scoped work at all, so its path would differ in
more than the policies. Sides alternate batch by batch; the ratio is the
median over rounds of on-time / off-time in the same round (target <= 1.05).
A missed target is printed, never turned into a failing exit code.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: make the repository root (toolkit and benchmarks) importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from benchmarks._common import (
    cpu_count,
    interleaved,
    load_average,
    machine_summary,
    markdown_table,
    median,
    paired_ratio,
    record_verdict,
)
from toolkit.config import load_settings
from toolkit.db import Database
from toolkit.db.migrations import migrate
from toolkit.db.tenancy import TENANT_SETTING
from toolkit.repositories import agents, users

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/toolkit_bench_tenancy"
TENANTS = (
    uuid.UUID("0a0a0a0a-0000-4000-8000-00000000000a"),
    uuid.UUID("0b0b0b0b-0000-4000-8000-00000000000b"),
)
MEASURED = TENANTS[0]
"""The tenant whose reads are timed; the other's rows share the table and its indexes."""
TYPES = tuple(f"type-{n:02d}" for n in range(20))
OWNERS = 50
PAGE = 100
TARGET = 1.05

ON, OFF = "policies on", "policies off"
SEES_THE_OTHER_TENANT = "SELECT EXISTS (SELECT FROM agents WHERE tenant_id = %s)"
PER_CALL, PER_BATCH = "a transaction per call", "the batch in one transaction"


@dataclass(frozen=True)
class Scale:
    """How much work the run does (about a minute on 2 quiet CPUs, seeding included).

    Many short rounds rather than a few long ones: each round pairs the two sides seconds
    apart, so load that comes and goes (other work on the machine) mostly cancels out.
    """

    rows_per_tenant: int = 100_000
    get_batch: int = 200
    get_rounds: int = 40
    list_batch: int = 10
    list_rounds: int = 40


QUICK = Scale(rows_per_tenant=5_000, get_batch=100, get_rounds=3, list_batch=10, list_rounds=3)
"""``--quick``: a smoke run that checks every path, too small to judge the target."""


def drop_database(url: str) -> None:
    name = str(conninfo_to_dict(url)["dbname"])
    with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True) as conn:
        statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(statement.format(sql.Identifier(name)))


def seed(admin: psycopg.Connection[Any], scale: Scale, rng: random.Random) -> list[uuid.UUID]:
    """Both tenants' owners (through the toolkit) and agents (COPY), as the superuser with
    each tenant set; returns the measured tenant's agent ids."""
    start = datetime(2024, 1, 1, tzinfo=UTC)
    columns = "owner_id, name, type, description, config, is_active, created_at, updated_at"
    for number, tenant in enumerate(TENANTS):
        admin.execute("INSERT INTO tenants (id, name) VALUES (%s, %s)", [tenant, f"t{number}"])
        with admin.transaction():
            admin.execute(
                "SELECT pg_catalog.set_config(%s, %s, true)", [TENANT_SETTING, str(tenant)]
            )
            owners = [
                users.create(
                    admin, {"email": f"owner{n}@t{number}.bench.test", "display_name": f"O{n}"}
                ).id
                for n in range(OWNERS)
            ]
            # Distinct created_at values, so a page's order is not decided by ids alone.
            with admin.cursor() as cur, cur.copy(f"COPY agents ({columns}) FROM STDIN") as copy:
                for n in range(scale.rows_per_tenant):
                    at = start + timedelta(seconds=n, microseconds=rng.randrange(1_000_000))
                    config = Jsonb({"model": f"model-{n % 7}", "temperature": 0.2, "tools": []})
                    description = f"seeded agent {n}" if n % 3 else None
                    owner, agent_type = rng.choice(owners), rng.choice(TYPES)
                    copy.write_row(
                        (owner, f"agent {n}", agent_type, description, config, n % 10 != 0, at, at)
                    )
    admin.execute("VACUUM (ANALYZE) agents")
    rows = admin.execute("SELECT id FROM agents WHERE tenant_id = %s", [MEASURED]).fetchall()
    return [row[0] for row in rows]


@contextmanager
def application_role(admin: psycopg.Connection[Any]) -> Iterator[str]:
    """A LOGIN member of toolkit_app made for this run (roles are cluster-wide), dropped after."""
    name = sql.Identifier(f"toolkit_bench_app_{os.getpid()}")
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE toolkit_app").format(name))
    try:
        yield name.as_string(admin).strip('"')
    finally:
        admin.execute(sql.SQL("DROP OWNED BY {}").format(name))
        admin.execute(sql.SQL("DROP ROLE {}").format(name))


class Policies:
    """Row level security on agents, switched between batches (untimed), each switch proved:
    the application role sees the other tenant's rows through a query without the toolkit's
    tenant predicate exactly when the policies are off."""

    def __init__(self, admin: psycopg.Connection[Any], db: Database) -> None:
        self.admin, self.db = admin, db

    def set(self, on: bool) -> None:
        verb = sql.SQL("ENABLE" if on else "DISABLE")
        self.admin.execute(sql.SQL("ALTER TABLE agents {} ROW LEVEL SECURITY").format(verb))
        with self.db.transaction(tenant=MEASURED) as tx:
            row = tx.execute(SEES_THE_OTHER_TENANT, [TENANTS[1]]).fetchone()
        assert row is not None and row[0] is not on, f"policies {'on' if on else 'off'}: {row}"


class ServerCpu:
    """On-CPU time of the benchmark's server backend (``/proc/<pid>/schedstat``), when the
    server runs on this machine and its process is readable; else unknown.

    Unlike wall time, it leaves out time spent waiting for a CPU, so it holds steady when
    other work shares the machine: the policies' own cost, measured where they run.
    """

    def __init__(self, backend_pid: int) -> None:
        self.path = Path(f"/proc/{backend_pid}/schedstat")
        self.known = self.read() is not None

    def read(self) -> int | None:
        """Nanoseconds the backend has run on a CPU so far, or None."""
        try:
            return int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


@dataclass
class Result:
    """One operation in one unit of work: both sides' rates and their paired ratios."""

    operation: str
    unit: str
    on_per_second: float
    off_per_second: float
    ratio: float
    on_cpu: float | None
    """The server backend's median CPU microseconds per call, policies on (None: unknown)."""
    off_cpu: float | None
    cpu_ratio: float | None

    @property
    def met(self) -> bool:
        return self.ratio <= TARGET

    def cells(self) -> list[str]:
        cpu = "n/a"
        if self.on_cpu is not None and self.off_cpu is not None and self.cpu_ratio is not None:
            cpu = f"{self.on_cpu:.1f} / {self.off_cpu:.1f} ({self.cpu_ratio:.3f})"
        return [
            self.operation,
            self.unit,
            f"{self.on_per_second:,.0f}",
            f"{self.off_per_second:,.0f}",
            f"{self.ratio:.3f}",
            cpu,
            f"<= {TARGET:.2f}x",
            f"{'yes' if self.met else 'NO'} ({self.ratio:.3f}x)",
        ]


def measure(
    operation: str,
    units: dict[str, Callable[[int], object]],
    batch: int,
    rounds: int,
    *,
    policies: Policies,
    server: ServerCpu,
) -> list[Result]:
    """Each unit's batch with the policies on and off, interleaved; one Result per unit."""
    cpu: dict[str, list[float]] = {}

    def counted(name: str, run: Callable[[int], object]) -> Callable[[int], None]:
        def batch_of_calls(round_index: int) -> None:
            before = server.read()
            run(round_index)
            after = server.read()
            if before is not None and after is not None:
                cpu.setdefault(name, []).append((after - before) / batch / 1000)

        return batch_of_calls

    contenders = {
        f"{unit}, {state}": counted(f"{unit}, {state}", run)
        for unit, run in units.items()
        for state in (ON, OFF)
    }
    times = interleaved(
        contenders, rounds, before_each=lambda name: policies.set(name.endswith(ON))
    )
    results = []
    for unit in units:
        on, off = f"{unit}, {ON}", f"{unit}, {OFF}"
        on_cpu, off_cpu = cpu.get(on, [])[-rounds:], cpu.get(off, [])[-rounds:]  # no warm-up
        known = server.known and len(on_cpu) == len(off_cpu) == rounds
        results.append(
            Result(
                operation,
                unit,
                batch / median(times[on]),
                batch / median(times[off]),
                paired_ratio(times[on], times[off]),
                median(on_cpu) if known else None,
                median(off_cpu) if known else None,
                paired_ratio(on_cpu, off_cpu) if known else None,
            )
        )
    return results


def bench_get(
    db: Database, ids: Sequence[uuid.UUID], scale: Scale, policies: Policies, server: ServerCpu
) -> list[Result]:
    # The same random ids for both sides within a round; new ones each round.
    rng = random.Random(1)
    batches = [rng.sample(ids, scale.get_batch) for _ in range(scale.get_rounds + 1)]

    def per_call(round_index: int) -> None:
        for key in batches[round_index]:
            with db.transaction(tenant=MEASURED) as tx:
                agents.get(tx, key)

    def per_batch(round_index: int) -> None:
        with db.transaction(tenant=MEASURED) as tx:
            for key in batches[round_index]:
                agents.get(tx, key)

    units = {PER_CALL: per_call, PER_BATCH: per_batch}
    return measure(
        "get-by-id", units, scale.get_batch, scale.get_rounds, policies=policies, server=server
    )


def bench_list(db: Database, scale: Scale, policies: Policies, server: ServerCpu) -> list[Result]:
    # Consecutive calls ask for different types, as a real client would.
    def types(round_index: int) -> Iterator[str]:
        for n in range(scale.list_batch):
            yield TYPES[(round_index + n) % len(TYPES)]

    def per_call(round_index: int) -> None:
        for agent_type in types(round_index):
            with db.transaction(tenant=MEASURED) as tx:
                agents.list(tx, {"type": agent_type}, limit=PAGE)

    def per_batch(round_index: int) -> None:
        with db.transaction(tenant=MEASURED) as tx:
            for agent_type in types(round_index):
                agents.list(tx, {"type": agent_type}, limit=PAGE)

    units = {PER_CALL: per_call, PER_BATCH: per_batch}
    return measure(
        "list-100", units, scale.list_batch, scale.list_rounds, policies=policies, server=server
    )


def same_answers(db: Database, ids: Sequence[uuid.UUID], policies: Policies) -> None:
    """Both sides return the same rows: the comparison is of the same work."""
    answers: dict[bool, list[list[uuid.UUID]]] = {}
    for on in (True, False):
        policies.set(on)
        with db.transaction(tenant=MEASURED) as tx:
            answers[on] = [[agents.get(tx, key).id] for key in ids[:20]]
            for agent_type in TYPES[:5]:
                page = agents.list(tx, {"type": agent_type}, limit=PAGE)
                assert len(page.items) == PAGE, "a list page is not full: too few rows seeded"
                answers[on].append([agent.id for agent in page.items])
    assert answers[True] == answers[False], "the policies changed what the reads return"


def versions() -> str:
    found = []
    for name in ("psycopg", "psycopg-binary", "psycopg-pool", "pydantic"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("TOOLKIT_BENCH_TENANCY_URL", DEFAULT_URL),
        help="database to drop, create, fill and drop again, as a superuser (default: %(default)s)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run, not a measurement")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    return parser.parse_args(argv)


def print_report(results: list[Result], scale: Scale, facts: dict[str, str]) -> None:
    print("# toolkit row level security benchmark\n")
    print(machine_summary(facts))
    print(
        f"\nData: two tenants of {scale.rows_per_tenant:,} agents each ({len(TYPES)} types, "
        f"{OWNERS} owners per tenant) in one agents table, seeded by COPY. Timed as an "
        "application login (member of toolkit_app, no BYPASSRLS, owns nothing) through one "
        "pooled connection, every call in Database.transaction(tenant=...) of the first "
        "tenant. Policies on: the migrated table (ENABLE and FORCE ROW LEVEL SECURITY, "
        "policies comparing tenant_id with (SELECT public.toolkit_tenant())). Policies off: "
        "the same table after DISABLE ROW LEVEL SECURITY. Same function, connection, role, "
        "tenant, rows and queries on both sides; the switch runs untimed before each batch "
        "and is checked (a query without the tenant predicate sees one tenant's rows, or "
        "both tenants'). Sides alternate batch by batch after an untimed warm-up round; "
        "ops/s comes from the median round, the ratio is the median over rounds of "
        "on-time / off-time in the same round (above 1 is slower with the policies)."
    )
    print(
        f"\n- get-by-id: {scale.get_batch:,} random ids of the tenant per batch, "
        f"{scale.get_rounds} rounds."
        f"\n- list-100: {scale.list_batch} pages per batch, {scale.list_rounds} rounds; "
        f"agents.list filtered by type, {PAGE} rows a page."
        f"\n- {PER_CALL}: BEGIN with the tenant, the call, COMMIT (three round trips); "
        f"{PER_BATCH}: the statements alone, where the policies weigh the most."
        "\n- server CPU: the backend's on-CPU time per call (/proc/<pid>/schedstat; n/a when "
        "the server is not local), median over rounds; it leaves out waiting for a CPU, so "
        "it holds steady when other work shares the machine. The target is on wall time."
    )
    headers = ["operation", "unit of work", f"ops/s, {ON}", f"ops/s, {OFF}"]
    headers += ["time ratio on / off", "server CPU us per call, on / off (ratio)", "target"]
    headers += ["met?"]
    print()
    print(markdown_table(headers, [result.cells() for result in results]))
    for result in results:
        row = f"{result.operation}, {result.unit}: policies on / off"
        record_verdict("tenancy", row, f"{result.ratio:.3f}x", f"<= {TARGET:.2f}x", result.met)
    missed = [r for r in results if not r.met]
    print(f"\n{len(results) - len(missed)} of {len(results)} targets met.")
    if missed:
        print("MISSED: " + "; ".join(f"{r.operation}, {r.unit} ({r.ratio:.3f}x)" for r in missed))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    scale = QUICK if args.quick else Scale()
    started = time.perf_counter()
    load_before = load_average()
    drop_database(args.url)
    migrate(args.url)
    try:
        with psycopg.connect(args.url, autocommit=True) as admin, application_role(admin) as role:
            version = admin.execute("SHOW server_version").fetchone()
            seed_started = time.perf_counter()
            ids = seed(admin, scale, random.Random(0))
            seed_seconds = time.perf_counter() - seed_started
            settings = load_settings(
                database_url=make_conninfo(args.url, user=role), pool_max_size=1
            )
            with Database(settings) as db:
                policies = Policies(admin, db)
                same_answers(db, ids, policies)
                with db.connection() as conn:  # the pool's one connection: every call's
                    server = ServerCpu(conn.info.backend_pid)
                results = bench_get(db, ids, scale, policies, server)
                results += bench_list(db, scale, policies, server)
                policies.set(True)
    finally:
        if not args.keep:
            drop_database(args.url)
    load_after = load_average()
    # More than half the CPUs busy before we started: someone else was working.
    busy = (load_before or 0) > cpu_count() / 2
    facts = {
        "PostgreSQL": version[0] if version else "unknown",
        "libraries": versions(),
        "load average (1 min) before / after": f"{load_before} / {load_after}"
        + (" (other work was running)" if busy else ""),
        "runtime": f"{time.perf_counter() - started:.0f} s (seeding {seed_seconds:.0f} s)",
    }
    if args.quick:
        facts["mode"] = "--quick smoke run: too few rounds to judge the target"
    print_report(results, scale, facts)


if __name__ == "__main__":
    main()
