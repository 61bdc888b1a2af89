"""Benchmark of the async API against raw psycopg async, asyncpg and SQLAlchemy's async ORM.

Run from the repository root: ``tox -e bench -- async``, ``python -m
benchmarks.bench_async`` or ``python benchmarks/bench_async.py`` (``--help``
for options). It drops and recreates its own database
(``toolkit_bench_async`` unless ``--url`` or ``TOOLKIT_BENCH_URL`` names
another), seeds it as the core benchmark does (100,000 agents by COPY), and
times on that same data, interleaved, on one event loop:

* get-by-id and a list of 100 through ``toolkit.aio.repositories.agents``,
  beside raw psycopg ``AsyncConnection`` and raw asyncpg running the very
  statement text the toolkit's binding sends (taken from the binding), and
  raw psycopg with a row factory building the same Agent records; get-by-id
  also per request (a pooled connection, or an AsyncSession, taken per call);
* 64 asyncio tasks over an ``AsyncDatabase`` pool of 10 doing get-by-id,
  beside the sync API (``Database`` pool of 10, 10 threads): throughput and
  per-call latency;
* the example FastAPI application's ``GET /agents/{id}`` under 64 concurrent
  in-process clients (httpx ``ASGITransport``), beside the same route written
  with SQLAlchemy 2's async ORM on asyncpg.

A missed target is printed, never turned into a failing exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import logging
import os
import random
import re
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: make the repository root (toolkit and benchmarks) importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The example application is a project of its own, importable from its folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "agents_api"))

import asyncpg
import httpx
import psycopg
from fastapi import FastAPI, HTTPException, Response
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import DateTime, func, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from benchmarks._common import (
    cpu_count,
    interleaved_async,
    load_average,
    machine_summary,
    markdown_table,
    median,
    paired_ratio,
    percentile,
    record_verdict,
)
from benchmarks.bench_core import (
    OWNERS,
    SEED_ROWS,
    TYPES,
    agent_rows,
    drop_database,
    seed,
)
from toolkit.aio.db.database import AsyncDatabase
from toolkit.aio.repositories import agents
from toolkit.config import Settings, load_settings
from toolkit.db import Database
from toolkit.db.bind import Binding
from toolkit.db.migrations import migrate
from toolkit.repositories import agents as sync_agents
from toolkit.repositories.records import Agent

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/toolkit_bench_async"
SECTIONS = ("get", "list", "concurrency", "api")

PAGE = 100
POOL = 10
TASKS = 64
THREADS = 10
CLIENTS = 64

RAW = "raw psycopg async (tuples)"
RAW_PYDANTIC = "raw psycopg async + Agent.model_validate"
ASYNCPG = "raw asyncpg (Records; reference)"
TOOLKIT_PER_REQUEST = "toolkit per request: async with adb.connection() as conn: agents.get"
ORM_PER_REQUEST = (
    "SQLAlchemy async ORM + asyncpg per request: AsyncSession, "
    "execute(select().where()).scalars().first(), Agent.model_validate(row, from_attributes=True)"
)
RAW_RECORDS = "raw psycopg async + row_factory building Agent (reference)"


@dataclass(frozen=True)
class Scale:
    """How much work each section does (sized for ~2 minutes on 2 CPUs)."""

    get_batch: int = 500
    get_rounds: int = 30
    list_batch: int = 25
    list_rounds: int = 30
    concurrent_ops: int = 3_000
    concurrent_rounds: int = 16
    api_requests: int = 3_000
    api_rounds: int = 8
    api_runs: int = 3
    """Consecutive FastAPI runs, each judged on its own (one good run proves little)."""


QUICK = Scale(100, 3, 10, 3, 1_000, 1, 300, 1, 1)
"""``--quick``: a smoke run that checks every path, too small to judge a target."""


# The statements, exactly as the toolkit's bindings send them

# The bindings agents.get and agents.list run (the repository's Entity holds them).
GET: Binding = agents._entity._get
LIST: Binding = agents._entity._list
GET_SQL = GET.statement_text()
# What agents.list(conn, limit=100) binds: no filter, no cursor, one row more than asked.
LIST_VALUES: dict[str, Any] = {
    "type": None,
    "is_active": None,
    "owner_id": None,
    "after_value": None,
    "after_id": None,
    "limit": PAGE + 1,
}
# And what it sends for them: the variant without filters, first page, default sort.
LIST_SQL = LIST.statement_for(LIST_VALUES, "created_at", False)


def psycopg_prepare(bound: Binding) -> bool:
    """The raw side's ``prepare=``: the binding's own choice, where None (psycopg's
    default, prepared from the 5th execution, i.e. within the warm-up) is made
    explicit as True."""
    return True if bound.prepare is None else bound.prepare


def asyncpg_statement(statement: str) -> tuple[str, tuple[str, ...]]:
    """``%(name)s`` placeholders as asyncpg's ``$n``; the names in ``$n`` order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    return re.sub(r"%\((\w+)\)s", number, statement), tuple(names)


