"""Fail-open behaviour while Redis is cut off, stalled, refused or killed.

Faults come from the loopback TcpProxy in tests/support (in front of the
shared Redis) or from a private redis-server that the test kills. In every
case: no exception reaches the caller, each call is bounded in time, the
breaker opens once (one warning), calls then cost well under a millisecond,
and the cache works again once Redis is back.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.tcp_proxy import TcpProxy
from toolkit.cache import BreakerState, BypassReason, CacheClient, CircuitBreaker, LLMCache

from .redis_env import REDIS_PORT, PrivateRedis

# Connect and socket timeouts: the production default is 50 ms; twice that
# keeps a healthy call on a busy CI machine from timing out spuriously.
TIMEOUT = 0.1
CALL_BOUND = 0.6  # generous bound on one failing call: a connect plus a read timeout
REQUEST: dict[str, Any] = {
    "model": "fake-model",
    "messages": [{"role": "user", "content": "hello"}],
    "temperature": 0,
}


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    with TcpProxy(upstream_port=REDIS_PORT) as running:
        yield running


@pytest.fixture
def proxied(proxy: TcpProxy, namespace: str, fast_breaker: CircuitBreaker) -> Iterator[CacheClient]:
    """A client that reaches the shared Redis through the proxy, with 50 ms timeouts."""
    client = CacheClient.from_url(
        f"redis://{proxy.host}:{proxy.port}/0",
        namespace=namespace,
        connect_timeout=TIMEOUT,
        socket_timeout=TIMEOUT,
        breaker=fast_breaker,
    )
    yield client
    client.close()


def timed(call: Callable[[], object]) -> tuple[object, float]:
    began = time.perf_counter()
    result = call()
    return result, time.perf_counter() - began


def every_operation(client: CacheClient, llm: LLMCache) -> list[Callable[[], object]]:
    """One of each public call, all of which must fail open."""
    return [
        lambda: client.get("k"),
        lambda: client.set("k", "v"),
        lambda: client.get_json("j"),
        lambda: client.set_json("j", {"a": 1}),
        lambda: client.get_many(["k", "j"]),
        lambda: client.set_many({"x": "1"}),
        lambda: client.delete("k"),
        client.clear,
        client.ping,
        lambda: llm.get(REQUEST),
        lambda: llm.set(REQUEST, "r"),
        lambda: llm.invalidate(REQUEST),
        lambda: llm.invalidate_model("fake-model"),
        llm.invalidate_all,
        lambda: llm.get_or_compute(REQUEST, lambda: "computed"),
    ]


def expect_failed_open(result: object) -> None:
    """What a call returns while Redis is unreachable: a miss, a dropped write, nothing."""
    if isinstance(result, bool | int | dict | type(None)):
        assert not result
    else:
        assert getattr(result, "response", None) == "computed"
        assert getattr(result, "from_cache", True) is False


def wait_until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def assert_open_breaker_is_cheap(call: Callable[[], object], bound: float = 0.001) -> None:
    samples = []
    for _ in range(1000):
        began = time.perf_counter()
        call()
        samples.append(time.perf_counter() - began)
    assert statistics.median(samples) < bound, statistics.median(samples)


def test_dead_redis_fails_open_then_recovers(
    proxy: TcpProxy, proxied: CacheClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="toolkit.cache")
    llm = LLMCache(proxied)
    assert proxied.set("k", "before") and llm.set(REQUEST, "cached before")

    proxy.refuse_new()
    proxy.cut_all()
    for operation in every_operation(proxied, llm) * 3:
        result, elapsed = timed(operation)
        expect_failed_open(result)
        assert elapsed < CALL_BOUND, elapsed
    assert proxied.breaker.state is BreakerState.OPEN
    stats = proxied.stats()
    assert stats.errors >= 3
    assert stats.bypass_reasons[BypassReason.BREAKER_OPEN] > 0
    assert stats.breaker_state == "open" and stats.breaker_opens == 1

    assert_open_breaker_is_cheap(lambda: proxied.get("k"))
    assert_open_breaker_is_cheap(lambda: llm.get(REQUEST))
    assert_open_breaker_is_cheap(lambda: llm.set(REQUEST, "dropped"))

    proxy.restore()
    wait_until(lambda: proxied.get("k") == b"before")
    assert proxied.stats().breaker_state == "closed"
    hit = llm.get(REQUEST)
    assert hit is not None and hit.response == "cached before"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings  # opened once, closed once: not one per call
    assert "opened" in warnings[0] and "closed" in warnings[1]


def test_stalled_redis_costs_one_timeout_per_call_until_the_breaker_opens(
    proxy: TcpProxy, proxied: CacheClient
) -> None:
    assert proxied.set("k", "v")
    proxy.stall()
    durations = []
    for _ in range(3):
        result, elapsed = timed(lambda: proxied.get("k"))
        assert result is None
        durations.append(elapsed)
    assert all(TIMEOUT * 0.8 <= d < CALL_BOUND for d in durations), durations
    assert proxied.breaker.state is BreakerState.OPEN
    _, elapsed = timed(lambda: proxied.get("k"))
    assert elapsed < TIMEOUT / 2  # no more timeouts once open
    assert_open_breaker_is_cheap(lambda: proxied.set("k", "x"))

    proxy.restore()
    wait_until(lambda: proxied.get("k") == b"v")


def test_stalled_new_connections_time_out_too(proxy: TcpProxy, proxied: CacheClient) -> None:
    proxy.stall()
    proxy.cut_all()  # the pool must connect afresh, into the stall
    for _ in range(3):
        result, elapsed = timed(lambda: proxied.set("k", "v"))
        assert result is False
        assert elapsed < CALL_BOUND
    assert proxied.breaker.state is BreakerState.OPEN
    proxy.restore()
    wait_until(lambda: proxied.set("k", "v"))


def test_latency_below_the_timeout_is_tolerated(proxy: TcpProxy, proxied: CacheClient) -> None:
    proxied.set("k", "v")
    proxy.add_latency(0.01)  # 20 ms a round trip, well under the timeout
    for _ in range(5):
        assert proxied.get("k") == b"v"
    assert proxied.stats().errors == 0
    proxy.add_latency(0.3)  # now above the socket timeout
    for _ in range(3):
        result, elapsed = timed(lambda: proxied.get("k"))
        assert result is None and elapsed < CALL_BOUND
    assert proxied.breaker.state is BreakerState.OPEN


def test_cut_connections_reconnect_without_reaching_the_caller(
    proxy: TcpProxy, proxied: CacheClient
) -> None:
    proxied.set("k", "v")
    assert proxy.cut_all() >= 1
    proxied.get("k")  # may be a miss, must not raise
    assert proxied.get("k") == b"v"
    assert proxied.breaker.state is BreakerState.CLOSED


def test_get_or_compute_runs_the_function_while_redis_is_down(
    proxy: TcpProxy, proxied: CacheClient
) -> None:
    llm = LLMCache(proxied)
    proxy.refuse_new()
    proxy.cut_all()
    calls: list[int] = []

    def compute() -> str:
        calls.append(1)
        return "computed"

    for _ in range(10):
        result = llm.get_or_compute(REQUEST, compute)
        assert result.response == "computed" and not result.from_cache
    assert len(calls) == 10


def test_killed_and_restarted_redis_server(
    private_redis: PrivateRedis, namespace: str, fast_breaker: CircuitBreaker
) -> None:
    client = CacheClient.from_url(
        private_redis.url,
        namespace=namespace,
        connect_timeout=TIMEOUT,
        socket_timeout=TIMEOUT,
        breaker=fast_breaker,
    )
    llm = LLMCache(client)
    try:
        assert llm.set(REQUEST, "answer")
        private_redis.stop()
        for operation in every_operation(client, llm):
            result, elapsed = timed(operation)
            expect_failed_open(result)
            assert elapsed < CALL_BOUND
        assert client.breaker.state is BreakerState.OPEN
        assert_open_breaker_is_cheap(lambda: llm.get(REQUEST))

        private_redis.start()  # same port, empty (nothing persisted)
        wait_until(client.ping)
        assert llm.get(REQUEST) is None
        assert llm.set(REQUEST, "answer again")
        hit = llm.get(REQUEST)
        assert hit is not None and hit.response == "answer again"
        assert client.stats().breaker_state == "closed"
    finally:
        client.close()
