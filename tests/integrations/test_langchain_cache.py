"""The LangChain cache: langchain-tests' standard suites, then what ours adds.

The standard suites (SyncCacheTestSuite, AsyncCacheTestSuite) run
unchanged against the real Redis; the tests after them check the toolkit
behaviour the cache keeps: fail-open, full-request keys, no secrets stored.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from langchain_core.globals import set_llm_cache
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation
from langchain_tests.integration_tests import AsyncCacheTestSuite, SyncCacheTestSuite

from toolkit.cache import CacheClient, CircuitBreaker, LLMCache
from toolkit.integrations.langchain import DEFAULT_MODEL, ToolkitLLMCache

from .conftest import REDIS_URL

TENANT_A = uuid.UUID("0b8a4f0e-5d3c-4a51-9c1e-0a6a1f7e2b01")
TENANT_B = uuid.UUID("5f2d9c77-8e41-4f0a-b3d6-6c1e9a0d4b02")

CHAT_LLM_STRING = (
    '{"lc": 1, "type": "constructor", "id": ["langchain", "chat_models", "openai", "ChatOpenAI"]}'
    "---[('_type', 'openai-chat'), ('model_name', 'gpt-4o-mini'), ('stop', None), "
    "('temperature', 0.7)]"
)


class TestToolkitLLMCacheSync(SyncCacheTestSuite):
    @pytest.fixture
    def cache(self, cache_client: CacheClient) -> ToolkitLLMCache:
        return ToolkitLLMCache.from_client(cache_client)


# The suite's one sync test (its override check) gets the class's asyncio mark too.
@pytest.mark.asyncio
@pytest.mark.filterwarnings("ignore:The test <Function test_no_overrides:pytest.PytestWarning")
class TestToolkitLLMCacheAsync(AsyncCacheTestSuite):
    @pytest_asyncio.fixture
    async def cache(self, cache_client: CacheClient) -> AsyncIterator[ToolkitLLMCache]:
        yield ToolkitLLMCache.from_client(cache_client)


class TestToolkitLLMCacheOfATenant(SyncCacheTestSuite):
    @pytest.fixture
    def cache(self, cache_client: CacheClient) -> ToolkitLLMCache:
        return ToolkitLLMCache.from_client(cache_client, tenant=TENANT_A)


def test_key_is_the_whole_request(cache_client: CacheClient) -> None:
    """Another llm_string (another temperature, another model) is another entry."""
    cache = ToolkitLLMCache.from_client(cache_client)
    cache.update("hi", CHAT_LLM_STRING, [Generation(text="one")])
    assert cache.lookup("hi", CHAT_LLM_STRING) == [Generation(text="one")]
    assert cache.lookup("hi", CHAT_LLM_STRING.replace("0.7", "0.2")) is None
    assert cache.lookup("hi ", CHAT_LLM_STRING) is None
    request = cache.request("hi", CHAT_LLM_STRING)
    assert request["model"] == "gpt-4o-mini"
    assert request["temperature"] == 0.7
    # Neither the prompt nor the parameters reach Redis keys.
    keys = list(cache_client.redis.scan_iter(match=f"{cache_client.namespace}:*"))
    assert keys and all(b"hi" not in key and b"gpt" not in key for key in keys)


def test_chat_generations_round_trip(cache_client: CacheClient) -> None:
    cache = ToolkitLLMCache.from_client(cache_client)
    message = AIMessage(
        content="calling a tool",
        id="run-1",
        tool_calls=[{"name": "search", "args": {"q": "x"}, "id": "call-1", "type": "tool_call"}],
        usage_metadata={"input_tokens": 3, "output_tokens": 4, "total_tokens": 7},
        response_metadata={"finish_reason": "tool_calls"},
    )
    generations = [
        ChatGeneration(message=message, generation_info={"finish_reason": "tool_calls"}),
        ChatGenerationChunk(message=AIMessageChunk(content="part", id="run-2")),
    ]
    cache.update("prompt", CHAT_LLM_STRING, generations)
    assert cache.lookup("prompt", CHAT_LLM_STRING) == generations


def test_clear_one_model(cache_client: CacheClient) -> None:
    cache = ToolkitLLMCache.from_client(cache_client)
    other = CHAT_LLM_STRING.replace("gpt-4o-mini", "gpt-4o")
    cache.update("p", CHAT_LLM_STRING, [Generation(text="mini")])
    cache.update("p", other, [Generation(text="big")])
    cache.clear(model="gpt-4o-mini")
    assert cache.lookup("p", CHAT_LLM_STRING) is None
    assert cache.lookup("p", other) == [Generation(text="big")]


def test_secrets_are_never_stored(cache_client: CacheClient) -> None:
    cache = ToolkitLLMCache.from_client(cache_client)
    prompt = "my key is sk-proj-" + "a1B2c3D4e5" * 4
    cache.update(prompt, CHAT_LLM_STRING, [Generation(text="ok")])
    assert cache.lookup(prompt, CHAT_LLM_STRING) is None
    assert cache.llm_cache.stats().bypasses >= 1


def test_sampling_calls_bypass_a_strict_cache(cache_client: CacheClient) -> None:
    """With cache_nondeterministic=False, a call at temperature 0.7 is not cached."""
    cache = ToolkitLLMCache(LLMCache(cache_client, cache_nondeterministic=False))
    cache.update("p", CHAT_LLM_STRING, [Generation(text="sampled")])
    assert cache.lookup("p", CHAT_LLM_STRING) is None
    greedy = CHAT_LLM_STRING.replace("0.7", "0.0")
    cache.update("p", greedy, [Generation(text="greedy")])
    assert cache.lookup("p", greedy) == [Generation(text="greedy")]


def test_values_it_cannot_store_are_skipped(cache_client: CacheClient) -> None:
    cache = ToolkitLLMCache.from_client(cache_client)
    cache.update("p", CHAT_LLM_STRING, [Generation(text="x", generation_info={"when": object()})])
    assert cache.lookup("p", CHAT_LLM_STRING) is None


def _dead_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_fails_open_when_redis_is_down() -> None:
    """No Redis: lookups miss, updates are dropped, and nothing raises."""
    client = CacheClient.from_url(
        f"redis://127.0.0.1:{_dead_port()}/0",
        namespace="t-down",
        breaker=CircuitBreaker(failure_threshold=2, recovery_timeout=60),
    )
    cache = ToolkitLLMCache.from_client(client)
    for _ in range(5):
        cache.update("p", CHAT_LLM_STRING, [Generation(text="x")])
        assert cache.lookup("p", CHAT_LLM_STRING) is None
    cache.clear()
    client.close()


def test_a_cached_model_answers_from_the_cache(cache_client: CacheClient) -> None:
    """End to end: LangChain's own caching path through set_llm_cache."""
    set_llm_cache(ToolkitLLMCache.from_client(cache_client))
    try:
        model = FakeListChatModel(responses=["first", "second"])
        assert model.invoke("hello").content == "first"
        assert model.invoke("hello").content == "first"  # from the cache
        assert model.invoke("another").content == "second"
    finally:
        set_llm_cache(None)


