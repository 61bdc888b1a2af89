"""Redis cut and stalled during cached LLM calls: no exception reaches the
caller, each call stays within its latency bound, and the hit rate comes back."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.reliability.conftest import Row
from tests.support.tcp_proxy import TcpProxy
from toolkit.cache import CacheClient, CircuitBreaker, LLMCache

CALLS = int(os.environ.get("TOOLKIT_RELIABILITY_OPERATIONS", "2000"))
# A call may cost one socket timeout (50 ms) plus scheduling slack on a busy
# 2-core machine; with the breaker open it costs microseconds.
CALL_BOUND_S = 0.25


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"rel-{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis(host="127.0.0.1", port=6379)
    for key in client.scan_iter(match=f"{name}:*", count=1000):
        client.unlink(key)
    client.close()


def test_redis_cut_and_stalled_during_cached_llm_calls(namespace: str, report) -> None:
    requests = [
        {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": f"q{n}"}]}
        for n in range(50)
    ]
    phases = {
        "healthy": (0, 0.4),
        "cut": (0.4, 0.5),
        "stalled": (0.5, 0.7),
        "healed": (0.7, 0.85),
        "steady": (0.85, 1.0),
    }
    hits = dict.fromkeys(phases, 0)
    calls = dict.fromkeys(phases, 0)
    slowest = 0.0
    surfaced = 0
    recovered_at: float | None = None
    with TcpProxy(upstream_port=6379) as proxy:
        client = CacheClient.from_url(
            f"redis://127.0.0.1:{proxy.port}/0",
            namespace=namespace,
            breaker=CircuitBreaker(failure_threshold=3, recovery_timeout=0.2),
        )
        llm = LLMCache(client)
        for i in range(CALLS):
            at = i / CALLS
            phase = next(name for name, (lo, hi) in phases.items() if lo <= at < hi)
            if i == int(CALLS * 0.4):
                proxy.cut_all()
                proxy.refuse_new()
            elif i == int(CALLS * 0.5):
                proxy.restore()
                proxy.stall()
            elif i == int(CALLS * 0.7):
                proxy.restore()
                healed = time.monotonic()
            time.sleep(0.001)  # calls arrive over time, as an application's would
            request = requests[i % len(requests)]
            started = time.perf_counter()
            try:
                answer = llm.get_or_compute(request, lambda r=request: f"answer {r['messages']}")
            except Exception:  # the property under test: nothing reaches the caller
                surfaced += 1
                continue
            slowest = max(slowest, time.perf_counter() - started)
            calls[phase] += 1
            hits[phase] += answer.from_cache
            if phase == "healed" and answer.from_cache and recovered_at is None:
                recovered_at = time.monotonic() - healed
        client.close()
    healthy_rate = hits["healthy"] / calls["healthy"]
    steady_rate = hits["steady"] / calls["steady"]
    report(
        Row(
            "Redis cut, refused, then stalled (proxy) during cached LLM calls",
            CALLS,
            surfaced,
            0,
            0,
            f"first hit {1000 * (recovered_at or 0):.0f} ms after healing; hit rate "
            f"{healthy_rate:.0%} before, {steady_rate:.0%} after; slowest call "
            f"{1000 * slowest:.0f} ms",
        )
    )
    assert surfaced == 0
    assert slowest < CALL_BOUND_S
    assert recovered_at is not None
    assert steady_rate >= healthy_rate - 0.05
