"""Benchmark of the PostgreSQL core against raw psycopg, SQLAlchemy's ORM and aiosql.

Run from the repository root: ``tox -e bench``, ``python -m benchmarks.bench_core``
or ``python benchmarks/bench_core.py`` (``--help`` for options). It drops and
recreates its own database (``toolkit_bench_core`` unless ``--url`` or
``TOOLKIT_BENCH_URL`` names another), seeds 100,000 agents, and times on that
same data, interleaved:

* get-by-id, and a list of 100 rows filtered by type, ordered by created_at, id
  (raw psycopg runs the very statement the toolkit sends; beside it, raw
  psycopg with a row factory building the same Agent records); get-by-id also
  per request (a pooled connection, or a SQLAlchemy Session, taken per call);
* a keyset page at depth 90,000 against page one, with OFFSET beside it;
* bulk creation of 100,000 rows, beside raw COPY (text and binary).

Each contender but the per-request ones keeps one open connection for its
timed loops. The table reports ops/s and each contender's time relative to
raw psycopg (bulk: to the faster COPY); a missed
target is printed, never turned into a failing exit code.
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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: make the repository root (toolkit and benchmarks) importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiosql
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import RowMaker, dict_row
from psycopg.types.json import Jsonb
from sqlalchemy import DateTime, Engine, create_engine, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

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
from toolkit.db.bind import Binding
from toolkit.db.migrations import migrate
from toolkit.repositories import agents, users
from toolkit.repositories.records import Agent, AgentConfig, AgentCreate

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/toolkit_bench_core"
SECTIONS = ("get", "list", "depth", "bulk")

SEED_ROWS = 100_000
TYPES = tuple(f"type-{n:02d}" for n in range(20))
OWNERS = 50
PAGE = 100
DEPTH = 90_000
ORM_BUDGET_SECONDS = 30.0

FIELDS = tuple(Agent.model_fields)  # the record's fields are the table's columns, in order
COLUMNS = ", ".join(FIELDS)
INSERT_COLUMNS = ("owner_id", "name", "type", "description", "config", "is_active")
CREATED_AT = FIELDS.index("created_at")

# The bindings agents.get and agents.list run: raw psycopg sends the same statements.
GET: Binding = agents._entity._get
LIST: Binding = agents._entity._list
RAW_GET = GET.statement_text()
# What agents.list(conn, {"type": ...}, limit=100) sends: its variant for a type filter.
LIST_VALUES: dict[str, Any] = {
    "type": "",
    "is_active": None,
    "owner_id": None,
    "after_value": None,
    "after_id": None,
    "limit": PAGE + 1,
}
RAW_LIST = LIST.statement_for(LIST_VALUES, "created_at", False)
TENANT = "tenant_id = (SELECT toolkit_tenant_or_default())"
"""The toolkit's tenant predicate: every raw statement has it too, so each uses the same index."""
RAW_FIRST_PAGE = f"SELECT {COLUMNS} FROM agents WHERE {TENANT} ORDER BY created_at, id LIMIT {PAGE}"
RAW_KEYSET = (
    f"SELECT {COLUMNS} FROM agents WHERE {TENANT} AND (created_at, id) > (%s, %s) "
    f"ORDER BY created_at, id LIMIT {PAGE}"
)
RAW_OFFSET = (
    f"SELECT {COLUMNS} FROM agents WHERE {TENANT} ORDER BY created_at, id OFFSET %s LIMIT %s"
)
RAW_COPY = f"COPY agents ({', '.join(INSERT_COLUMNS)}) FROM STDIN"
COPY_TYPES = ("uuid", "text", "text", "text", "jsonb", "bool")
"""The binary COPY's column types, which psycopg must know to dump each value."""
RAW_INSERT = f"INSERT INTO agents ({', '.join(INSERT_COLUMNS)}) VALUES ({', '.join(['%s'] * 6)})"

AIOSQL_QUERIES = f"""
-- name: get_agent(id)^
SELECT {COLUMNS} FROM agents WHERE {TENANT} AND id = :id;

-- name: list_agents_by_type(type)
SELECT {COLUMNS} FROM agents WHERE {TENANT} AND type = :type ORDER BY created_at, id
LIMIT {PAGE + 1};

-- name: insert_agents({", ".join(INSERT_COLUMNS)})*!
INSERT INTO agents ({", ".join(INSERT_COLUMNS)})
VALUES ({", ".join(":" + name for name in INSERT_COLUMNS)});
"""

