"""HMAC integrity of LLM cache entries (``hmac_key``), in both modes.

Only entries that verify under the client's key are served; an unsigned,
altered, copied or foreign-signed entry is a miss, deleted and counted.
"""

from __future__ import annotations

import logging
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
