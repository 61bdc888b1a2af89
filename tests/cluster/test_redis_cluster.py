"""The cache on a real Redis Cluster: six private ``redis-server --cluster-enabled`` nodes
(three masters, three replicas) on free loopback ports, started and removed here.

* every key of a 500-key batch comes back (keys of many slots, several tenants);
* the LLM cache's own behaviours (hit, miss, lease and stampede, generations,
  tenants, clear over every master) hold on the cluster;
* a master fails under load from several callers: no exception reaches a
  caller, every call returns within its bound (misses while the slot moves),
  hits resume on the promoted replica, and the time to the first hit on the
  moved slot is measured.

Each scenario runs with the sync and the async API. The machine's Redis on
6379 is never touched.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from tests.cluster.conftest import Row
from tests.reliability.private_servers import (
    PrivateRedisCluster,
    private_redis_cluster,
    redis_cluster_available,
)
from toolkit.aio.cache import AsyncCacheClient, AsyncLLMCache
from toolkit.cache import CacheClient, CircuitBreaker, LLMCache
from toolkit.cache.cluster import slot_of
from toolkit.cache.entries import key_prefix

pytestmark = pytest.mark.skipif(
    not redis_cluster_available(), reason="redis-server and redis-cli are needed"
)

MODES = ["sync", "async"]
HEALTHY_TIMEOUT = 2.0
FAILOVER_TIMEOUT = 0.25
"""Connect and socket timeout of the clients under failover (the machine is shared and busy)."""
CALL_BOUND = 1.0
"""The longest a cache call may take while a master fails: a timeout, redis-py's fixed
0.25 s pause on CLUSTERDOWN and one topology refresh, with room for a busy machine."""
RECOVERY_LIMIT = 30.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateRedisCluster]:
    """One private cluster shared by the scenarios that do not fail a node."""
    with private_redis_cluster() as started:
        yield started


def _request(tag: str, i: int) -> dict[str, Any]:
    return {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": f"{tag} question {i}"}],
        "temperature": 0,
    }


def _primaries(cluster: PrivateRedisCluster) -> list[int]:
    """The ports of the live masters."""
    ports = []
    for port in cluster.ports:
        if cluster.alive(port) and "role:master" in cluster.cli(port, "INFO", "replication"):
            ports.append(port)
    return ports


def _keys_on(port: int, pattern: str) -> int:
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=HEALTHY_TIMEOUT) as node:
        return sum(1 for _ in node.scan_iter(match=pattern, count=500))


# -- 500-key batch ----------------------------------------------------------------


def _batch() -> dict[str, bytes]:
    tenants = [uuid.uuid4() for _ in range(10)]
    items = {f"{{{t}}}:item-{j}": f"{t}/{j}".encode() for t in tenants for j in range(20)}
    items.update({f"plain-{i}": f"plain/{i}".encode() for i in range(300)})
    assert len(items) == 500
    return items


@pytest.mark.parametrize("mode", MODES)
def test_a_500_key_batch_comes_back_whole(
    cluster: PrivateRedisCluster, report: Callable[[Row], None], mode: str
) -> None:
    items = _batch()
    namespace = f"b-{uuid.uuid4().hex[:8]}"
    kwargs = {
        "namespace": namespace,
        "connect_timeout": HEALTHY_TIMEOUT,
        "socket_timeout": HEALTHY_TIMEOUT,
    }
    errors = 0
    if mode == "sync":
        client = CacheClient.from_url(cluster.url, **kwargs)
        try:
            stored = client.set_many(items)
            found = client.get_many(items)
        except Exception:
            errors += 1
            raise
        finally:
            stats = client.stats()
            client.close()
    else:

        async def run() -> tuple[bool, dict[str, bytes], Any]:
            client = AsyncCacheClient.from_url(cluster.url, **kwargs)
            try:
                return await client.set_many(items), await client.get_many(items), client.stats()
            finally:
                await client.close()

        stored, found, stats = asyncio.run(run())
    slots = {slot_of(f"{namespace}:{k}") for k in items}
    masters = {cluster.master_of(s) for s in slots}
    wrong = sum(1 for k, v in items.items() if found.get(k) != v)
    report(
        Row(
            f"Redis Cluster: 500-key batch ({mode}, {len(slots)} slots, {len(masters)} masters)",
            operations=len(items),
            errors_surfaced=errors,
            stale_reads=None,
            lost=wrong,
            applied_twice=None,
            time_to_recover="n/a",
        )
    )
    assert stored is True
    assert len(masters) == 3, "the batch must span every master"
    assert wrong == 0, f"{wrong} of 500 keys did not come back with their value"
    assert stats.hits == 500 and stats.errors == 0


# -- the cache's behaviours on the cluster --------------------------------------------


def test_llm_cache_behaviours_on_the_cluster_sync(
    cluster: PrivateRedisCluster, report: Callable[[Row], None]
) -> None:
    namespace = f"l-{uuid.uuid4().hex[:8]}"
    client = CacheClient.from_url(
        cluster.url,
        namespace=namespace,
        connect_timeout=HEALTHY_TIMEOUT,
        socket_timeout=HEALTHY_TIMEOUT,
    )
    shared = LLMCache(client)
    tenants = [shared.for_tenant(uuid.uuid4()) for _ in range(6)]
    caches = [shared, *tenants]
    operations = 0
    try:
        # Miss, then hit, for every tenant (their tags land on several masters).
        for n, cache in enumerate(caches):
            request = _request("behaviour", n)
            assert cache.get(request) is None
            assert cache.set(request, f"answer {n}") is True
            hit = cache.get(request)
            assert hit is not None and hit.response == f"answer {n}" and hit.from_cache
            operations += 3
        # Tenants are apart: another tenant's identical request misses.
        assert tenants[0].get(_request("behaviour", 2)) is None
        operations += 1
        # Stampede: eight threads miss at once, the compute runs once, the lease is released.
        calls: list[int] = []
        request = _request("stampede", 0)

        def compute() -> str:
            calls.append(1)
            time.sleep(0.3)
            return "computed once"

        results: list[Any] = []
        threads = [
            threading.Thread(
                target=lambda: results.append(tenants[1].get_or_compute(request, compute))
            )
            for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        operations += 8
        assert len(calls) == 1
        assert [r.response for r in results] == ["computed once"] * 8
        lease = key_prefix(namespace, tenants[1].tenant) + "lease:*"
        assert sum(_keys_on(p, lease) for p in _primaries(cluster)) == 0, "lease not released"
        # Generations: a model's invalidation misses its entries for that tenant only.
        assert tenants[2].invalidate_model("gpt-test") is True
        assert tenants[2].get(_request("behaviour", 3)) is None
        assert tenants[3].get(_request("behaviour", 4)) is not None
        assert shared.invalidate_all() is True
        assert shared.get(_request("behaviour", 0)) is None
        operations += 5
        # clear() empties the namespace on every master (plain keys reach all three).
        assert client.set_many({f"plain-{i}": b"x" for i in range(30)}) is True
        on_masters = {p: _keys_on(p, f"{namespace}:*") for p in _primaries(cluster)}
        assert sum(1 for n in on_masters.values() if n) == 3, on_masters
        deleted = client.clear()
        operations += 1
        left = sum(_keys_on(p, f"{namespace}:*") for p in _primaries(cluster))
        assert deleted == sum(on_masters.values())
        stats = client.stats()
    finally:
        client.close()
    report(
        Row(
            "Redis Cluster: LLM cache hit/miss/lease/generation/clear (sync)",
            operations=operations,
            errors_surfaced=0,
            stale_reads=None,
            lost=None,
            applied_twice=len(calls) - 1,
            time_to_recover="n/a",
        )
    )
    assert left == 0
    assert stats.errors == 0


def test_llm_cache_behaviours_on_the_cluster_async(
    cluster: PrivateRedisCluster, report: Callable[[Row], None]
) -> None:
    namespace = f"l-{uuid.uuid4().hex[:8]}"
    calls: list[int] = []

    async def run() -> tuple[int, int, int, Any]:
        client = AsyncCacheClient.from_url(
            cluster.url,
            namespace=namespace,
            connect_timeout=HEALTHY_TIMEOUT,
            socket_timeout=HEALTHY_TIMEOUT,
        )
        shared = AsyncLLMCache(client)
        tenants = [shared.for_tenant(uuid.uuid4()) for _ in range(6)]
        operations = 0
        try:
            for n, cache in enumerate([shared, *tenants]):
                request = _request("behaviour", n)
                assert await cache.get(request) is None
                assert await cache.set(request, f"answer {n}") is True
                hit = await cache.get(request)
                assert hit is not None and hit.response == f"answer {n}"
                operations += 3
            assert await tenants[0].get(_request("behaviour", 2)) is None
            request = _request("stampede", 0)

            async def compute() -> str:
                calls.append(1)
                await asyncio.sleep(0.3)
                return "computed once"

            results = await asyncio.gather(
                *(tenants[1].get_or_compute(request, compute) for _ in range(8))
            )
            operations += 9
            assert [r.response for r in results] == ["computed once"] * 8
            lease = key_prefix(namespace, tenants[1].tenant) + "lease:*"
            assert sum(_keys_on(p, lease) for p in _primaries(cluster)) == 0
            assert await tenants[2].invalidate_model("gpt-test") is True
            assert await tenants[2].get(_request("behaviour", 3)) is None
            assert await tenants[3].get(_request("behaviour", 4)) is not None
            assert await shared.invalidate_all() is True
            assert await shared.get(_request("behaviour", 0)) is None
            operations += 5
            assert await client.set_many({f"plain-{i}": b"x" for i in range(30)}) is True
            on_masters = {p: _keys_on(p, f"{namespace}:*") for p in _primaries(cluster)}
            assert sum(1 for n in on_masters.values() if n) == 3, on_masters
            deleted = await client.clear()
            operations += 1
            assert deleted == sum(on_masters.values())
            left = sum(_keys_on(p, f"{namespace}:*") for p in _primaries(cluster))
            return operations, left, deleted, client.stats()
        finally:
            await client.close()

    operations, left, _, stats = asyncio.run(run())
    report(
        Row(
            "Redis Cluster: LLM cache hit/miss/lease/generation/clear (async)",
            operations=operations,
            errors_surfaced=0,
            stale_reads=None,
            lost=None,
            applied_twice=len(calls) - 1,
            time_to_recover="n/a",
        )
    )
    assert len(calls) == 1
    assert left == 0
    assert stats.errors == 0


# -- failover under load ------------------------------------------------------------


@dataclass
class Load:
    """What the callers saw while a master failed."""

    calls: int = 0
    raised: int = 0
    slowest: float = 0.0
    moved_hits_after_failure: list[float] = field(default_factory=list)
    other_hits: int = 0
    misses: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(
        self, started: float, finished: float, hit: bool, moved: bool, dead_at: float
    ) -> None:
        """One call; a hit on the moved slot counts as recovery only if the call started
        after the master was known dead."""
        with self.lock:
            self.calls += 1
            self.slowest = max(self.slowest, finished - started)
            if not hit:
                self.misses += 1
            elif moved and dead_at and started > dead_at:
                self.moved_hits_after_failure.append(finished)
            else:
                self.other_hits += 1


@dataclass
class Plan:
    """The entries under load and the master that will fail."""

    requests: list[tuple[int, dict[str, Any]]]
    """(tenant index, request) of every stored entry."""
    tenants: list[uuid.UUID]
    moved: set[int]
    """Indexes of the tenants whose slot the failing master serves."""
    victim: int


def _plan(cluster: PrivateRedisCluster, namespace: str) -> Plan:
    tenants = [uuid.uuid4() for _ in range(12)]
    slots = [slot_of(key_prefix(namespace, t)) for t in tenants]
    victim = cluster.master_of(slots[0])
    moved = {i for i, s in enumerate(slots) if cluster.master_of(s) == victim}
    requests = [(i, _request(f"failover-{i}", j)) for i in range(len(tenants)) for j in range(5)]
    return Plan(requests, tenants, moved, victim)


def _replicated(cluster: PrivateRedisCluster, port: int) -> bool:
    """Whether ``port``'s replica has every write the master has."""
    info = cluster.cli(port, "INFO", "replication")
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    offset = fields.get("master_repl_offset", "").strip()
    replica = fields.get("slave0", "")
    return bool(offset) and f"offset={offset}," in replica