def test_a_tenants_cache_serves_only_its_tenants_entries(cache_client: CacheClient) -> None:
    shared = ToolkitLLMCache.from_client(cache_client)
    a = ToolkitLLMCache.from_client(cache_client, tenant=str(TENANT_A))
    b = a.for_tenant(TENANT_B)
    assert (shared.tenant, a.tenant, b.tenant) == (None, TENANT_A, TENANT_B)
    a.update("p", CHAT_LLM_STRING, [Generation(text="A's")])
    assert b.lookup("p", CHAT_LLM_STRING) is None
    assert shared.lookup("p", CHAT_LLM_STRING) is None
    b.update("p", CHAT_LLM_STRING, [Generation(text="B's")])
    shared.update("p", CHAT_LLM_STRING, [Generation(text="everyone's")])
    assert a.lookup("p", CHAT_LLM_STRING) == [Generation(text="A's")]
    assert b.lookup("p", CHAT_LLM_STRING) == [Generation(text="B's")]
    a.clear()  # A's alone
    assert a.lookup("p", CHAT_LLM_STRING) is None
    assert b.lookup("p", CHAT_LLM_STRING) == [Generation(text="B's")]
    assert shared.lookup("p", CHAT_LLM_STRING) == [Generation(text="everyone's")]
    b.clear(model="gpt-4o-mini")
    assert b.lookup("p", CHAT_LLM_STRING) is None
    assert shared.lookup("p", CHAT_LLM_STRING) == [Generation(text="everyone's")]
    # Every key carries its tenant's hash tag (or the shared namespace's).
    keys = list(cache_client.redis.scan_iter(match=f"{cache_client.namespace}:*"))
    assert {key.split(b"{")[1].split(b"}")[0] for key in keys} == {
        str(TENANT_A).encode(),
        str(TENANT_B).encode(),
        b"shared",
    }


def test_a_model_per_tenant_answers_from_its_tenants_cache(cache_client: CacheClient) -> None:
    """End to end through LangChain, each tenant's model with its tenant's cache."""
    base = ToolkitLLMCache.from_client(cache_client)
    model_a = FakeListChatModel(responses=["first", "second"], cache=base.for_tenant(TENANT_A))
    model_b = FakeListChatModel(responses=["first", "second"], cache=base.for_tenant(TENANT_B))
    assert model_a.invoke("warm up").content == "first"
    assert model_a.invoke("hello").content == "second"
    assert model_b.invoke("hello").content == "first"  # computed: A's entry is not B's
    assert model_b.invoke("hello").content == "first"  # from B's cache
    assert model_a.invoke("hello").content == "second"  # from A's cache


def test_unknown_llm_strings_use_the_default_model(cache_client: CacheClient) -> None:
    cache = ToolkitLLMCache.from_client(cache_client)
    assert cache.request("p", "free text")["model"] == DEFAULT_MODEL
    assert cache.request("p", "---[('model', 'm1'), ('seed', 7)]")["seed"] == 7


def test_from_url() -> None:
    cache = ToolkitLLMCache.from_url(REDIS_URL, namespace="t-lc-from-url")
    cache.update("p", "s", [Generation(text="x")])
    assert cache.lookup("p", "s") == [Generation(text="x")]
    cache.llm_cache.client.clear()
    cache.llm_cache.client.close()
