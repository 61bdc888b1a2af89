"""get_or_compute without concurrency: hits, bounded waits, failures; both modes."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from toolkit.cache import LLMCache
from toolkit.errors import InvalidInput

from .test_stampede import REQUEST, lease_key

pytestmark = pytest.mark.usefixtures("mode")


def test_wait_is_bounded_when_the_lease_never_goes(llm: LLMCache, raw_redis: redis.Redis) -> None:
    raw_redis.set(lease_key(llm), b"someone-else", px=60_000)
    began = time.monotonic()
    result = llm.get_or_compute(REQUEST, lambda: "my own", wait_timeout=0.3)
    elapsed = time.monotonic() - began
    assert result.response == "my own" and not result.from_cache
    assert 0.3 <= elapsed < 2, elapsed
    assert raw_redis.get(lease_key(llm)) == b"someone-else"  # not ours to release
    hit = llm.get(REQUEST)
    assert hit is not None and hit.response == "my own"  # and the result was stored


def test_get_or_compute_hits_after_the_first(llm: LLMCache) -> None:
    first = llm.get_or_compute(REQUEST, lambda: "v1")
    second = llm.get_or_compute(REQUEST, lambda: pytest.fail("must not run"))
    assert (first.response, first.from_cache) == ("v1", False)
    assert (second.response, second.from_cache) == ("v1", True)


def test_an_exception_stores_nothing_and_releases_the_lease(
    llm: LLMCache, raw_redis: redis.Redis
) -> None:
    def boom() -> str:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        llm.get_or_compute(REQUEST, boom)
    assert raw_redis.exists(lease_key(llm)) == 0
    assert llm.get(REQUEST) is None


def test_a_non_json_result_is_invalid_input_and_releases_the_lease(
    llm: LLMCache, raw_redis: redis.Redis
) -> None:
    with pytest.raises(InvalidInput):
        llm.get_or_compute(REQUEST, lambda: {"not", "json"})
    assert raw_redis.exists(lease_key(llm)) == 0


def test_deterministic_fake_model_for_demos(llm: LLMCache) -> None:
    """The pattern the demo uses: a deterministic fake model behind get_or_compute."""

    def fake_model(request: dict[str, Any]) -> dict[str, Any]:
        prompt = request["messages"][-1]["content"]
        return {
            "choices": [{"message": {"role": "assistant", "content": prompt.upper()}}],
            "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": 1},
        }

    first = llm.get_or_compute(REQUEST, lambda: fake_model(REQUEST))
    again = llm.get_or_compute(REQUEST, lambda: fake_model(REQUEST))
    assert again.from_cache and again.response == first.response
    assert again.usage == {"prompt_tokens": 3, "completion_tokens": 1}