def _fail(cluster: PrivateRedisCluster, port: int, how: str) -> None:
    if how == "segfault":
        cluster.cli(port, "DEBUG", "SEGFAULT")
        deadline = time.monotonic() + 10
        while cluster.alive(port) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not cluster.alive(port)
    else:
        cluster.kill(port)


def _record_failover(
    report: Callable[[Row], None], mode: str, how: str, load: Load, failed_at: float, lost: int
) -> float | None:
    recovered = (
        min(load.moved_hits_after_failure) - failed_at if load.moved_hits_after_failure else None
    )
    report(
        Row(
            f"Redis Cluster: master {how} under load ({mode}), slowest call {load.slowest:.3f} s",
            operations=load.calls,
            errors_surfaced=load.raised,
            stale_reads=None,
            lost=lost,
            applied_twice=None,
            time_to_recover="not recovered" if recovered is None else f"{recovered:.2f} s",
        )
    )
    return recovered


def _assert_failover(load: Load, recovered: float | None, lost: int) -> None:
    assert load.raised == 0, f"{load.raised} calls raised to their caller"
    assert load.slowest < CALL_BOUND, f"a call took {load.slowest:.3f} s"
    assert load.misses > 0, "the failed master's slots must have been misses for a while"
    assert recovered is not None, "no hit on the moved slot after the replica took over"
    assert lost == 0, f"{lost} replicated entries were not served after the failover"


