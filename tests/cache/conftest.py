"""Fixtures for the cache tests: the real Redis at 127.0.0.1:6379, one namespace per test.

The tests need that Redis and fail loudly (every test errors, with the reason)
when it does not answer: they never skip.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from toolkit.cache import CacheClient, CircuitBreaker, LLMCache

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


@pytest.fixture
def client(namespace: str) -> Iterator[CacheClient]:
    """A CacheClient on the shared Redis under the test's namespace."""
    cache = CacheClient.from_url(
        REDIS_URL,
        namespace=namespace,
        connect_timeout=HEALTHY_TIMEOUT,
        socket_timeout=HEALTHY_TIMEOUT,
    )
    yield cache
    cache.close()


@pytest.fixture
def llm(client: CacheClient) -> LLMCache:
    """An LLMCache with the default policies (sampling requests bypass)."""
    return LLMCache(client)


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
