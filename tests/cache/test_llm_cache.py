"""LLMCache and AsyncLLMCache against the real Redis: values, TTLs, invalidation, policies,
corrupt entries. Every test runs in both modes (tests/support/modes.py)."""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from typing import Any

import pytest
import redis

from toolkit.cache import (
    BypassReason,
    CacheClient,
    CachedResponse,
    LLMCache,
    SecretDetector,
    SecretPattern,
)
from toolkit.errors import InvalidInput

from .conftest import Api
from .test_detector import SECRETS

pytestmark = pytest.mark.usefixtures("mode")


def request(
    content: str = "What is 2+2?", model: str = "gpt-4o-mini", **extra: Any
) -> dict[str, Any]:
    """A deterministic chat request (temperature 0)."""
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": content},
        ],
        "temperature": 0,
        **extra,
    }


def stored_keys(raw: redis.Redis, client: CacheClient) -> list[bytes]:
    """Entry keys (not generations or leases) under the client's namespace."""
    keys = raw.scan_iter(match=f"{client.namespace}:llm:v1:*")
    return [k for k in keys if b":gen" not in k and b":lease:" not in k]


def test_round_trip_with_metadata(llm: LLMCache) -> None:
    before = time.time()
    assert llm.get(request()) is None
    assert llm.set(request(), "4", usage={"prompt_tokens": 12, "completion_tokens": 1})
    hit = llm.get(request())
    assert isinstance(hit, CachedResponse)
    assert hit.response == "4"
    assert hit.from_cache
    assert hit.model == "gpt-4o-mini"
    assert hit.usage == {"prompt_tokens": 12, "completion_tokens": 1}
    assert before - 1 <= hit.created_at <= time.time() + 1


@pytest.mark.parametrize(
    "response",
    [
        {"choices": [{"message": {"role": "assistant", "content": "4"}}], "n": 1.5},
        ["a", 1, None, True],
        "",
        "é ✓ \U0001f600 and a lone surrogate \ud800",
        42,
        None,
    ],
)
def test_any_json_response_round_trips(llm: LLMCache, response: Any) -> None:
    assert llm.set(request(), response)
    hit = llm.get(request())
    assert hit is not None
    assert hit.response == response


def test_usage_is_taken_from_an_openai_shaped_response(llm: LLMCache) -> None:
    response = {"choices": [], "usage": {"total_tokens": 9}}
    llm.set(request(), response)
    hit = llm.get(request())
    assert hit is not None and hit.usage == {"total_tokens": 9}


def test_default_ttl_is_a_day_minus_a_little_jitter(
    llm: LLMCache, client: CacheClient, raw_redis: redis.Redis
) -> None:
    ttls = []
    for i in range(10):
        llm.set(request(f"q{i}"), "a")
        ttls.append(raw_redis.ttl(llm.key(request(f"q{i}"))))
    assert all(0.95 * 86400 - 2 <= ttl <= 86400 for ttl in ttls), ttls
    assert len(set(ttls)) > 1  # spread out, not all expiring at once
    llm.set(request("short"), "a", ttl=60)
    assert 55 <= raw_redis.ttl(llm.key(request("short"))) <= 60


def test_constructor_ttl_and_no_jitter(
    client: CacheClient, raw_redis: redis.Redis, api: Api
) -> None:
    cache = api.llm(client, ttl=120, ttl_jitter=0)
    cache.set(request(), "a")
    assert 118 <= raw_redis.ttl(cache.key(request())) <= 120


def test_invalidate_one_request(llm: LLMCache) -> None:
    llm.set(request("a"), "A")
    llm.set(request("b"), "B")
    assert llm.invalidate(request("a"))
    assert not llm.invalidate(request("a"))
    assert llm.get(request("a")) is None
    assert llm.get(request("b")) is not None


