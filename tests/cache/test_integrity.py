"""HMAC integrity of LLM cache entries (``hmac_key``), in both modes.

Only entries that verify under the client's key are served; an unsigned,
altered, copied or foreign-signed entry is a miss, deleted and counted.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import redis

from toolkit.cache import LLMCache, codec

from .conftest import Api
from .redis_env import REDIS_URL
from .test_llm_cache import request
from .test_secrets_and_integrity import INTEGRITY_KEY, OTHER_KEY

pytestmark = pytest.mark.usefixtures("mode")


# -- HMAC integrity ---------------------------------------------------------------


@pytest.fixture
def signed(namespace: str, api: Api) -> Any:
    client = api.client(REDIS_URL, namespace=namespace, hmac_key=INTEGRITY_KEY)
    yield api.llm(client)
    client.close()


@pytest.fixture
def unsigned(namespace: str, api: Api) -> Any:
    client = api.client(REDIS_URL, namespace=namespace)
    yield api.llm(client)
    client.close()


def assert_rejected(cache: LLMCache, req: dict[str, Any], raw: redis.Redis, failures: int) -> None:
    key = cache.key(req)
    assert cache.get(req) is None
    assert cache.stats().integrity_failures == failures
    assert raw.exists(key) == 0


def test_signed_entries_round_trip(signed: LLMCache, raw_redis: redis.Redis) -> None:
    assert signed.set(request(), {"content": "4"})
    stored = raw_redis.get(signed.key(request()))
    assert stored is not None
    assert stored[0] == codec.MARK_SIGNED
    found = signed.get(request())
    assert found is not None
    assert found.response == {"content": "4"}
    assert signed.stats().integrity_failures == 0


def test_an_unsigned_entry_is_not_served_and_is_deleted(
    signed: LLMCache, unsigned: LLMCache, raw_redis: redis.Redis
) -> None:
    # A writer without the key (an attacker on a shared Redis, say) plants an answer.
    assert unsigned.set(request(), "forged answer")
    assert_rejected(signed, request(), raw_redis, 1)
    stats = signed.stats()
    assert (stats.misses, stats.hits, stats.corrupt) == (1, 0, 0)


def test_an_altered_entry_fails(signed: LLMCache, raw_redis: redis.Redis) -> None:
    assert signed.set(request(), "the true answer")
    key = signed.key(request())
    stored = raw_redis.get(key)
    assert stored is not None
    raw_redis.set(key, stored.replace(b"true", b"fake"))
    assert_rejected(signed, request(), raw_redis, 1)


def test_an_entry_copied_to_another_key_fails(signed: LLMCache, raw_redis: redis.Redis) -> None:
    assert signed.set(request("question A"), "answer A")
    stored = raw_redis.get(signed.key(request("question A")))
    assert stored is not None
    raw_redis.set(signed.key(request("question B")), stored)
    assert_rejected(signed, request("question B"), raw_redis, 1)
    assert signed.get(request("question A")) is not None  # the original still verifies


def test_an_entry_signed_with_another_key_fails(
    signed: LLMCache, namespace: str, raw_redis: redis.Redis, api: Api
) -> None:
    other_client = api.client(REDIS_URL, namespace=namespace, hmac_key=OTHER_KEY)
    try:
        assert api.llm(other_client).set(request(), "signed elsewhere")
    finally:
        other_client.close()
    assert_rejected(signed, request(), raw_redis, 1)


def test_a_forged_lookup_is_logged_without_the_key(
    signed: LLMCache, unsigned: LLMCache, caplog: pytest.LogCaptureFixture
) -> None:
    unsigned.set(request(), "forged")
    with caplog.at_level(logging.WARNING, logger="toolkit"):
        signed.get(request())
    assert "integrity check" in caplog.text
    assert INTEGRITY_KEY not in caplog.text


def test_without_a_key_signed_entries_are_read_as_before(
    signed: LLMCache, unsigned: LLMCache
) -> None:
    assert signed.set(request(), "answer")
    found = unsigned.get(request())
    assert found is not None
    assert found.response == "answer"
    assert unsigned.set(request("plain"), "plain answer")
    assert unsigned.get(request("plain")) is not None


# -- replays: what decides validity is signed -------------------------------------------


def generation_values(raw: redis.Redis, namespace: str) -> dict[bytes, bytes]:
    """Every generation key of the namespace and its raw value, as an attacker would save them."""
    found: dict[bytes, bytes] = {}
    for key in raw.scan_iter(match=f"{namespace}:llm:v1:{{shared}}:gen*"):
        value = raw.get(key)
        assert value is not None
        found[key] = value
    return found


@pytest.mark.parametrize("invalidate", ["invalidate_model", "invalidate_all"])
def test_a_rolled_back_generation_does_not_revive_an_invalidated_entry(
    signed: LLMCache, namespace: str, raw_redis: redis.Redis, invalidate: str
) -> None:
    assert signed.set(request(), "answer of the old model")
    saved = generation_values(raw_redis, namespace)
    assert len(saved) == 2  # the namespace's and the model's
    if invalidate == "invalidate_model":
        assert signed.invalidate_model(request()["model"])
    else:
        assert signed.invalidate_all()
    # Someone with write access to Redis, but not the key, restores the old generations.
    for key, value in saved.items():
        raw_redis.set(key, value)
    assert signed.get(request()) is None
    assert signed.stats().integrity_failures == 1
    assert raw_redis.exists(signed.key(request())) == 0  # the revived entry is gone
    assert generation_values(raw_redis, namespace) != saved  # and a newer generation is set
    assert signed.get(request()) is None


def test_persist_does_not_keep_a_signed_entry_past_its_ttl(
    signed: LLMCache, raw_redis: redis.Redis
) -> None:
    assert signed.set(request(), "short-lived answer", ttl=1)
    key = signed.key(request())
    assert raw_redis.persist(key)  # Redis would now keep it for ever
    time.sleep(1.2)
    assert raw_redis.exists(key) == 1
    assert signed.get(request()) is None
    assert raw_redis.exists(key) == 0


def test_entries_and_generations_of_the_earlier_format_are_misses(
    signed: LLMCache, namespace: str, raw_redis: redis.Redis
) -> None:
    assert signed.set(request(), "answer")
    key = signed.key(request())
    stored = raw_redis.get(key)
    assert stored is not None and stored[0] == codec.MARK_SIGNED
    # The earlier format: 0x03, an HMAC over the inner entry alone, no expiry.
    inner = stored[1 + codec.TAG_BYTES + codec.EXPIRY_BYTES :]
    earlier = bytes((codec.MARK_SIGNED_V1,)) + codec.Signer(INTEGRITY_KEY.encode()).tag(key, inner)
    raw_redis.set(key, earlier + inner)
    assert signed.get(request()) is None
    assert raw_redis.exists(key) == 0
    # Generations of the earlier format: 16 random hex digits, unsigned.
    assert signed.set(request(), "answer")
    for gen_key in generation_values(raw_redis, namespace):
        raw_redis.set(gen_key, b"0123456789abcdef")
    assert signed.get(request()) is None
    assert signed.stats().integrity_failures == 0  # an upgrade is not an attack
    assert signed.set(request(), "answer again")  # the generations are replaced
    found = signed.get(request())
    assert found is not None and found.response == "answer again"
