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
# A call slower than this is one the stall held up.
STALL_S = 0.04


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"rel-{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis(host="127.0.0.1", port=6379)
    for key in client.scan_iter(match=f"{name}:*", count=1000):
        client.unlink(key)
    client.close()


def expected_answer(request: dict) -> str:
    """What the model would answer to ``request``: unique to that request."""
    return f"answer to {request['messages'][0]['content']}"


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
    # Calls the outage visibly hurt: a miss (the answer recomputed) or a call past STALL_S.
    hurt = dict.fromkeys(phases, 0)
    slowest = 0.0
    surfaced = wrong = recomputed = 0
    computed: set[int] = set()
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
            number = i % len(requests)
            request = requests[number]
            started = time.perf_counter()
            try:
                answer = llm.get_or_compute(request, lambda r=request: expected_answer(r))
            except Exception:  # the property under test: nothing reaches the caller
                surfaced += 1
                continue
            took = time.perf_counter() - started
            slowest = max(slowest, took)
            calls[phase] += 1
            hits[phase] += answer.from_cache
            hurt[phase] += (not answer.from_cache) or took > STALL_S
            wrong += answer.response != expected_answer(request)
            if not answer.from_cache:
                # Computing again an answer the cache had, while the cache was healthy.
                recomputed += number in computed and phase in ("healthy", "steady")
                computed.add(number)
            if phase == "healed" and answer.from_cache and recovered_at is None:
                recovered_at = time.monotonic() - healed
        client.close()
    # What the cache holds afterwards, read straight from Redis (no proxy).
    direct_client = CacheClient.from_url("redis://127.0.0.1:6379/0", namespace=namespace)
    direct = LLMCache(direct_client)
    stored = [direct.get(request) for request in requests]
    direct_client.close()
    lost = sum(1 for entry in stored if entry is None)
    wrong += sum(
        1
        for request, entry in zip(requests, stored, strict=True)
        if entry is not None and entry.response != expected_answer(request)
    )
    healthy_rate = hits["healthy"] / max(1, calls["healthy"])
    steady_rate = hits["steady"] / max(1, calls["steady"])
    outage_hurt = hurt["cut"] + hurt["stalled"]
    report(
        Row(
            "Redis cut, refused, then stalled (proxy) during cached LLM calls",
            CALLS,
            surfaced,
            None,
            wrong,
            lost,
            recomputed,
            (
                "never a hit after healing"
                if recovered_at is None
                else f"first hit {1000 * recovered_at:.0f} ms after healing"
            )
            + f"; hit rate {healthy_rate:.0%} before, {steady_rate:.0%} after; "
            f"{outage_hurt:,} calls missed or stalled during the outage; slowest call "
            f"{1000 * slowest:.0f} ms",
        )
    )
    assert hits["healthy"] > 0 and hits["steady"] > 0, "no hit before or after the outage"
    assert outage_hurt > 0, "the outage never touched a call"
    assert (surfaced, wrong, lost, recomputed) == (0, 0, 0, 0)
    assert slowest < CALL_BOUND_S
    assert recovered_at is not None
    assert steady_rate >= healthy_rate - 0.05