def test_invalidate_model_is_one_command_and_spares_other_models(
    llm: LLMCache, client: CacheClient, raw_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(20):
        llm.set(request(f"q{i}", model="model-a"), "A")
    llm.set(request(model="model-b"), "B")
    sent: list[str] = []
    original: Callable[..., object] = client.redis.execute_command

    def recording(*args: object, **options: object) -> object:
        sent.append(str(args[0]).upper())
        return original(*args, **options)

    monkeypatch.setattr(client.redis, "execute_command", recording)
    assert llm.invalidate_model("model-a")
    assert sent == ["SET"]  # O(1): no SCAN, no DEL of entries
    monkeypatch.undo()
    assert all(llm.get(request(f"q{i}", model="model-a")) is None for i in range(20))
    assert llm.get(request(model="model-b")) is not None
    # Stale entries are deleted when read, and new writes count again.
    assert len(stored_keys(raw_redis, client)) == 1
    llm.set(request("q0", model="model-a"), "A2")
    hit = llm.get(request("q0", model="model-a"))
    assert hit is not None and hit.response == "A2"


def test_invalidate_all(llm: LLMCache) -> None:
    llm.set(request(model="model-a"), "A")
    llm.set(request(model="model-b"), "B")
    assert llm.invalidate_all()
    assert llm.get(request(model="model-a")) is None
    assert llm.get(request(model="model-b")) is None
    llm.set(request(model="model-a"), "A2")
    assert llm.get(request(model="model-a")) is not None


def test_invalidate_all_spares_other_namespaces(
    llm: LLMCache, raw_redis: redis.Redis, namespace: str, api: Api
) -> None:
    other = api.client("redis://127.0.0.1:6379/0", namespace=f"{namespace}-other")
    try:
        other_llm = api.llm(other)
        other_llm.set(request(), "other")
        llm.set(request(), "mine")
        llm.invalidate_all()
        assert llm.get(request()) is None
        hit = other_llm.get(request())
        assert hit is not None and hit.response == "other"
    finally:
        other.clear()
        other.close()


def test_a_lost_generation_key_never_revives_old_entries(
    llm: LLMCache, client: CacheClient, raw_redis: redis.Redis
) -> None:
    llm.set(request(), "old")
    llm.invalidate_model("gpt-4o-mini")
    # The generation key is evicted (or deleted) and a new one is made.
    for key in raw_redis.scan_iter(match=f"{client.namespace}:llm:v1:{{shared}}:gen*"):
        raw_redis.delete(key)
    llm.set(request("other"), "x")
    assert llm.get(request()) is None


def test_sensitive_requests_are_never_stored(
    llm: LLMCache, client: CacheClient, raw_redis: redis.Redis
) -> None:
    secret_request = request(sensitive=True)
    assert not llm.set(secret_request, "4")
    assert llm.get(secret_request) is None
    calls: list[int] = []

    def compute() -> str:
        calls.append(1)
        return "4"

    for _ in range(3):
        result = llm.get_or_compute(secret_request, compute)
        assert not result.from_cache
    assert len(calls) == 3
    assert stored_keys(raw_redis, client) == []
    stats = llm.stats()
    assert stats.bypasses == 5
    assert stats.bypass_reasons == {BypassReason.SENSITIVE: 5}
    # The flag is not part of the key: the plain request is a separate, cacheable one.
    assert llm.key(secret_request) == llm.key(request())


def test_secret_in_request_bypasses(
    llm: LLMCache, client: CacheClient, raw_redis: redis.Redis
) -> None:
    leaky = request(f"my key is {SECRETS['api_key_sk']}, why does it fail?")
    assert not llm.set(leaky, "rotate it")
    assert llm.get(leaky) is None
    leaky_system = request()
    leaky_system["messages"][0]["content"] = SECRETS["private_key_block"]
    assert llm.get_or_compute(leaky_system, lambda: "ok").response == "ok"
    assert stored_keys(raw_redis, client) == []
    assert llm.stats().bypass_reasons == {BypassReason.SECRET_IN_REQUEST: 3}


def test_secret_in_response_is_not_stored(
    llm: LLMCache, client: CacheClient, raw_redis: redis.Redis
) -> None:
    assert not llm.set(request(), {"content": f"here you go: {SECRETS['aws_access_key_id']}"})
    result = llm.get_or_compute(request("b"), lambda: SECRETS["github_token"])
    assert result.response == SECRETS["github_token"]
    assert stored_keys(raw_redis, client) == []
    assert llm.stats().bypass_reasons == {BypassReason.SECRET_IN_RESPONSE: 2}


def test_custom_and_disabled_detectors(client: CacheClient, api: Api) -> None:
    custom = api.llm(
        client,
        secret_detector=SecretDetector(
            extra_patterns=[SecretPattern("acme", r"ACME-\d{6}", hints=("acme-",))]
        ),
    )
    assert not custom.set(request("ticket ACME-123456"), "x")
    assert not custom.set(request("key sk-proj-abcdefghijklmnopqrstuvwxyz0123"), "x")
    only_mine = api.llm(client, secret_detector=SecretDetector({"acme": r"ACME-\d{6}"}))
    assert only_mine.set(request("key sk-proj-abcdefghijklmnopqrstuvwxyz0123"), "x")
    off = api.llm(client, secret_detector=None)
    assert off.set(request("ticket ACME-123456"), "x")


def test_nondeterministic_requests_bypass_by_default(llm: LLMCache) -> None:
    sampled = request(temperature=0.7)
    no_temperature = request()
    del no_temperature["temperature"]
    for sampling in (sampled, no_temperature):
        assert not llm.set(sampling, "x")
        assert llm.get(sampling) is None
    seeded = request(temperature=0.7, seed=3)
    assert llm.set(seeded, "x")
    assert llm.get(seeded) is not None
    assert llm.stats().bypass_reasons == {BypassReason.NONDETERMINISTIC: 4}


def test_nondeterministic_requests_cached_when_asked(client: CacheClient, api: Api) -> None:
    cache = api.llm(client, cache_nondeterministic=True)
    sampled = request(temperature=0.7)
    assert cache.set(sampled, "x")
    hit = cache.get(sampled)
    assert hit is not None and hit.response == "x"


def test_large_values_are_compressed_small_ones_not(
    client: CacheClient, raw_redis: redis.Redis, api: Api
) -> None:
    cache = api.llm(client, compress_threshold=4096)
    big = "the quick brown fox jumps over the lazy dog " * 500
    cache.set(request("big"), big)
    cache.set(request("small"), "tiny")
    stored_big = raw_redis.get(cache.key(request("big")))
    stored_small = raw_redis.get(cache.key(request("small")))
    assert stored_big is not None and stored_small is not None
    assert stored_big[0] == 0x02 and len(stored_big) < len(big) // 5
    assert stored_small[0] == 0x01
    hit = cache.get(request("big"))
    assert hit is not None and hit.response == big


def test_long_strings_inside_json_are_stored_apart(llm: LLMCache, raw_redis: redis.Redis) -> None:
    long_text = "an answer with unicode é ✓ \U0001f600 " * 200  # over SPLIT_MIN_CHARS
    response = {
        "choices": [
            {"message": {"role": "assistant", "content": long_text}, "index": 0},
            {"message": {"role": "assistant", "content": ""}, "index": 1},
        ],
        "notes": ["short", long_text[:300], ["nested", long_text[::-1]]],  # cut, kept, cut
        "usage": {"total_tokens": 3},
    }
    llm.set(request(), response)
    stored = raw_redis.get(llm.key(request()))
    assert stored is not None and stored[33:34] == b"p"
    hit = llm.get(request())
    assert hit is not None and hit.response == response
    assert hit.usage == {"total_tokens": 3}
    llm.set(request("int keys"), {1: long_text})  # kept whole: JSON makes the key "1"
    hit = llm.get(request("int keys"))
    assert hit is not None and hit.response == {"1": long_text}


@pytest.mark.parametrize(
    "damage",
    [
        lambda stored: stored[:-1],  # a part shorter than its length
        lambda stored: stored + b"x",  # trailing bytes
        lambda stored: stored.replace(b'"content":""', b'"content":"z"'),  # bad skeleton
        lambda stored: stored.replace(b'"p":[[[', b'"p":[[["nope",'),  # wrong path
    ],
)
def test_corrupt_split_entries_are_misses(
    llm: LLMCache, raw_redis: redis.Redis, damage: Any
) -> None:
    llm.set(request(), {"content": "x" * 5000, "more": ["y" * 5000]})
    key = llm.key(request())
    stored = raw_redis.get(key)
    assert stored is not None
    damaged = damage(stored)
    assert damaged != stored
    raw_redis.set(key, damaged)
    assert llm.get(request()) is None
    assert raw_redis.exists(key) == 0
    assert llm.stats().corrupt == 1


def _valid_header(raw: redis.Redis, cache: LLMCache) -> bytes:
    """Generations, body type, metadata and newline of a live entry (a str response)."""
    cache.set(request(), "ok")
    stored = raw.get(cache.key(request()))
    assert isinstance(stored, bytes) and stored[33:34] == b"s"
    return stored[1 : stored.index(b"\n") + 1]


@pytest.mark.parametrize(
    "damage",
    [
        lambda header: b"",
        lambda header: b"\x07whatever",
        lambda header: b"\x02not zlib at all",
        lambda header: b"\x01short",
        lambda header: b"\x01" + header[:-1],  # no newline after the metadata
        lambda header: b"\x01" + header[:33] + b"{broken json\nbody",
        lambda header: b"\x01" + header[:33] + b"[1,2]\nbody",
        lambda header: b"\x01" + header + b"\xff\xfe",  # body not UTF-8
        lambda header: b"\x01" + header[:32] + b"j" + header[33:] + b"{not json",
        lambda header: b"\x01" + header[:32] + b"?" + header[33:] + b"body",
        lambda header: b"\x02" + zlib.compress(b"too short"),
    ],
)
def test_corrupt_entries_are_misses_and_deleted(
    llm: LLMCache, raw_redis: redis.Redis, damage: Any
) -> None:
    header = _valid_header(raw_redis, llm)
    key = llm.key(request())
    raw_redis.set(key, damage(header))
    assert llm.get(request()) is None
    assert raw_redis.exists(key) == 0
    stats = llm.stats()
    assert stats.corrupt == 1
    assert stats.misses == 1
    # The next write heals it.
    llm.set(request(), "fine")
    assert llm.get(request()) is not None


def test_stats(llm: LLMCache) -> None:
    llm.get(request())
    llm.set(request(), "4")
    llm.get(request())
    llm.get(request(sensitive=True))
    stats = llm.stats().as_dict()
    assert stats["hits"] == 1
    assert stats["misses"] == 1
    assert stats["bypasses"] == 1
    assert stats["writes"] == 1
    assert stats["errors"] == 0
    assert stats["breaker_state"] == "closed"


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.set(request(), {"a": {1, 2}}),
        lambda c: c.set(request(), object()),
        lambda c: c.set(request(), float("nan")),
        lambda c: c.set(request(), "x", usage={"t": object()}),
        lambda c: c.set(request(), "x", usage=["not", "a", "dict"]),
        lambda c: c.set(request(), "x", ttl=0),
        lambda c: c.get_or_compute(request(), lambda: "x", ttl=-1),
        lambda c: c.get_or_compute(request(), lambda: "x", wait_timeout=0),
        lambda c: c.invalidate_model(""),
        lambda c: c.invalidate_model(None),
    ],
)
def test_bad_arguments_are_invalid_input(llm: LLMCache, call: Any) -> None:
    with pytest.raises(InvalidInput):
        call(llm)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ttl": 0},
        {"ttl_jitter": 1.0},
        {"ttl_jitter": -0.1},
        {"lease_ttl": 0},
        {"wait_timeout": -1},
        {"poll_interval": 0},
        {"compress_threshold": -1},
    ],
)
def test_bad_constructor_arguments(client: CacheClient, kwargs: dict[str, Any], api: Api) -> None:
    with pytest.raises(InvalidInput):
        api.llm(client, **kwargs)


def test_constructor_needs_a_cache_client(api: Api) -> None:
    with pytest.raises(InvalidInput):
        api.llm(redis.Redis())