RAW = "raw psycopg (tuples)"
RAW_PYDANTIC = "raw psycopg + Agent.model_validate"
RAW_RECORDS = "raw psycopg + row_factory building Agent (reference)"


def agent_rows(cursor: psycopg.Cursor[Any]) -> RowMaker[Agent]:
    """A row factory building Agent records as a hand-written psycopg application would
    without validating every field: model_construct, with the config (a dict from
    psycopg's jsonb loader) validated into AgentConfig."""
    names = [column.name for column in cursor.description or ()]

    def make(values: Sequence[Any]) -> Agent:
        data = dict(zip(names, values, strict=True))
        data["config"] = AgentConfig.model_validate(data["config"])
        return Agent.model_construct(**data)

    return make


AIOSQL = "aiosql (tuples)"
TOOLKIT_PER_REQUEST = "toolkit per request: with db.connection() as conn: agents.get"
ORM_PER_REQUEST = (
    "SQLAlchemy ORM per request: Session(engine), query().filter().first(), "
    "Agent.model_validate(row, from_attributes=True)"
)


class Base(DeclarativeBase):
    pass


class AgentRow(Base):
    """The agents table, mapped the way the ORM code this replaces maps it."""

    __tablename__ = "agents"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=func.gen_random_uuid())
    owner_id: Mapped[uuid.UUID]
    name: Mapped[str]
    type: Mapped[str]
    description: Mapped[str | None]
    config: Mapped[dict[str, Any]] = mapped_column(JSONB)
    is_active: Mapped[bool] = mapped_column(server_default=text("true"))
    version: Mapped[int] = mapped_column(server_default=text("1"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


@dataclass(frozen=True)
class Scale:
    """How much work each section does (sized for ~2.5 minutes on 2 quiet CPUs).

    Many short rounds rather than a few long ones: each round's ratio pairs
    contenders run seconds apart, so load that comes and goes cancels out.
    """

    get_batch: int = 300
    get_rounds: int = 20
    list_batch: int = 20
    list_rounds: int = 20
    depth_batch: int = 5
    depth_rounds: int = 14
    bulk_rows: int = 100_000
    bulk_reduced_rows: int = 20_000
    """For the ORM if 100,000 rows would take over ORM_BUDGET_SECONDS, and for aiosql."""
    bulk_rounds: int = 3


QUICK = Scale(100, 3, 10, 3, 2, 3, bulk_rows=5_000, bulk_reduced_rows=1_000, bulk_rounds=1)
"""``--quick``: a smoke run that checks every path, too small to judge a target."""


# Results


@dataclass
class Row:
    """One line of the result table."""

    operation: str
    contender: str
    per_second: float
    ratio: float
    target: str = ""
    met: str = ""
    cpu_us_per_row: float | None = None
    """This process's CPU per row read (the client's share), median round."""
    server_cpu_us_per_row: float | None = None
    """The server backend's CPU per row written (bulk, a local server only), median round."""

    def cells(self) -> list[str]:
        return [
            self.operation,
            self.contender,
            f"{self.per_second:,.0f}",
            f"{self.ratio:.2f}",
            "" if self.cpu_us_per_row is None else f"{self.cpu_us_per_row:.2f}",
            "" if self.server_cpu_us_per_row is None else f"{self.server_cpu_us_per_row:.2f}",
            self.target,
            self.met,
        ]


@dataclass
class Report:
    """The table's rows and every target's verdict."""

    rows: list[Row] = field(default_factory=list)
    verdicts: list[tuple[str, bool, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add_reads(
        self,
        operation: str,
        times: dict[str, list[float]],
        batch: int,
        anchors: dict[str, str],
        *,
        cpu: dict[str, list[float]] | None = None,
        rows_per_call: int = 1,
    ) -> dict[str, Row]:
        """Rows for read contenders, each paired with ``anchors[name]`` (default raw psycopg);
        with ``cpu``, each row's client CPU per row read (``rows_per_call`` per call)."""
        rows = {
            name: Row(
                operation,
                name,
                batch / median(times[name]),
                paired_ratio(times[name], times[anchors.get(name, RAW)]),
                cpu_us_per_row=(
                    None if cpu is None else median(cpu[name]) / batch / rows_per_call * 1e6
                ),
            )
            for name in times
        }
        self.rows.extend(rows.values())
        return rows

    def check(self, row: Row, target: str, value: float, limit: float, *, at_most: bool) -> None:
        """Judge ``value`` against ``limit`` and note the verdict on ``row``."""
        met = value <= limit if at_most else value >= limit
        row.target = target
        row.met = f"{'yes' if met else 'NO'} ({value:.2f}x)"
        self.verdicts.append((f"{row.operation}, {row.contender}: {target}", met, value))
        record_verdict("core", f"{row.operation}, {row.contender}", f"{value:.2f}x", target, met)


# Database and contenders


def drop_database(url: str) -> None:
    name = str(conninfo_to_dict(url)["dbname"])
    with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True) as conn:
        statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(statement.format(sql.Identifier(name)))


def agent_config(n: int) -> dict[str, Any]:
    return {
        "model": f"model-{n % 7}",
        "system_prompt": "You are a helpful assistant.",
        "temperature": 0.2,
        "max_tokens": 1024,
        "tools": ["search", "calculator"],
    }


def seed(db: Database, url: str, rng: random.Random) -> list[uuid.UUID]:
    """Owners through the toolkit, agents through COPY; returns the agents' ids."""
    with db.connection() as conn:
        owners = [
            users.create(conn, {"email": f"owner{n}@bench.test", "display_name": f"Owner {n}"}).id
            for n in range(OWNERS)
        ]
    # Distinct created_at values: one COPY would stamp every row with the same
    # now(), and the keyset would then run on ids alone.
    start = datetime(2024, 1, 1, tzinfo=UTC)
    copy_sql = f"COPY agents ({', '.join(INSERT_COLUMNS)}, created_at, updated_at) FROM STDIN"
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction(), conn.cursor() as cur, cur.copy(copy_sql) as copy:
            for n in range(SEED_ROWS):
                at = start + timedelta(seconds=n, microseconds=rng.randrange(1_000_000))
                owner, agent_type = rng.choice(owners), rng.choice(TYPES)
                description = f"seeded agent {n}" if n % 3 else None
                config, active = Jsonb(agent_config(n)), n % 10 != 0
                copy.write_row(
                    (owner, f"agent {n}", agent_type, description, config, active, at, at)
                )
        # Statistics and visibility map as a settled table has them.
        conn.execute("VACUUM (ANALYZE) agents")
        return [row[0] for row in conn.execute("SELECT id FROM agents")]


@dataclass
class Contenders:
    """One open connection (or session) per contender, kept for the whole run."""

    db: Database
    toolkit: psycopg.Connection[Any]
    raw: psycopg.Connection[Any]
    aiosql_conn: psycopg.Connection[Any]
    engine: Engine
    session: Session
    queries: Any


@contextmanager
def open_contenders(url: str) -> Iterator[Contenders]:
    db = Database(load_settings(database_url=url, pool_max_size=2))
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    queries = aiosql.from_str(AIOSQL_QUERIES, "psycopg")
    try:
        with (
            db.connection() as toolkit_conn,
            psycopg.connect(url, autocommit=True) as raw,
            psycopg.connect(url, autocommit=True) as aiosql_conn,
            Session(engine) as session,
        ):
            yield Contenders(db, toolkit_conn, raw, aiosql_conn, engine, session, queries)
    finally:
        db.close()
        engine.dispose()


# Reads


def bench_get(c: Contenders, ids: Sequence[uuid.UUID], scale: Scale, report: Report) -> None:
    # The same random ids for every contender within a round; new ones each round.
    rng = random.Random(1)
    batches = [rng.sample(ids, scale.get_batch) for _ in range(scale.get_rounds + 1)]
    orm = "SQLAlchemy ORM query().filter().first()"
    toolkit = "toolkit agents.get"

    def run_raw(round_index: int) -> None:
        for key in batches[round_index]:
            c.raw.execute(RAW_GET, {"id": key}, binary=True).fetchone()

    def run_toolkit(round_index: int) -> None:
        for key in batches[round_index]:
            agents.get(c.toolkit, key)

    def run_raw_pydantic(round_index: int) -> None:
        for key in batches[round_index]:
            # A cursor per call, like conn.execute above: reusing one is ~15% cheaper.
            cursor = c.raw.cursor(row_factory=dict_row)
            Agent.model_validate(cursor.execute(RAW_GET, {"id": key}, binary=True).fetchone())

    def run_raw_records(round_index: int) -> None:
        for key in batches[round_index]:
            cursor = c.raw.cursor(row_factory=agent_rows)
            cursor.execute(RAW_GET, {"id": key}, binary=True).fetchone()

    def run_orm(round_index: int) -> None:
        for key in batches[round_index]:
            c.session.query(AgentRow).filter(text(TENANT), AgentRow.id == key).first()

    def run_aiosql(round_index: int) -> None:
        for key in batches[round_index]:
            c.queries.get_agent(c.aiosql_conn, id=key)

    # Per request, as a web handler does it: a pooled connection (or a Session,
    # whose connection comes from the engine's pool) taken and given back per call.
    def run_toolkit_request(round_index: int) -> None:
        for key in batches[round_index]:
            with c.db.connection() as conn:
                agents.get(conn, key)

    def run_orm_request(round_index: int) -> None:
        for key in batches[round_index]:
            with Session(c.engine) as session:
                found = session.query(AgentRow).filter(AgentRow.id == key).first()
                Agent.model_validate(found, from_attributes=True)

    first = agents.get(c.toolkit, ids[0])
    by_factory = c.raw.cursor(row_factory=agent_rows).execute(RAW_GET, {"id": ids[0]}).fetchone()
    assert first == by_factory, "the reference row factory builds other records"
    contenders = {
        RAW: run_raw,
        toolkit: run_toolkit,
        RAW_RECORDS: run_raw_records,
        RAW_PYDANTIC: run_raw_pydantic,
        orm: run_orm,
        AIOSQL: run_aiosql,
        TOOLKIT_PER_REQUEST: run_toolkit_request,
        ORM_PER_REQUEST: run_orm_request,
    }
    assert agents.get(c.toolkit, ids[0]) == Agent.model_validate(
        c.session.get(AgentRow, ids[0]), from_attributes=True
    ), "the toolkit and the ORM read different agents"
    cpu: dict[str, list[float]] = {}
    times = interleaved(contenders, scale.get_rounds, cpu=cpu)
    rows = report.add_reads("get-by-id", times, scale.get_batch, {}, cpu=cpu)
    report.check(rows[toolkit], "<= 1.05x raw time", rows[toolkit].ratio, 1.05, at_most=True)
    orm_vs_toolkit = paired_ratio(times[orm], times[toolkit])
    report.check(rows[orm], "toolkit >= 2.5x faster", orm_vs_toolkit, 2.5, at_most=False)
    per_request = paired_ratio(times[ORM_PER_REQUEST], times[TOOLKIT_PER_REQUEST])
    target = ">= 4x the SQLAlchemy per-request throughput"
    report.check(rows[TOOLKIT_PER_REQUEST], target, per_request, 4.0, at_most=False)


def bench_list(c: Contenders, scale: Scale, report: Report) -> None:
    # Consecutive calls ask for different types, as a real client would.
    def types(round_index: int) -> Iterator[str]:
        for n in range(scale.list_batch):
            yield TYPES[(round_index + n) % len(TYPES)]

    orm = "SQLAlchemy ORM query().filter().order_by().limit().all()"
    toolkit = "toolkit agents.list"

    def values(agent_type: str) -> dict[str, Any]:
        return {"type": agent_type, "limit": PAGE + 1}

    def run_raw(round_index: int) -> None:
        for agent_type in types(round_index):
            c.raw.execute(RAW_LIST, values(agent_type), binary=True).fetchall()

    def run_toolkit(round_index: int) -> None:
        for agent_type in types(round_index):
            agents.list(c.toolkit, {"type": agent_type}, limit=PAGE)

    def run_raw_pydantic(round_index: int) -> None:
        for agent_type in types(round_index):
            cursor = c.raw.cursor(row_factory=dict_row)
            rows = cursor.execute(RAW_LIST, values(agent_type), binary=True).fetchall()
            [Agent.model_validate(row) for row in rows]

    def run_raw_records(round_index: int) -> None:
        for agent_type in types(round_index):
            cursor = c.raw.cursor(row_factory=agent_rows)
            cursor.execute(RAW_LIST, values(agent_type), binary=True).fetchall()

    def run_orm(round_index: int) -> None:
        for agent_type in types(round_index):
            query = c.session.query(AgentRow).filter(text(TENANT), AgentRow.type == agent_type)
            query.order_by(AgentRow.created_at, AgentRow.id).limit(PAGE + 1).all()

    def run_aiosql(round_index: int) -> None:
        for agent_type in types(round_index):
            list(c.queries.list_agents_by_type(c.aiosql_conn, type=agent_type))

    page = agents.list(c.toolkit, {"type": TYPES[0]}, limit=PAGE)
    assert len(page.items) == PAGE and page.next_cursor is not None
    assert LIST.statement_for(LIST_VALUES | {"type": TYPES[0]}, "created_at") == RAW_LIST
    cursor = c.raw.cursor(row_factory=agent_rows)
    by_factory = cursor.execute(RAW_LIST, values(TYPES[0]), binary=True).fetchall()
    assert page.items == by_factory[:PAGE], "the reference row factory builds other records"
    contenders = {
        RAW: run_raw,
        toolkit: run_toolkit,
        RAW_RECORDS: run_raw_records,
        RAW_PYDANTIC: run_raw_pydantic,
        orm: run_orm,
        AIOSQL: run_aiosql,
    }
    cpu: dict[str, list[float]] = {}
    times = interleaved(contenders, scale.list_rounds, cpu=cpu)
    rows = report.add_reads(
        "list-100", times, scale.list_batch, {}, cpu=cpu, rows_per_call=PAGE + 1
    )
    report.check(rows[toolkit], "<= 1.15x raw time", rows[toolkit].ratio, 1.15, at_most=True)


def bench_depth(c: Contenders, scale: Scale, report: Report) -> None:
    # Reach the depth through the toolkit's own cursors, in the largest pages allowed.
    cursor: str | None = None
    walked = 0
    while walked < DEPTH:
        page = agents.list(c.toolkit, None, limit=1000, cursor=cursor)
        walked += len(page.items)
        cursor = page.next_cursor
    assert walked == DEPTH and cursor is not None
    last = c.raw.execute(RAW_OFFSET, (DEPTH - 1, 1)).fetchone()
    assert last is not None
    after = (last[CREATED_AT], last[0])
    deep = agents.list(c.toolkit, None, limit=PAGE, cursor=cursor).items
    by_offset = c.raw.execute(RAW_OFFSET, (DEPTH, PAGE)).fetchall()
    assert [a.id for a in deep] == [row[0] for row in by_offset], "keyset and OFFSET disagree"

    def repeat(call: Callable[[], object]) -> Callable[[int], None]:
        def batch(_round: int) -> None:
            for _ in range(scale.depth_batch):
                call()

        return batch

    raw_first = "raw psycopg keyset, page one"
    raw_deep = "raw psycopg keyset, depth 90,000"
    raw_offset = "raw psycopg OFFSET 90,000"
    toolkit_first = "toolkit agents.list, page one"
    toolkit_deep = "toolkit agents.list, cursor at depth 90,000"
    contenders = {
        raw_first: repeat(lambda: c.raw.execute(RAW_FIRST_PAGE).fetchall()),
        raw_deep: repeat(lambda: c.raw.execute(RAW_KEYSET, after).fetchall()),
        raw_offset: repeat(lambda: c.raw.execute(RAW_OFFSET, (DEPTH, PAGE)).fetchall()),
        toolkit_first: repeat(lambda: agents.list(c.toolkit, None, limit=PAGE)),
        toolkit_deep: repeat(lambda: agents.list(c.toolkit, None, limit=PAGE, cursor=cursor)),
    }
    times = interleaved(contenders, scale.depth_rounds)
    # Each row is paired with raw psycopg at its own depth; OFFSET with the deep keyset.
    anchors = {raw_first: raw_first, toolkit_first: raw_first}
    anchors |= {raw_deep: raw_deep, raw_offset: raw_deep, toolkit_deep: raw_deep}
    rows = report.add_reads("page at depth", times, scale.depth_batch, anchors)
    deep_vs_first = paired_ratio(times[toolkit_deep], times[toolkit_first])
    report.check(rows[toolkit_deep], "<= 1.5x its page one", deep_vs_first, 1.5, at_most=True)
    offset_vs_first = paired_ratio(times[raw_offset], times[raw_first])
    rows[raw_offset].met = f"({offset_vs_first:.1f}x raw page one)"


# Bulk create


def backend_cpu_seconds(conn: psycopg.Connection[Any]) -> float | None:
    """CPU seconds used so far by ``conn``'s server process, read from Linux's /proc
    when the server runs on this machine; None when it cannot be read."""
    try:
        with open(f"/proc/{conn.info.backend_pid}/stat") as stat:
            name, _, fields = stat.read().rpartition(")")
    except OSError:
        return None
    if not name.endswith("(postgres"):  # another process with that pid: a remote server
        return None
    user, system = fields.split()[11:13]
    return (int(user) + int(system)) / os.sysconf("SC_CLK_TCK")


def bench_bulk(c: Contenders, scale: Scale, report: Report) -> None:
    rng = random.Random(2)
    owners = [row[0] for row in c.raw.execute("SELECT id FROM users")]
    values = [
        (
            rng.choice(owners),
            f"bulk agent {n}",
            rng.choice(TYPES),
            f"bulk agent {n}" if n % 3 else None,
            agent_config(n),
            n % 10 != 0,
        )
        for n in range(scale.bulk_rows)
    ]
    # Every contender's inputs are built here, outside the timed section.
    creates = [AgentCreate(**dict(zip(INSERT_COLUMNS, v, strict=True))) for v in values]
    params = [(*v[:4], Jsonb(v[4]), v[5]) for v in values]
    named = [dict(zip(INSERT_COLUMNS, p, strict=True)) for p in params]
    orm_objects: list[AgentRow] = []

    def make_orm_objects(count: int) -> None:
        orm_objects[:] = [
            AgentRow(**dict(zip(INSERT_COLUMNS, v, strict=True))) for v in values[:count]
        ]

    def run_toolkit(count: int) -> None:
        with c.toolkit.transaction():
            agents.create_many(c.toolkit, creates[:count])

    def run_executemany(count: int) -> None:
        with c.raw.transaction(), c.raw.cursor() as cur:
            cur.executemany(RAW_INSERT, params[:count])

    def run_copy(count: int, statement: str, types: Sequence[str] | None) -> None:
        with c.raw.transaction(), c.raw.cursor() as cur, cur.copy(statement) as copy:
            if types:
                copy.set_types(types)
            for row in params[:count]:
                copy.write_row(row)

    def run_orm() -> None:
        with Session(c.engine) as session:
            session.add_all(orm_objects)
            session.commit()

    def run_aiosql(count: int) -> None:
        with c.aiosql_conn.transaction():
            c.queries.insert_agents(c.aiosql_conn, named[:count])

    def run_copy_text(count: int) -> None:
        run_copy(count, RAW_COPY, None)

    def run_copy_binary(count: int) -> None:
        run_copy(count, RAW_COPY + " (FORMAT BINARY)", COPY_TYPES)

    def empty_table() -> None:
        c.raw.execute("TRUNCATE agents CASCADE")
        # Write out the previous run's dirty pages now rather than during the next run.
        c.raw.execute("CHECKPOINT")

    # Warm every path; the ORM's warm-up also projects its time for 100,000 rows.
    for warm in (run_toolkit, run_executemany, run_aiosql, run_copy_text, run_copy_binary):
        empty_table()
        warm(1_000)
    empty_table()
    make_orm_objects(2_000)
    started = time.perf_counter()
    run_orm()
    full, reduced = scale.bulk_rows, scale.bulk_reduced_rows
    orm_projected = (time.perf_counter() - started) * full / 2_000
    orm_rows = full if orm_projected <= ORM_BUDGET_SECONDS else reduced

    executemany = "psycopg executemany"
    toolkit = "toolkit agents.create_many (INSERT ... SELECT FROM unnest, binary arrays, pipelined)"
    orm = "SQLAlchemy ORM add_all + commit"
    aiosql_many = "aiosql insert_agents*! (executemany)"
    copy_text, copy_binary = "raw psycopg COPY (text)", "raw psycopg COPY (binary)"
    counts = {executemany: full, toolkit: full, orm: orm_rows, copy_text: full, copy_binary: full}
    counts[aiosql_many] = reduced  # it is executemany again: a smaller run tells enough
    contenders = {
        copy_text: lambda _round: run_copy_text(full),
        copy_binary: lambda _round: run_copy_binary(full),
        executemany: lambda _round: run_executemany(full),
        toolkit: lambda _round: run_toolkit(full),
        orm: lambda _round: run_orm(),
        aiosql_many: lambda _round: run_aiosql(reduced),
    }

    # The server's share, read from the backend of each contender that keeps one connection.
    backends = {copy_text: c.raw, copy_binary: c.raw, executemany: c.raw, toolkit: c.toolkit}
    backends[aiosql_many] = c.aiosql_conn
    server_cpu: dict[str, list[float]] = {name: [] for name in backends}

    def on_server_clock(name: str, run: Callable[[int], None]) -> Callable[[int], None]:
        def measured(round_index: int) -> None:
            before = backend_cpu_seconds(backends[name])
            run(round_index)
            after = backend_cpu_seconds(backends[name])
            if before is not None and after is not None:
                server_cpu[name].append(after - before)

        return measured

    for name, run in list(contenders.items()):
        if name in backends:
            contenders[name] = on_server_clock(name, run)

    def before_each(name: str) -> None:
        orm_objects.clear()
        empty_table()
        if name == orm:
            make_orm_objects(orm_rows)

    cpu: dict[str, list[float]] = {}
    times = interleaved(contenders, scale.bulk_rounds, warmup=0, before_each=before_each, cpu=cpu)
    orm_objects.clear()
    empty_table()

    # Compare per-row times: not every contender wrote the same number of rows.
    per_row = {name: [t / counts[name] for t in runs] for name, runs in times.items()}
    # The reference is the faster COPY format on this run; both are printed.
    reference = min((copy_text, copy_binary), key=lambda name: median(per_row[name]))
    operation = f"bulk create {full:,}"
    rows: dict[str, Row] = {}
    for name, runs in per_row.items():
        label = name
        if name == reference:
            label += " [reference: the faster COPY]"
        if counts[name] != full:
            label += f" [{counts[name]:,} rows timed, per-row rate]"
        ratio = paired_ratio(runs, per_row[reference])
        rows[name] = Row(operation, label, 1 / median(runs), ratio)
        rows[name].cpu_us_per_row = median(cpu[name]) / counts[name] * 1e6
        if server_cpu.get(name):
            rows[name].server_cpu_us_per_row = median(server_cpu[name]) / counts[name] * 1e6
    report.rows.extend(rows.values())
    toolkit_vs_copy = paired_ratio(per_row[reference], per_row[toolkit])
    target = ">= 0.9x the faster COPY's rows/s"
    report.check(rows[toolkit], target, toolkit_vs_copy, 0.9, at_most=False)
    copy_vs_executemany = paired_ratio(per_row[executemany], per_row[toolkit])
    report.check(rows[executemany], "toolkit >= 2x faster", copy_vs_executemany, 2.0, at_most=False)
    copy_vs_orm = paired_ratio(per_row[orm], per_row[toolkit])
    report.check(rows[orm], "toolkit >= 10x faster", copy_vs_orm, 10.0, at_most=False)
    if orm_rows != full:
        report.notes.append(
            f"The ORM's add_all was projected at {orm_projected:.0f} s for {full:,} rows "
            f"(over the {ORM_BUDGET_SECONDS:.0f} s budget), so it ran {orm_rows:,} rows per "
            "round and is compared per row."
        )
    report.notes.append(
        f"aiosql's insert_many is psycopg's executemany underneath; it ran "
        f"{reduced:,} rows per round to save time and is compared per row."
    )


# Main


def versions() -> str:
    found = []
    for name in ("psycopg", "psycopg-binary", "psycopg-pool", "SQLAlchemy", "aiosql", "pydantic"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("TOOLKIT_BENCH_URL", DEFAULT_URL),
        help="database to drop, create, fill and drop again (default: %(default)s)",
    )
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help="comma-separated sections to run, of %(default)s",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run, not a measurement")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def print_report(report: Report, scale: Scale, facts: dict[str, str]) -> None:
    print("# toolkit PostgreSQL core benchmark\n")
    print(machine_summary(facts))
    print(
        f"\nData: {SEED_ROWS:,} agents over {len(TYPES)} types and {OWNERS} owners, seeded "
        "by COPY. Every contender uses one already-open connection: the toolkit a pooled one "
        "held for the loop, raw psycopg and aiosql their own autocommit connection, "
        "SQLAlchemy a Session on a postgresql+psycopg engine. Contenders run in rotating "
        "order, round after round, after an untimed warm-up round; ops/s comes from the "
        "median round, and ratio is the median over rounds of contender time / raw psycopg "
        "time in the same round (above 1 is slower)."
    )
    print(
        f"\n- get-by-id: {scale.get_batch:,} random ids per round, {scale.get_rounds} rounds. "
        "The two per-request rows take a connection per call, as a web request does: the "
        "toolkit a pooled one from Database.connection(), SQLAlchemy a new Session (its "
        "connection from the engine's pool, its transaction rolled back on close) and the "
        "Agent record built from the ORM object; their target pairs one with the other."
        f"\n- list-100: {scale.list_batch} pages per round, {scale.list_rounds} rounds; "
        f"WHERE type = ... ORDER BY created_at, id LIMIT {PAGE + 1} (the toolkit reads "
        "one row more than the page to know whether a next page exists; every contender "
        "reads as many)."
        "\n- get-by-id and list-100: raw psycopg runs the very statement the toolkit sends "
        "(agents.get; agents.list's variant for a type filter), in binary format, prepared "
        "by psycopg from its 5th run as the toolkit's is; its tuples hold the config as a "
        "dict (psycopg's jsonb loader). The reference row builds the same Agent records "
        "with a hand-written psycopg row factory: model_construct, the config validated "
        "into AgentConfig (checked equal to the toolkit's records before timing). aiosql "
        "and the ORM carry the same tenant predicate. Client CPU µs/row is this process's "
        "CPU per row read (per call for get-by-id), median round: the server runs in "
        "other processes, so it is what each contender itself spends."
        f"\n- page at depth: {scale.depth_batch} pages per round, {scale.depth_rounds} rounds, "
        "unfiltered, ordered by created_at, id; each row is paired with raw psycopg's keyset "
        "at the same depth."
        f"\n- bulk create: {scale.bulk_rounds} round(s), each run in one transaction into an "
        "emptied table (TRUNCATE and CHECKPOINT before every run, untimed). Inputs are built "
        "before the timed section: AgentCreate models for the toolkit, parameter tuples for "
        "executemany and COPY, dicts for aiosql, ORM objects for SQLAlchemy. The anchor "
        "is raw psycopg's COPY FROM STDIN into agents, in text and in binary format (the "
        "faster of the two on the run is the reference). COPY is the bench's superuser's "
        "way: row level security refuses COPY FROM to a role its policies bind, so the "
        "toolkit sends INSERT ... SELECT FROM unnest(arrays), 10,000 rows per statement, "
        "the arrays in binary, the tenant computed once per statement, each statement's "
        "arrays built from the inputs as the pipeline asks for it (each sent while the "
        "server runs the one before), and returns the count written. Like for like: both "
        "write the same six columns, the others from their defaults, and neither returns "
        "rows. Its inputs are AgentCreate models already (validation passes them through); "
        "it serialises each config to JSON, as COPY's Jsonb dumper does. Client CPU "
        "µs/row is this process's CPU per row written; server CPU µs/row the backend's, "
        "read from /proc when the server runs on this machine (not for the ORM, whose "
        "connection comes from its pool): the ratio of wall times follows whichever side "
        "is the bottleneck, these two say where each contender's work goes."
    )
    for note in report.notes:
        print(f"- {note}")
    headers = ["operation", "contender", "ops/s (bulk: rows/s)"]
    headers.append("time ratio vs raw psycopg (bulk: vs the faster COPY)")
    headers += ["client CPU µs/row", "server CPU µs/row", "target", "met?"]
    print()
    print(markdown_table(headers, [row.cells() for row in report.rows]))
    missed = [description for description, met, _ in report.verdicts if not met]
    print("\nTargets:")
    for description, met, value in report.verdicts:
        print(f"- {'met   ' if met else 'MISSED'} {description} (measured {value:.2f}x)")
    print(f"\n{len(report.verdicts) - len(missed)} of {len(report.verdicts)} targets met.")
    if missed:
        print("MISSED: " + "; ".join(missed))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    scale = QUICK if args.quick else Scale()
    started = time.perf_counter()
    load_before = load_average()
    report = Report()
    drop_database(args.url)
    migrate(args.url)
    try:
        with open_contenders(args.url) as c:
            server = c.raw.execute("SHOW server_version").fetchone()
            seed_started = time.perf_counter()
            ids = seed(c.db, args.url, random.Random(0))
            seed_seconds = time.perf_counter() - seed_started
            if "get" in args.only:
                bench_get(c, ids, scale, report)
            if "list" in args.only:
                bench_list(c, scale, report)
            if "depth" in args.only:
                bench_depth(c, scale, report)
            if "bulk" in args.only:
                c.session.close()  # its open read transaction would block TRUNCATE
                bench_bulk(c, scale, report)
    finally:
        if not args.keep:
            drop_database(args.url)
    load_after = load_average()
    # More than half the CPUs busy before we started: someone else was working.
    busy = (load_before or 0) > cpu_count() / 2
    facts = {
        "PostgreSQL": server[0] if server else "unknown",
        "libraries": versions(),
        "load average (1 min) before / after": f"{load_before} / {load_after}"
        + (" (other work was running)" if busy else ""),
        "runtime": f"{time.perf_counter() - started:.0f} s (seeding {seed_seconds:.0f} s)",
    }
    if args.quick:
        facts["mode"] = "--quick smoke run: too few rounds to judge targets"
    print_report(report, scale, facts)


if __name__ == "__main__":
    main()