GET_ASYNCPG, GET_ORDER = asyncpg_statement(GET_SQL)
LIST_ASYNCPG, LIST_ORDER = asyncpg_statement(LIST_SQL)
LIST_ARGS = tuple(LIST_VALUES[name] for name in LIST_ORDER)


# Results


@dataclass
class Row:
    """One line of a result table."""

    operation: str
    contender: str
    per_second: float
    ratio: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_us: float | None = None
    target: str = ""
    met: str = ""
    cpu_us_per_row: float | None = None
    """Single connection: this process's CPU per row read, median round."""

    def cells(self, latency: bool) -> list[str]:
        cells = [self.operation, self.contender, f"{self.per_second:,.0f}"]
        if latency:
            cells += [f"{self.p50_ms or 0:.2f}", f"{self.p99_ms or 0:.2f}"]
            cells.append(f"{self.cpu_us or 0:.0f}")
            return [*cells, f"{self.ratio:.2f}", self.target, self.met]
        cells += [f"{self.ratio:.2f}", f"{self.cpu_us_per_row or 0:.2f}"]
        return [*cells, self.target, self.met]


@dataclass
class Report:
    """Each table's rows and every target's verdict."""

    reads: list[Row] = field(default_factory=list)
    concurrent: list[Row] = field(default_factory=list)
    api: list[Row] = field(default_factory=list)
    verdicts: list[tuple[str, bool, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def check(self, row: Row, target: str, value: float, limit: float, *, at_most: bool) -> None:
        """Judge ``value`` against ``limit`` and note the verdict on ``row``."""
        met = value <= limit if at_most else value >= limit
        row.target = target
        row.met = f"{'yes' if met else 'NO'} ({value:.2f}x)"
        self.verdicts.append((f"{row.operation}, {row.contender}: {target}", met, value))
        record_verdict("async", f"{row.operation}, {row.contender}", f"{value:.2f}x", target, met)


# Contenders


@dataclass
class Contenders:
    """One open connection per single-connection contender, and the pools."""

    url: str
    adb: AsyncDatabase
    db: Database
    toolkit: psycopg.AsyncConnection[Any]
    raw: psycopg.AsyncConnection[Any]
    apg: asyncpg.Connection
    orm_sessions: async_sessionmaker[AsyncSession]


async def jsonb_as_dicts(conn: asyncpg.Connection) -> None:
    """jsonb parsed to dicts, as psycopg's tuples have it (asyncpg's default is the text)."""
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def pool_settings(url: str) -> Settings:
    # A full pool from the start: growing it is not what is measured.
    return load_settings(database_url=url, pool_min_size=POOL, pool_max_size=POOL)


@asynccontextmanager
async def open_contenders(url: str) -> AsyncIterator[Contenders]:
    # The bench connects as a superuser; the toolkit's warning about it is not news here.
    adb = AsyncDatabase(pool_settings(url), warn_if_privileged=False)
    db = Database(pool_settings(url), warn_if_privileged=False)
    apg = await asyncpg.connect(url)
    await jsonb_as_dicts(apg)
    engine = orm_engine(url)
    try:
        async with (
            adb.connection() as toolkit_conn,
            await psycopg.AsyncConnection.connect(url, autocommit=True) as raw,
        ):
            sessions = async_sessionmaker(engine, expire_on_commit=False, class_=AsyncSession)
            yield Contenders(url, adb, db, toolkit_conn, raw, apg, sessions)
    finally:
        await engine.dispose()
        await apg.close()
        await adb.close()
        db.close()


# Single connection: get-by-id and list-100


async def bench_get(c: Contenders, ids: Sequence[uuid.UUID], scale: Scale, report: Report) -> None:
    # The same random ids for every contender within a round; new ones each round.
    rng = random.Random(1)
    batches = [rng.sample(ids, scale.get_batch) for _ in range(scale.get_rounds + 1)]
    toolkit = "toolkit await agents.get"
    prepare = psycopg_prepare(GET)

    async def run_raw(round_index: int) -> None:
        for key in batches[round_index]:
            cursor = c.raw.cursor()
            await cursor.execute(GET_SQL, {"id": key}, prepare=prepare, binary=True)
            await cursor.fetchone()

    async def run_toolkit(round_index: int) -> None:
        for key in batches[round_index]:
            await agents.get(c.toolkit, key)

    async def run_raw_pydantic(round_index: int) -> None:
        for key in batches[round_index]:
            cursor = c.raw.cursor(row_factory=dict_row)
            await cursor.execute(GET_SQL, {"id": key}, prepare=prepare, binary=True)
            Agent.model_validate(await cursor.fetchone())

    async def run_asyncpg(round_index: int) -> None:
        for key in batches[round_index]:
            await c.apg.fetchrow(GET_ASYNCPG, key)

    # Per request, as a web handler does it: a pooled connection (or a session,
    # whose connection comes from the engine's pool) taken and given back per call.
    async def run_toolkit_request(round_index: int) -> None:
        for key in batches[round_index]:
            async with c.adb.connection() as conn:
                await agents.get(conn, key)

    async def run_orm_request(round_index: int) -> None:
        for key in batches[round_index]:
            async with c.orm_sessions() as session:
                found = await session.execute(select(AgentRow).where(AgentRow.id == key))
                Agent.model_validate(found.scalars().first(), from_attributes=True)

    async def run_raw_records(round_index: int) -> None:
        for key in batches[round_index]:
            cursor = c.raw.cursor(row_factory=agent_rows)
            await cursor.execute(GET_SQL, {"id": key}, prepare=prepare, binary=True)
            await cursor.fetchone()

    first = await agents.get(c.toolkit, ids[0])
    raw_first = await c.apg.fetchrow(GET_ASYNCPG, ids[0])
    assert raw_first is not None and first.name == raw_first["name"]
    async with c.orm_sessions() as session:
        orm_first = await session.get(AgentRow, ids[0])
        assert first == Agent.model_validate(orm_first, from_attributes=True)
    cursor = c.raw.cursor(row_factory=agent_rows)
    await cursor.execute(GET_SQL, {"id": ids[0]}, binary=True)
    assert first == await cursor.fetchone(), "the reference row factory builds other records"
    contenders = {
        RAW: run_raw,
        toolkit: run_toolkit,
        RAW_RECORDS: run_raw_records,
        RAW_PYDANTIC: run_raw_pydantic,
        ASYNCPG: run_asyncpg,
        TOOLKIT_PER_REQUEST: run_toolkit_request,
        ORM_PER_REQUEST: run_orm_request,
    }
    cpu: dict[str, list[float]] = {}
    times = await interleaved_async(contenders, scale.get_rounds, cpu=cpu)
    rows = add_reads(report, "get-by-id", times, scale.get_batch, cpu, 1)
    report.check(rows[toolkit], "<= 1.05x raw time", rows[toolkit].ratio, 1.05, at_most=True)
    per_request = paired_ratio(times[ORM_PER_REQUEST], times[TOOLKIT_PER_REQUEST])
    target = ">= 4x the SQLAlchemy per-request throughput"
    report.check(rows[TOOLKIT_PER_REQUEST], target, per_request, 4.0, at_most=False)


async def bench_list(c: Contenders, scale: Scale, report: Report) -> None:
    toolkit = f"toolkit await agents.list(limit={PAGE})"
    prepare = psycopg_prepare(LIST)

    async def run_raw(_round: int) -> None:
        for _ in range(scale.list_batch):
            cursor = c.raw.cursor()
            await cursor.execute(LIST_SQL, LIST_VALUES, prepare=prepare, binary=True)
            await cursor.fetchall()

    async def run_toolkit(_round: int) -> None:
        for _ in range(scale.list_batch):
            await agents.list(c.toolkit, limit=PAGE)

    async def run_raw_pydantic(_round: int) -> None:
        for _ in range(scale.list_batch):
            cursor = c.raw.cursor(row_factory=dict_row)
            await cursor.execute(LIST_SQL, LIST_VALUES, prepare=prepare, binary=True)
            [Agent.model_validate(row) for row in await cursor.fetchall()]

    async def run_asyncpg(_round: int) -> None:
        for _ in range(scale.list_batch):
            await c.apg.fetch(LIST_ASYNCPG, *LIST_ARGS)

    async def run_raw_records(_round: int) -> None:
        for _ in range(scale.list_batch):
            cursor = c.raw.cursor(row_factory=agent_rows)
            await cursor.execute(LIST_SQL, LIST_VALUES, prepare=prepare, binary=True)
            await cursor.fetchall()

    page = await agents.list(c.toolkit, limit=PAGE)
    by_asyncpg = await c.apg.fetch(LIST_ASYNCPG, *LIST_ARGS)
    assert len(page.items) == PAGE and page.next_cursor is not None
    assert [a.id for a in page.items] == [row["id"] for row in by_asyncpg[:PAGE]]
    cursor = c.raw.cursor(row_factory=agent_rows)
    await cursor.execute(LIST_SQL, LIST_VALUES, binary=True)
    by_factory = await cursor.fetchall()
    assert page.items == by_factory[:PAGE], "the reference row factory builds other records"
    contenders = {
        RAW: run_raw,
        toolkit: run_toolkit,
        RAW_RECORDS: run_raw_records,
        RAW_PYDANTIC: run_raw_pydantic,
        ASYNCPG: run_asyncpg,
    }
    cpu: dict[str, list[float]] = {}
    times = await interleaved_async(contenders, scale.list_rounds, cpu=cpu)
    rows = add_reads(report, f"list-{PAGE}", times, scale.list_batch, cpu, PAGE + 1)
    report.check(rows[toolkit], "<= 1.15x raw time", rows[toolkit].ratio, 1.15, at_most=True)


def add_reads(  # noqa: PLR0917 - the table's columns, one each
    report: Report,
    operation: str,
    times: dict[str, list[float]],
    batch: int,
    cpu: dict[str, list[float]],
    rows_per_call: int,
) -> dict[str, Row]:
    """Rows for single-connection contenders, each paired with raw psycopg async, with
    each one's client CPU per row read (``rows_per_call`` per call)."""
    rows = {
        name: Row(
            operation,
            name,
            batch / median(runs),
            paired_ratio(runs, times[RAW]),
            cpu_us_per_row=median(cpu[name]) / batch / rows_per_call * 1e6,
        )
        for name, runs in times.items()
    }
    report.reads.extend(rows.values())
    return rows


# Concurrency: 64 tasks over a pool of 10, beside 10 threads over a pool of 10


class Latencies:
    """Per-call seconds and per-round process CPU of each contender's timed rounds
    (warm-up rounds are dropped)."""

    def __init__(self, warmup: int = 1) -> None:
        self.warmup = warmup
        self.kept: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def sink(self, name: str, round_index: int) -> list[float]:
        """Where this round's latencies go (a list that is thrown away in warm-up)."""
        if round_index < self.warmup:
            return []
        return self.kept.setdefault(name, [])

    def p50_p99_ms(self, name: str) -> tuple[float, float]:
        values = self.kept[name]
        return percentile(values, 0.50) * 1000, percentile(values, 0.99) * 1000

    def counting_cpu(self, name: str, batch: Callable[[int], Any]) -> Callable[[int], Any]:
        """``batch``, also noting the CPU time this process spent on it (every thread's)."""

        async def counted(round_index: int) -> None:
            started = time.process_time()
            outcome = batch(round_index)
            if inspect.isawaitable(outcome):
                await outcome
            if round_index >= self.warmup:
                self.cpu.setdefault(name, []).append(time.process_time() - started)

        return counted

    def cpu_us_per_call(self, name: str, calls: int) -> float:
        """The median round's client CPU per call, in microseconds."""
        return median(self.cpu[name]) / calls * 1e6


async def run_tasks(
    tasks: int, keys: Sequence[Any], call: Callable[[Any], Awaitable[object]], sink: list[float]
) -> None:
    """``tasks`` asyncio tasks taking ``keys`` one by one until none is left."""
    pending = iter(keys)

    async def worker() -> None:
        for key in pending:  # one shared iterator: each key is taken exactly once
            start = time.perf_counter()
            await call(key)
            sink.append(time.perf_counter() - start)

    async with asyncio.TaskGroup() as group:
        for _ in range(tasks):
            group.create_task(worker())


def run_threads(
    executor: ThreadPoolExecutor,
    threads: int,
    keys: Sequence[Any],
    call: Callable[[Any], object],
    sink: list[float],
) -> None:
    """``threads`` threads taking ``keys`` one by one until none is left."""
    pending = iter(keys)
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                key = next(pending, None)
            if key is None:
                return
            start = time.perf_counter()
            call(key)
            sink.append(time.perf_counter() - start)

    for future in [executor.submit(worker) for _ in range(threads)]:
        future.result()


async def bench_concurrency(
    c: Contenders, ids: Sequence[uuid.UUID], scale: Scale, report: Report
) -> None:
    rng = random.Random(3)
    batches = [rng.choices(ids, k=scale.concurrent_ops) for _ in range(scale.concurrent_rounds + 1)]
    latencies = Latencies()
    toolkit = f"toolkit async: {TASKS} tasks, AsyncDatabase pool of {POOL}"
    sync = f"toolkit sync: {THREADS} threads, Database pool of {POOL}"
    raw_pool = f"raw psycopg AsyncConnectionPool of {POOL}, {TASKS} tasks"
    asyncpg_pool = f"raw asyncpg pool of {POOL}, {TASKS} tasks (reference)"
    prepare = psycopg_prepare(GET)

    async def toolkit_get(key: uuid.UUID) -> None:
        async with c.adb.connection() as conn:
            await agents.get(conn, key)

    def sync_get(key: uuid.UUID) -> None:
        with c.db.connection() as conn:
            sync_agents.get(conn, key)

    psycopg_pool = AsyncConnectionPool(
        c.url, min_size=POOL, max_size=POOL, kwargs={"autocommit": True}, open=False
    )
    await psycopg_pool.open(wait=True)
    apg_pool = await asyncpg.create_pool(c.url, min_size=POOL, max_size=POOL, init=jsonb_as_dicts)
    assert apg_pool is not None
    c.db.open()
    await c.adb.open()

    async def raw_get(key: uuid.UUID) -> None:
        async with psycopg_pool.connection() as conn:
            cursor = conn.cursor()
            await cursor.execute(GET_SQL, {"id": key}, prepare=prepare, binary=True)
            await cursor.fetchone()

    async def asyncpg_get(key: uuid.UUID) -> None:
        async with apg_pool.acquire() as conn:
            await conn.fetchrow(GET_ASYNCPG, key)

    def tasks_of(call: Callable[[Any], Awaitable[object]], name: str) -> Callable[[int], Any]:
        def batch(round_index: int) -> Awaitable[None]:
            return run_tasks(TASKS, batches[round_index], call, latencies.sink(name, round_index))

        return batch

    try:
        with ThreadPoolExecutor(THREADS, thread_name_prefix="bench-sync") as executor:

            def sync_batch(round_index: int) -> None:
                sink = latencies.sink(sync, round_index)
                run_threads(executor, THREADS, batches[round_index], sync_get, sink)

            contenders = {
                sync: sync_batch,
                toolkit: tasks_of(toolkit_get, toolkit),
                raw_pool: tasks_of(raw_get, raw_pool),
                asyncpg_pool: tasks_of(asyncpg_get, asyncpg_pool),
            }
            counted = {name: latencies.counting_cpu(name, b) for name, b in contenders.items()}
            times = await interleaved_async(counted, scale.concurrent_rounds)
    finally:
        await psycopg_pool.close()
        await apg_pool.close()
    operation = f"get-by-id x {scale.concurrent_ops:,}"
    rows: dict[str, Row] = {}
    for name, runs in times.items():
        p50, p99 = latencies.p50_p99_ms(name)
        # Throughput relative to the sync API's in the same round (above 1 is faster).
        ratio = paired_ratio(times[sync], runs)
        cpu = latencies.cpu_us_per_call(name, scale.concurrent_ops)
        per_second = scale.concurrent_ops / median(runs)
        rows[name] = Row(operation, name, per_second, ratio, p50, p99, cpu)
    report.concurrent.extend(rows.values())
    report.check(rows[toolkit], ">= 1x sync throughput", rows[toolkit].ratio, 1.0, at_most=False)


# FastAPI: the example application beside SQLAlchemy's async ORM


class Base(DeclarativeBase):
    pass


class AgentRow(Base):
    """The agents table, mapped as an async SQLAlchemy application maps it."""

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


def orm_engine(url: str) -> AsyncEngine:
    """An asyncpg engine with a pool of POOL, as an async SQLAlchemy application makes it."""
    return create_async_engine(
        url.replace("postgresql://", "postgresql+asyncpg://", 1),
        pool_size=POOL,
        max_overflow=0,
    )


def sqlalchemy_app(url: str) -> FastAPI:
    """``GET /agents/{id}`` the way a FastAPI + SQLAlchemy 2 async team writes it:
    an asyncpg engine with a pool of 10, a session per request, ``session.get``,
    the ORM object returned through ``response_model`` (the toolkit's Agent record,
    so the JSON is the same) with the same ETag."""
    engine = orm_engine(url)
    sessions = async_sessionmaker(engine, expire_on_commit=False, class_=AsyncSession)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/agents/{agent_id}", response_model=Agent)
    async def get_agent(agent_id: uuid.UUID, response: Response) -> Any:
        async with sessions() as session:
            row = await session.get(AgentRow, agent_id)
        if row is None:
            raise HTTPException(status_code=404, detail="agent not found")
        response.headers["ETag"] = f'"{row.version}"'
        return row

    return app


def toolkit_app(url: str) -> FastAPI:
    """The example application (examples/agents_api) on the bench database, PostgreSQL only."""
    from agents_api.app import create_app
    from agents_api.settings import AppSettings

    # Its lifespan opens the pool; the bench's superuser warning is not news here.
    logging.getLogger("toolkit.aio.db.database").setLevel(logging.ERROR)
    only_postgres = AppSettings(cache=False, storage=False, broker_check=False)
    return create_app(pool_settings(url), app_settings=only_postgres)


async def bench_api(c: Contenders, ids: Sequence[uuid.UUID], scale: Scale, report: Report) -> None:
    app = toolkit_app(c.url)
    orm_app = sqlalchemy_app(c.url)
    toolkit = "toolkit: examples/agents_api"
    orm = "SQLAlchemy 2 async ORM + asyncpg, session.get"
    floor = "no database: a fixed body (the harness's ceiling)"
    rng = random.Random(4)

    async with (
        lifespan_of(app),
        lifespan_of(orm_app),
        client_of(app) as toolkit_client,
        client_of(orm_app) as orm_client,
    ):
        # Same status, same JSON, same ETag, before anything is timed.
        for key in ids[:3]:
            mine, theirs = await toolkit_client.get(path(key)), await orm_client.get(path(key))
            assert mine.status_code == theirs.status_code == 200, (mine.text, theirs.text)
            assert mine.json() == theirs.json(), (mine.json(), theirs.json())
            assert mine.headers.get("etag") == theirs.headers.get("etag")
        fixed = floor_app(mine.content, mine.headers["etag"])

        async with client_of(fixed) as floor_client:
            clients = {orm: orm_client, toolkit: toolkit_client, floor: floor_client}
            for run in range(1, scale.api_runs + 1):
                # Each run is a whole measurement (its own warm-up round), judged on its own.
                batches = [
                    rng.choices(ids, k=scale.api_requests) for _ in range(scale.api_rounds + 1)
                ]
                latencies = Latencies()

                def clients_of(
                    client: httpx.AsyncClient,
                    name: str,
                    batches: list[list[uuid.UUID]] = batches,
                    latencies: Latencies = latencies,
                ) -> Callable[[int], Any]:
                    async def call(key: uuid.UUID) -> None:
                        response = await client.get(path(key))
                        if response.status_code != 200:
                            raise AssertionError(
                                f"{name}: {response.status_code} {response.text[:200]}"
                            )

                    def batch(round_index: int) -> Awaitable[None]:
                        sink = latencies.sink(name, round_index)
                        return run_tasks(CLIENTS, batches[round_index], call, sink)

                    return batch

                counted = {
                    name: latencies.counting_cpu(name, clients_of(client, name))
                    for name, client in clients.items()
                }
                times = await interleaved_async(counted, scale.api_rounds)
                operation = f"GET /agents/{{id}} x {scale.api_requests:,}, run {run} of "
                operation += f"{scale.api_runs}"
                rows: dict[str, Row] = {}
                for name, runs in times.items():
                    p50, p99 = latencies.p50_p99_ms(name)
                    # Requests/s relative to SQLAlchemy's in the same round (above 1 is faster).
                    ratio = paired_ratio(times[orm], runs)
                    cpu = latencies.cpu_us_per_call(name, scale.api_requests)
                    per_second = scale.api_requests / median(runs)
                    rows[name] = Row(operation, name, per_second, ratio, p50, p99, cpu)
                report.api.extend(rows.values())
                report.check(
                    rows[toolkit],
                    ">= 1.5x SQLAlchemy req/s",
                    rows[toolkit].ratio,
                    1.5,
                    at_most=False,
                )


def floor_app(body: bytes, etag: str) -> FastAPI:
    """The same route answering a fixed body without touching a database: what FastAPI,
    httpx and the ASGI transport cost per request, the ceiling of both applications."""
    app = FastAPI()

    @app.get("/agents/{agent_id}", response_model=Agent)
    async def get_agent(agent_id: uuid.UUID) -> Response:
        return Response(body, headers={"ETag": etag}, media_type="application/json")

    return app


def path(key: uuid.UUID) -> str:
    return f"/agents/{key}"


def lifespan_of(app: FastAPI) -> AbstractAsyncContextManager[Any]:
    """The application's startup and shutdown (ASGITransport does not run them)."""
    return app.router.lifespan_context(app)


def client_of(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)
    # One client shared by the concurrent callers, as a load generator keeps one.
    return httpx.AsyncClient(transport=transport, base_url="http://bench")


# Main


def versions() -> str:
    found = []
    names = ("psycopg", "psycopg-binary", "psycopg-pool", "asyncpg", "SQLAlchemy", "fastapi")
    for name in (*names, "starlette", "httpx", "pydantic"):
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
    print("# toolkit async API benchmark\n")
    print(machine_summary(facts))
    print(
        f"\nData: {SEED_ROWS:,} agents over {len(TYPES)} types and {OWNERS} owners, seeded "
        "by COPY, as in the core benchmark. Every async contender runs on one asyncio "
        "event loop (the default one; the sync API's threads run while it waits). "
        "Contenders run in rotating order, round after round, after an untimed warm-up "
        "round; rates come from the median round and ratios are medians over rounds of "
        "the same-round ratio."
    )
    if report.reads:
        print(
            "\nSingle connection. Every contender uses one already-open connection: the toolkit "
            "a pooled AsyncConnection held for the loop, raw psycopg its own autocommit "
            "AsyncConnection, asyncpg its own connection. The raw sides run the statement text "
            "of the toolkit's own bindings (agents.get; agents.list at its default sort), with "
            "the same parameter values, in binary format. Prepared statements: both are "
            "prepared by the toolkit (psycopg's automatic preparation, from the 5th run; "
            "agents.list runs as its variant for the filters given, here none, plain SQL "
            "without null guards) and by raw psycopg (prepare=True); asyncpg always prepares "
            "(its statement cache). Rows: the toolkit returns Agent records (config parsed "
            "into AgentConfig); raw psycopg returns tuples (jsonb parsed to a dict), Agent "
            "records from a hand-written row factory (model_construct, config validated; the "
            "reference row, checked equal to the toolkit's records), or dicts through "
            "Agent.model_validate; asyncpg returns Records (jsonb parsed to a dict by a "
            "json.loads codec). Client CPU µs/row: this process's CPU per row read (per call "
            "for get-by-id), median round."
            f"\n- get-by-id: {scale.get_batch:,} random ids per round, {scale.get_rounds} rounds. "
            "The two per-request rows take a connection per call, as a web request does: the "
            "toolkit a pooled one from AsyncDatabase.connection(), SQLAlchemy a new AsyncSession "
            f"(an asyncpg engine, pool of {POOL}; its transaction rolled back on close) and the "
            "Agent record built from the ORM object; their target pairs one with the other."
            f"\n- list-{PAGE}: {scale.list_batch} calls of agents.list(conn, limit={PAGE}) per "
            f"round, {scale.list_rounds} rounds: the first page, unfiltered, by created_at, id "
            f"(the statement reads {PAGE + 1} rows to know whether a next page exists; the raw "
            "sides run it with the same LIMIT)."
        )
        headers = ["operation", "contender", "ops/s", "time ratio vs raw psycopg async"]
        headers += ["client CPU µs/row", "target", "met?"]
        print()
        print(markdown_table(headers, [row.cells(latency=False) for row in report.reads]))
    if report.concurrent:
        print(
            f"\nConcurrency: get-by-id of {scale.concurrent_ops:,} random ids per round, "
            f"{scale.concurrent_rounds} rounds; each call takes a connection from the pool, "
            f"runs agents.get and gives it back. Async: {TASKS} tasks over a pool of {POOL}; "
            f"sync: {THREADS} threads (a ThreadPoolExecutor) over a pool of {POOL}. Latency "
            "is per call, including the wait for a pooled connection, over all timed rounds: "
            f"with {TASKS} calls in flight against {THREADS}, the async p50 is mostly queueing "
            "for one of the pool's connections. Raw pools (same statement, prepared, "
            f"{TASKS} tasks) are shown for reference. CPU µs/call is this process's CPU "
            "time (every thread's) per call in the median round: PostgreSQL runs on the "
            "same CPUs, so when they are busy the side that spends less CPU per call wins, "
            "and the sync side's figure grows when its threads queue for the GIL."
        )
        headers = ["operation", "contender", "ops/s", "p50 ms", "p99 ms", "CPU µs/call"]
        headers += ["throughput vs sync API", "target", "met?"]
        print()
        print(markdown_table(headers, [row.cells(latency=True) for row in report.concurrent]))
    if report.api:
        print(
            f"\nFastAPI: GET /agents/{{id}} of {scale.api_requests:,} random ids per round, "
            f"{scale.api_rounds} rounds per run, {scale.api_runs} consecutive runs (each "
            f"judged on its own), {CLIENTS} concurrent callers sharing one "
            "httpx.AsyncClient on ASGITransport (in-process, no sockets; the applications' "
            f"lifespans run around it). Both applications hold a pool of {POOL} and answer "
            "the same status, JSON body and ETag (checked before timing). The example "
            "application takes a pooled autocommit connection per request (one round trip) "
            "and writes the record's JSON once; the SQLAlchemy route is written as its "
            "documentation teaches (a session per request, whose get runs inside BEGIN ... "
            "ROLLBACK, the ORM object returned through response_model). The fixed-body row "
            "is the same route without a database: what FastAPI, httpx and the transport "
            "cost per request. CPU µs/req: this process's CPU per request, median round."
        )
        headers = ["operation", "application", "requests/s", "p50 ms", "p99 ms", "CPU µs/req"]
        headers += ["req/s vs SQLAlchemy", "target", "met?"]
        print()
        print(markdown_table(headers, [row.cells(latency=True) for row in report.api]))
    for note in report.notes:
        print(f"- {note}")
    missed = [description for description, met, _ in report.verdicts if not met]
    print("\nTargets:")
    for description, met, value in report.verdicts:
        print(f"- {'met   ' if met else 'MISSED'} {description} (measured {value:.2f}x)")
    print(f"\n{len(report.verdicts) - len(missed)} of {len(report.verdicts)} targets met.")
    if missed:
        print("MISSED: " + "; ".join(missed))


async def run(args: argparse.Namespace, scale: Scale, report: Report) -> tuple[str, float]:
    """Seed, run the chosen sections; the server version and the seeding time."""
    async with open_contenders(args.url) as c:
        cursor = await c.raw.execute("SHOW server_version")
        server = await cursor.fetchone()
        seed_started = time.perf_counter()
        ids = await asyncio.to_thread(seed, c.db, args.url, random.Random(0))
        seed_seconds = time.perf_counter() - seed_started
        if "get" in args.only:
            await bench_get(c, ids, scale, report)
        if "list" in args.only:
            await bench_list(c, scale, report)
        if "concurrency" in args.only:
            await bench_concurrency(c, ids, scale, report)
        if "api" in args.only:
            await bench_api(c, ids, scale, report)
    return (server[0] if server else "unknown"), seed_seconds


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    scale = QUICK if args.quick else Scale()
    started = time.perf_counter()
    load_before = load_average()
    report = Report()
    drop_database(args.url)
    migrate(args.url)
    try:
        server, seed_seconds = asyncio.run(run(args, scale, report))
    finally:
        if not args.keep:
            drop_database(args.url)
    load_after = load_average()
    # More than half the CPUs busy before we started: someone else was working.
    busy = (load_before or 0) > cpu_count() / 2
    facts = {
        "PostgreSQL": server,
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
