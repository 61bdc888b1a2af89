"""Fixtures for the cache tests: the real Redis at 127.0.0.1:6379, one namespace per test.

The tests need that Redis and fail loudly (every test errors, with the reason)
when it does not answer: they never skip.

In a dual-mode module (``pytestmark = pytest.mark.usefixtures("mode")``) the
``client`` and ``llm`` fixtures, and the ``api`` factory, follow the mode: a
``CacheClient`` / ``LLMCache``, or an ``AsyncCacheClient`` / ``AsyncLLMCache``
used through sync calls (tests/support/modes.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.support.modes import Mode, Synced
from toolkit.aio.cache import AsyncCacheClient, AsyncLLMCache
from toolkit.cache import CacheClient, CircuitBreaker, LLMCache
from toolkit.config import Settings

from .redis_env import (
    HEALTHY_TIMEOUT,
    REDIS_HOST,
    REDIS_PORT,
    REDIS_URL,
    PrivateRedis,
    free_port,
    unlink_namespace,
)


@pytest.fixture(scope="session", autouse=True)
def redis_reachable() -> None:
    """Fail every cache test, loudly, if Redis is not at 127.0.0.1:6379."""
    client = redis.Redis(
        host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=2, socket_timeout=2
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RuntimeError(
            f"the cache tests need a Redis server at {REDIS_HOST}:{REDIS_PORT} "
            f"(start one with `redis-server --save '' --appendonly no`): {exc}"
        ) from exc
    finally:
        client.close()


@pytest.fixture
def raw_redis() -> Iterator[redis.Redis]:
    """A plain redis-py client on the shared Redis, to look behind the cache's back."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=HEALTHY_TIMEOUT)
    yield client
    client.close()


@pytest.fixture
def namespace(raw_redis: redis.Redis) -> Iterator[str]:
    """A namespace of this test's own, emptied afterwards."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    yield name
    unlink_namespace(raw_redis, name)


class Api:
    """Makes the cache objects of one mode: sync ones, or async ones used through sync calls.

    (``both(...).CacheClient.from_url`` cannot be used: the harness wraps an
    async class in a function, which drops its classmethods.)
    """

    def __init__(self, mode: Mode | None) -> None:
        self.mode = mode
        self.is_async = mode is not None and mode.is_async

    def _wrap(self, value: Any) -> Any:
        assert self.mode is not None
        return Synced(value, self.mode)

    def client(self, url: str = REDIS_URL, **kwargs: Any) -> Any:
        """``CacheClient.from_url(url, **kwargs)`` in this mode (healthy timeouts by default)."""
        kwargs.setdefault("connect_timeout", HEALTHY_TIMEOUT)
        kwargs.setdefault("socket_timeout", HEALTHY_TIMEOUT)
        if self.is_async:
            return self._wrap(AsyncCacheClient.from_url(url, **kwargs))
        return CacheClient.from_url(url, **kwargs)

    def raw_client(self, url: str = REDIS_URL, **kwargs: Any) -> Any:
        """Like :meth:`client`, with the library's own (fail-fast) timeouts."""
        if self.is_async:
            return self._wrap(AsyncCacheClient.from_url(url, **kwargs))
        return CacheClient.from_url(url, **kwargs)

    def client_from_settings(self, settings: Settings, namespace: str | None = None) -> Any:
        """``CacheClient.from_settings(settings, namespace)`` in this mode."""
        if self.is_async:
            return self._wrap(AsyncCacheClient.from_settings(settings, namespace))
        return CacheClient.from_settings(settings, namespace)

    def llm(self, client: Any, **kwargs: Any) -> Any:
        """``LLMCache(client, **kwargs)`` in this mode (a wrapped client is unwrapped)."""
        if self.is_async:
            target = client.target if isinstance(client, Synced) else client
            return self._wrap(AsyncLLMCache(target, **kwargs))
        return LLMCache(client, **kwargs)


@pytest.fixture
def api(request: pytest.FixtureRequest) -> Api:
    """The constructors of the running mode (sync outside dual-mode modules)."""
    mode: Mode | None = None
    if "mode" in request.fixturenames:
        mode = request.getfixturevalue("mode")
    return Api(mode)


@pytest.fixture
def client(namespace: str, api: Api) -> Iterator[CacheClient]:
    """A CacheClient (or, in an async run, an AsyncCacheClient) under the test's namespace."""
    cache = api.client(REDIS_URL, namespace=namespace)
    yield cache
    cache.close()


@pytest.fixture
def llm(client: CacheClient, api: Api) -> LLMCache:
    """An LLMCache (or AsyncLLMCache) with the default policies (sampling requests bypass)."""
    cache: LLMCache = api.llm(client)
    return cache


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A private redis-server, stopped after the test."""
    server = PrivateRedis(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fast_breaker() -> CircuitBreaker:
    """A breaker that opens after 3 failures and probes after 0.2 s."""
    return CircuitBreaker(failure_threshold=3, recovery_timeout=0.2)
