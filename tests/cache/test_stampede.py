"""get_or_compute under concurrent misses: one computation, bounded waits, dead holders.

Hand-written concurrency tests of the sync API (threads and processes); the
async API's are in test_async_cache.py, the lease keeper's of both in
test_lease_keeper.py.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from typing import Any

import redis

from toolkit.cache import CacheClient, CachedResponse, LLMCache

from .redis_env import HEALTHY_TIMEOUT, REDIS_URL

REQUEST: dict[str, Any] = {
    "model": "fake-model",
    "messages": [{"role": "user", "content": "an expensive question"}],
    "temperature": 0,
}


def lease_key(cache: Any, request: dict[str, Any] = REQUEST) -> str:
    """The stampede lease key of ``request`` (an LLMCache's or an AsyncLLMCache's)."""
    prefix, fingerprint = cache.key(request).rsplit(":", 1)
    return f"{prefix}:lease:{fingerprint}"


def run_threads(count: int, target: Any) -> list[Any]:
    """Run ``target()`` in ``count`` threads released together; return the results."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        barrier.wait()
        try:
            results[index] = target()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    return results


def test_twenty_concurrent_misses_compute_once(llm: LLMCache, raw_redis: redis.Redis) -> None:
    calls: list[int] = []
    lock = threading.Lock()

    def expensive() -> dict[str, Any]:
        with lock:
            calls.append(1)
        time.sleep(0.3)
        return {"answer": 42, "usage": {"total_tokens": 7}}

    results = run_threads(20, lambda: llm.get_or_compute(REQUEST, expensive))
    assert len(calls) == 1
    assert all(isinstance(r, CachedResponse) for r in results)
    assert all(r.response == {"answer": 42, "usage": {"total_tokens": 7}} for r in results)
    assert sum(not r.from_cache for r in results) == 1
    assert all(r.usage == {"total_tokens": 7} for r in results)
    assert raw_redis.exists(lease_key(llm)) == 0  # released
    stats = llm.stats()
    assert stats.misses == 20  # each caller's first look
    assert stats.writes == 1


def _process_worker(namespace: str, counter_key: str, start: Any, out: Any) -> None:
    client = CacheClient.from_url(
        REDIS_URL,
        namespace=namespace,
        connect_timeout=HEALTHY_TIMEOUT,
        socket_timeout=HEALTHY_TIMEOUT,
    )
    cache = LLMCache(client)
    raw = redis.Redis.from_url(REDIS_URL)

    def expensive() -> str:
        raw.incr(counter_key)
        time.sleep(0.3)
        return "computed once"

    start.wait()
    out.put(cache.get_or_compute(REQUEST, expensive).response)


def test_concurrent_misses_across_processes_compute_once(
    namespace: str, raw_redis: redis.Redis
) -> None:
    context = multiprocessing.get_context("fork")
    start = context.Event()
    out = context.Queue()
    counter_key = f"{namespace}:test-counter"
    processes = [
        context.Process(target=_process_worker, args=(namespace, counter_key, start, out))
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    start.set()
    answers = [out.get(timeout=20) for _ in processes]
    for process in processes:
        process.join(timeout=10)
        assert process.exitcode == 0
    assert answers == ["computed once"] * 4
    assert raw_redis.get(counter_key) == b"1"


def _dying_holder(namespace: str, started: Any) -> None:
    client = CacheClient.from_url(
        REDIS_URL,
        namespace=namespace,
        connect_timeout=HEALTHY_TIMEOUT,
        socket_timeout=HEALTHY_TIMEOUT,
    )
    cache = LLMCache(client)

    def hang() -> str:
        started.set()
        time.sleep(60)
        return "never"

    cache.get_or_compute(REQUEST, hang, lease_ttl=0.5)


def test_waiters_compute_themselves_when_the_holder_dies(
    llm: LLMCache, raw_redis: redis.Redis, namespace: str
) -> None:
    context = multiprocessing.get_context("fork")
    started = context.Event()
    holder = context.Process(target=_dying_holder, args=(namespace, started))
    holder.start()
    try:
        assert started.wait(timeout=10)
        assert raw_redis.exists(lease_key(llm)) == 1
        os.kill(holder.pid or 0, signal.SIGKILL)  # dies holding the lease
    finally:
        holder.join(timeout=10)
    calls: list[int] = []
    lock = threading.Lock()

    def compute() -> str:
        with lock:
            calls.append(1)
        return "recomputed"

    began = time.monotonic()
    results = run_threads(5, lambda: llm.get_or_compute(REQUEST, compute, wait_timeout=10))
    elapsed = time.monotonic() - began
    assert [r.response for r in results] == ["recomputed"] * 5
    assert len(calls) == 1  # one waiter took the expired lease, the rest waited for it
    assert elapsed < 3, elapsed  # bounded by the dead holder's lease, not the wait timeout


def test_a_failing_holder_hands_over_at_once(llm: LLMCache) -> None:
    calls: list[str] = []
    lock = threading.Lock()
    first = threading.Event()

    def compute() -> str:
        with lock:
            calls.append("call")
            failing = len(calls) == 1
        if failing:
            first.set()
            time.sleep(0.2)
            raise RuntimeError("the model API failed")
        return "second try"

    outcomes: list[str] = []

    def call() -> None:
        try:
            outcomes.append(llm.get_or_compute(REQUEST, compute, lease_ttl=30).response)
        except RuntimeError as exc:
            outcomes.append(str(exc))

    began = time.monotonic()
    run_threads(6, call)
    assert time.monotonic() - began < 5  # nobody waited for the 30 s lease
    assert sorted(outcomes) == ["second try"] * 5 + ["the model API failed"]
    assert len(calls) == 2