def test_a_master_fails_under_load_sync(report: Callable[[Row], None]) -> None:
    with private_redis_cluster() as cluster:
        namespace = f"f-{uuid.uuid4().hex[:8]}"
        client = CacheClient.from_url(
            cluster.url,
            namespace=namespace,
            connect_timeout=FAILOVER_TIMEOUT,
            socket_timeout=FAILOVER_TIMEOUT,
            breaker=CircuitBreaker(failure_threshold=3, recovery_timeout=0.5),
        )
        base = LLMCache(client)
        plan = _plan(cluster, namespace)
        caches = [base.for_tenant(t) for t in plan.tenants]
        for i, request in plan.requests:
            assert caches[i].set(request, f"answer {i}") is True
        deadline = time.monotonic() + 10
        while not _replicated(cluster, plan.victim) and time.monotonic() < deadline:
            time.sleep(0.05)

        load = Load()
        failed_at = [0.0]
        stop = threading.Event()

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                i, request = rng.choice(plan.requests)
                started = time.monotonic()
                try:
                    found = caches[i].get(request)
                except Exception:
                    with load.lock:
                        load.raised += 1
                    continue
                load.record(
                    started, time.monotonic(), found is not None, i in plan.moved, failed_at[0]
                )

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1.0)
            _fail(cluster, plan.victim, "segfault")
            failed_at[0] = time.monotonic()  # the process is gone: no call can reach it now
            limit = failed_at[0] + RECOVERY_LIMIT
            while not load.moved_hits_after_failure and time.monotonic() < limit:
                time.sleep(0.05)
            time.sleep(1.0)  # hits keep coming once recovered
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        lost = sum(1 for i, request in plan.requests if caches[i].get(request) is None)
        client.close()
    recovered = _record_failover(report, "sync", "DEBUG SEGFAULT", load, failed_at[0], lost)
    _assert_failover(load, recovered, lost)


