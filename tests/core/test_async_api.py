"""What only the async API can meet: cancelled tasks and tasks running at once.

The behaviour both APIs share is tested once, in both modes (test_database.py,
test_repositories.py); these tests are written by hand for asyncio.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import pytest_asyncio

from toolkit.aio.db import AsyncDatabase
from toolkit.aio.repositories import agents, executions, users, workflows
from toolkit.config import Settings, load_settings
from toolkit.errors import Unavailable

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def adb(settings: Settings) -> AsyncIterator[AsyncDatabase]:
    async with AsyncDatabase(settings, warn_if_privileged=False) as database:
        yield database


async def _owner(adb: AsyncDatabase) -> Any:
    async with adb.connection() as conn:
        return await users.create(
            conn, {"email": f"{uuid.uuid4().hex}@example.com", "display_name": "Owner"}
        )


def _running_sleeps(superuser: psycopg.Connection[Any]) -> int:
    """Sleeps still running in this test's own database (other clients of the server aside)."""
    row = superuser.execute(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND query LIKE 'SELECT pg_sleep%%' "
        "AND state = 'active' AND pid <> pg_backend_pid()"
    ).fetchone()
    return int(row[0]) if row else 0


async def test_a_task_cancelled_mid_query_leaves_the_pool_healthy(
    adb: AsyncDatabase, superuser: psycopg.Connection[Any]
) -> None:
    async def slow() -> None:
        async with adb.connection() as conn:
            await conn.execute("SELECT pg_sleep(30)")

    task = asyncio.create_task(slow())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    # The statement was cancelled on the server, not left running.
    assert _running_sleeps(superuser) == 0
    for _ in range(adb.settings.pool_max_size + 1):
        async with adb.connection() as conn:
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert await users.count(conn) == 0


async def test_a_task_cancelled_mid_transaction_rolls_it_back(
    adb: AsyncDatabase, superuser: psycopg.Connection[Any]
) -> None:
    owner = await _owner(adb)
    started = asyncio.Event()

    async def doomed(cancel_during_query: bool) -> None:
        async with adb.transaction() as tx:
            await agents.create(tx, {"owner_id": owner.id, "name": "doomed", "type": "t"})
            started.set()
            if cancel_during_query:
                await tx.execute("SELECT pg_sleep(30)")
            else:
                await asyncio.sleep(30)  # between statements, transaction open

    for during_query in (True, False):
        started.clear()
        task = asyncio.create_task(doomed(during_query))
        await asyncio.wait_for(started.wait(), 5)
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        assert _running_sleeps(superuser) == 0
        async with adb.connection() as conn:
            assert await agents.count(conn) == 0
    # Nothing is left idle in a transaction in this test's database either.
    row = superuser.execute(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND state LIKE 'idle in transaction%%'"
    ).fetchone()
    assert row == (0,)
    async with adb.transaction() as tx:
        await agents.create(tx, {"owner_id": owner.id, "name": "kept", "type": "t"})
    async with adb.connection() as conn:
        assert [a.name for a in (await agents.list(conn)).items] == ["kept"]


async def test_claim_next_gives_each_execution_to_one_task(adb: AsyncDatabase) -> None:
    owner = await _owner(adb)
    async with adb.connection() as conn:
        workflow = await workflows.create(conn, {"owner_id": owner.id, "name": "w"})
        made = set()
        for _ in range(40):
            made.add((await executions.create(conn, {"workflow_id": workflow.id})).id)
    claimed: list[uuid.UUID] = []

    async def worker(name: str) -> None:
        async with adb.connection() as conn:
            while (execution := await executions.claim_next(conn, worker_id=name)) is not None:
                claimed.append(execution.id)
                await asyncio.sleep(0)  # let the other tasks in between claims

    await asyncio.gather(*(worker(f"t{i}") for i in range(4)))
    assert sorted(claimed) == sorted(made)


async def test_many_tasks_share_a_small_pool_within_the_bounded_wait(
    database_url: str,
) -> None:
    settings = load_settings(database_url=database_url, pool_max_size=2, pool_timeout=5.0)
    async with AsyncDatabase(settings, warn_if_privileged=False) as database:

        async def count() -> int:
            async with database.connection() as conn:
                await conn.execute("SELECT pg_sleep(0.05)")
                return await users.count(conn)

        assert await asyncio.gather(*(count() for _ in range(20))) == [0] * 20
        assert database.stats()["pool_size"] <= 2


async def test_an_exhausted_pool_raises_unavailable_after_the_bounded_wait(
    database_url: str,
) -> None:
    settings = load_settings(database_url=database_url, pool_max_size=1, pool_timeout=0.5)
    async with AsyncDatabase(settings, warn_if_privileged=False) as database:
        async with database.connection():
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(Unavailable, match="no database connection free"):
                async with database.connection():
                    pass
            assert 0.4 < loop.time() - started < 3
        async with database.connection() as conn:  # the pool recovers once one is returned
            assert await users.count(conn) == 0
