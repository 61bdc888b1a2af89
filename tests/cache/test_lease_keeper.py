"""The lease keeper: a computation longer than ``lease_ttl`` still runs once.

Hand-written per mode: a thread waits beside a sync holder, a task beside an
async one. The compute sleeps three lease lifetimes; without renewal the
lease would expire under it and the waiter (whose ``wait_timeout`` outlasts
the compute) would take the lease and compute a second time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
import redis

from toolkit.aio.cache import AsyncCacheClient, AsyncLLMCache
from toolkit.cache import CacheClient, CachedResponse, LLMCache

from .redis_env import HEALTHY_TIMEOUT, REDIS_URL
from .test_stampede import REQUEST, lease_key

LEASE_TTL = 0.3
COMPUTE = 3 * LEASE_TTL
WAIT_TIMEOUT = 10.0  # far longer than the compute: the waiter must not give up
KEEPER = "toolkit-lease-keeper"


def keeper_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == KEEPER]


def keeper_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == KEEPER and not t.done()]


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# -- sync: a holder thread and a waiter thread ---------------------------------


def test_sync_compute_longer_than_the_lease_runs_once(
    client: CacheClient, raw_redis: redis.Redis
) -> None:
    llm = LLMCache(client, lease_ttl=LEASE_TTL)
    lease = lease_key(llm)
    calls: list[int] = []
    started = threading.Event()
    lease_ttls_seen: list[int] = []

    def slow() -> dict[str, Any]:
        calls.append(1)
        started.set()
        time.sleep(COMPUTE)
        lease_ttls_seen.append(int(raw_redis.pttl(lease)))  # still held, three TTLs later
        return {"answer": 42}

    results: dict[str, CachedResponse] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            results[name] = llm.get_or_compute(REQUEST, slow, wait_timeout=WAIT_TIMEOUT)
        except BaseException as exc:
            errors.append(exc)

    holder = threading.Thread(target=run, args=("holder",))
    holder.start()
    assert started.wait(timeout=5)
    waiter = threading.Thread(target=run, args=("waiter",))
    waiter.start()
    holder.join(timeout=10)
    waiter.join(timeout=10)
    assert not errors, errors
    assert len(calls) == 1
    assert results["holder"].response == results["waiter"].response == {"answer": 42}
    assert not results["holder"].from_cache
    assert results["waiter"].from_cache
    assert lease_ttls_seen and lease_ttls_seen[0] > 0
    assert raw_redis.exists(lease) == 0  # released
    assert wait_until(lambda: not keeper_threads()), keeper_threads()


def test_sync_keeper_stops_and_releases_after_success_and_failure(
    client: CacheClient, raw_redis: redis.Redis
) -> None:
    llm = LLMCache(client, lease_ttl=LEASE_TTL)
    lease = lease_key(llm)
    running: list[int] = []

    def slow() -> str:
        running.append(len(keeper_threads()))
        time.sleep(LEASE_TTL)
        return "done"

    assert llm.get_or_compute(REQUEST, slow).response == "done"
    assert running == [1]  # the keeper ran while fn did
    assert raw_redis.exists(lease) == 0
    assert keeper_threads() == []  # joined in finally, not left behind

    def failing() -> str:
        running.append(len(keeper_threads()))
        raise RuntimeError("the model API failed")

    with pytest.raises(RuntimeError, match="model API"):
        llm.get_or_compute({**REQUEST, "seed": 1}, failing)
    assert running == [1, 1]
    assert raw_redis.exists(lease_key(llm)) == 0
    assert keeper_threads() == []


def test_sync_keeper_gives_up_a_lease_taken_by_someone_else(
    client: CacheClient, raw_redis: redis.Redis
) -> None:
    llm = LLMCache(client, lease_ttl=LEASE_TTL)
    lease = lease_key(llm)
    observed: list[bool] = []

    def slow() -> str:
        # Our lease is lost (expired, say) and someone else holds it now.
        raw_redis.set(lease, b"someone-else", px=60_000)
        observed.append(wait_until(lambda: not keeper_threads()))  # the keeper stops itself
        return "mine"

    assert llm.get_or_compute(REQUEST, slow).response == "mine"
    assert observed == [True]
    assert raw_redis.get(lease) == b"someone-else"  # neither extended nor released by us
    assert raw_redis.pttl(lease) > 50_000


# -- async: a holder task and a waiter task --------------------------------------


@pytest_asyncio.fixture
async def aclient(namespace: str) -> AsyncIterator[AsyncCacheClient]:
    cache = AsyncCacheClient.from_url(
        REDIS_URL,
        namespace=namespace,
        connect_timeout=HEALTHY_TIMEOUT,
        socket_timeout=HEALTHY_TIMEOUT,
    )
    yield cache
    await cache.close()


@pytest.mark.asyncio
async def test_async_compute_longer_than_the_lease_runs_once(
    aclient: AsyncCacheClient, raw_redis: redis.Redis
) -> None:
    llm = AsyncLLMCache(aclient, lease_ttl=LEASE_TTL)
    lease = lease_key(llm)
    calls: list[int] = []
    started = asyncio.Event()
    lease_ttls_seen: list[int] = []

    async def slow() -> dict[str, Any]:
        calls.append(1)
        started.set()
        await asyncio.sleep(COMPUTE)
        lease_ttls_seen.append(int(raw_redis.pttl(lease)))
        return {"answer": 42}

    holder = asyncio.create_task(llm.get_or_compute(REQUEST, slow, wait_timeout=WAIT_TIMEOUT))
    await asyncio.wait_for(started.wait(), timeout=5)
    waiter = asyncio.create_task(llm.get_or_compute(REQUEST, slow, wait_timeout=WAIT_TIMEOUT))
    first, second = await asyncio.wait_for(asyncio.gather(holder, waiter), timeout=10)
    assert len(calls) == 1
    assert first.response == second.response == {"answer": 42}
    assert not first.from_cache
    assert second.from_cache
    assert lease_ttls_seen and lease_ttls_seen[0] > 0
    assert raw_redis.exists(lease) == 0
    assert keeper_tasks() == []


@pytest.mark.asyncio
async def test_async_keeper_stops_and_releases_after_success_failure_and_cancel(
    aclient: AsyncCacheClient, raw_redis: redis.Redis
) -> None:
    llm = AsyncLLMCache(aclient, lease_ttl=LEASE_TTL)
    lease = lease_key(llm)
    running: list[int] = []
    started = asyncio.Event()

    async def slow() -> str:
        running.append(len(keeper_tasks()))
        await asyncio.sleep(LEASE_TTL)
        return "done"

    assert (await llm.get_or_compute(REQUEST, slow)).response == "done"
    assert running == [1]
    assert raw_redis.exists(lease) == 0
    assert keeper_tasks() == []

    async def failing() -> str:
        running.append(len(keeper_tasks()))
        raise RuntimeError("the model API failed")

    with pytest.raises(RuntimeError, match="model API"):
        await llm.get_or_compute({**REQUEST, "seed": 1}, failing)
    assert running == [1, 1]
    assert keeper_tasks() == []

    async def hang() -> str:
        started.set()
        await asyncio.sleep(60)
        return "never"

    task = asyncio.create_task(llm.get_or_compute({**REQUEST, "seed": 2}, hang))
    await asyncio.wait_for(started.wait(), timeout=5)
    assert raw_redis.exists(lease_key(llm, {**REQUEST, "seed": 2})) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert raw_redis.exists(lease_key(llm, {**REQUEST, "seed": 2})) == 0
    assert keeper_tasks() == []
    # The client is still healthy after the cancellation.
    assert (await llm.get_or_compute(REQUEST, slow)).from_cache
    assert aclient.breaker.state == "closed"


@pytest.mark.asyncio
async def test_async_keeper_gives_up_a_lease_taken_by_someone_else(
    aclient: AsyncCacheClient, raw_redis: redis.Redis
) -> None:
    llm = AsyncLLMCache(aclient, lease_ttl=LEASE_TTL)
    lease = lease_key(llm)
    observed: list[bool] = []

    async def slow() -> str:
        raw_redis.set(lease, b"someone-else", px=60_000)
        deadline = time.monotonic() + 5
        while keeper_tasks() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        observed.append(not keeper_tasks())
        return "mine"

    assert (await llm.get_or_compute(REQUEST, slow)).response == "mine"
    assert observed == [True]
    assert raw_redis.get(lease) == b"someone-else"
    assert raw_redis.pttl(lease) > 50_000