def test_a_master_fails_under_load_async(report: Callable[[Row], None]) -> None:
    with private_redis_cluster() as cluster:
        namespace = f"f-{uuid.uuid4().hex[:8]}"
        plan = _plan(cluster, namespace)
        load = Load()
        failed_at = [0.0]

        async def run() -> int:
            client = AsyncCacheClient.from_url(
                cluster.url,
                namespace=namespace,
                connect_timeout=FAILOVER_TIMEOUT,
                socket_timeout=FAILOVER_TIMEOUT,
                breaker=CircuitBreaker(failure_threshold=3, recovery_timeout=0.5),
            )
            base = AsyncLLMCache(client)
            caches = [base.for_tenant(t) for t in plan.tenants]
            for i, request in plan.requests:
                assert await caches[i].set(request, f"answer {i}") is True
            deadline = time.monotonic() + 10
            while not _replicated(cluster, plan.victim) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            stop = asyncio.Event()

            async def worker(seed: int) -> None:
                rng = random.Random(seed)
                while not stop.is_set():
                    i, request = rng.choice(plan.requests)
                    started = time.monotonic()
                    try:
                        found = await caches[i].get(request)
                    except Exception:
                        load.raised += 1
                        continue
                    load.record(
                        started, time.monotonic(), found is not None, i in plan.moved, failed_at[0]
                    )
                    await asyncio.sleep(0)

            tasks = [asyncio.create_task(worker(n)) for n in range(4)]
            try:
                await asyncio.sleep(1.0)
                # Killed from a thread: the loop keeps serving the callers meanwhile.
                await asyncio.to_thread(_fail, cluster, plan.victim, "kill")
                failed_at[0] = time.monotonic()
                limit = failed_at[0] + RECOVERY_LIMIT
                while not load.moved_hits_after_failure and time.monotonic() < limit:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(1.0)
            finally:
                stop.set()
                await asyncio.gather(*tasks)
            lost = 0
            for i, request in plan.requests:
                if await caches[i].get(request) is None:
                    lost += 1
            await client.close()
            return lost

        lost = asyncio.run(run())
    recovered = _record_failover(report, "async", "killed", load, failed_at[0], lost)
    _assert_failover(load, recovered, lost)
