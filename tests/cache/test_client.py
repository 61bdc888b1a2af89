"""CacheClient and AsyncCacheClient against the real Redis: values, TTLs, JSON, batches,
namespaces. Every test runs in both modes (tests/support/modes.py)."""

from __future__ import annotations

import pathlib
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio.connection
import redis.connection

from toolkit.aio.cache import AsyncCacheClient
from toolkit.cache import HIREDIS_AVAILABLE, CacheClient
from toolkit.config import Settings
from toolkit.errors import InvalidInput

from .conftest import Api
from .redis_env import REDIS_URL, free_port

pytestmark = pytest.mark.usefixtures("mode")


def test_the_run_uses_the_api_of_its_mode(client: CacheClient, api: Api) -> None:
    """Guards the harness: an [async] run really drives an AsyncCacheClient."""
    target = getattr(client, "target", client)
    expected = AsyncCacheClient if api.is_async else CacheClient
    assert type(target) is expected


def test_set_get_delete(client: CacheClient, raw_redis: redis.Redis) -> None:
    assert client.get("a") is None
    assert client.set("a", b"\x00bytes\xff")
    assert client.set("b", "text é")
    assert client.get("a") == b"\x00bytes\xff"
    assert client.get("b") == "text é".encode()
    assert raw_redis.get(f"{client.namespace}:a") == b"\x00bytes\xff"
    assert client.delete("a", "missing") == 1
    assert client.get("a") is None
    assert client.delete() == 0


def test_default_ttl_is_one_hour_and_per_call_ttl_wins(
    client: CacheClient, raw_redis: redis.Redis
) -> None:
    client.set("default", "v")
    client.set("short", "v", ttl=30)
    client.set("fraction", "v", ttl=0.2)  # rounded up to one second, never 0
    assert 3590 <= raw_redis.ttl(f"{client.namespace}:default") <= 3600
    assert 25 <= raw_redis.ttl(f"{client.namespace}:short") <= 30
    assert 0 < raw_redis.pttl(f"{client.namespace}:fraction") <= 1000


def test_overwrite_replaces_value_and_ttl_atomically(
    client: CacheClient, raw_redis: redis.Redis
) -> None:
    client.set("k", "one", ttl=100)
    client.set("k", "two", ttl=200)
    assert client.get("k") == b"two"
    assert 190 <= raw_redis.ttl(f"{client.namespace}:k") <= 200


def test_json_round_trip(client: CacheClient) -> None:
    value = {"a": [1, 2.5, None, True], "b": {"c": "é"}}
    assert client.set_json("j", value)
    assert client.get_json("j") == value
    assert client.get_json("nope") is None
    assert client.get_json("nope", default=[]) == []


def test_undecodable_json_is_a_miss_and_is_deleted(
    client: CacheClient, raw_redis: redis.Redis
) -> None:
    raw_redis.set(f"{client.namespace}:bad", b"{not json")
    raw_redis.set(f"{client.namespace}:binary", b"\xff\xfe")
    assert client.get_json("bad", default="d") == "d"
    assert client.get_json("binary") is None
    assert raw_redis.exists(f"{client.namespace}:bad", f"{client.namespace}:binary") == 0
    stats = client.stats()
    assert stats.corrupt == 2
    assert stats.misses == 2
    assert stats.hits == 0


def test_get_many_is_one_mget(client: CacheClient) -> None:
    client.set_many({f"k{i}": str(i) for i in range(50)})
    keys = [f"k{i}" for i in range(0, 60, 2)]  # 25 present, 5 absent
    found = client.get_many(keys)
    assert found == {f"k{i}": str(i).encode() for i in range(0, 50, 2)}
    stats = client.stats()
    assert (stats.hits, stats.misses) == (25, 5)
    assert client.get_many([]) == {}


def test_clear_unlinks_only_its_namespace(
    client: CacheClient, raw_redis: redis.Redis, namespace: str
) -> None:
    neighbour = f"{namespace}x"  # shares the prefix, but not "<namespace>:"
    raw_redis.set(f"{neighbour}:keep", b"1")
    try:
        client.set_many({f"k{i}": "v" for i in range(1200)})
        assert client.clear() == 1200
        assert list(raw_redis.scan_iter(match=f"{namespace}:*")) == []
        assert raw_redis.get(f"{neighbour}:keep") == b"1"
    finally:
        raw_redis.delete(f"{neighbour}:keep")


def test_counters(client: CacheClient) -> None:
    client.set("a", "1")
    client.get("a")
    client.get("b")
    stats = client.stats()
    assert (stats.hits, stats.misses, stats.writes, stats.errors) == (1, 1, 1, 0)
    assert stats.breaker_state == "closed"
    assert stats.hit_ratio == 0.5
    assert stats.as_dict()["hits"] == 1
    client.reset_stats()
    assert client.stats().hits == 0


def test_from_settings_uses_redis_settings(namespace: str, api: Api) -> None:
    settings = Settings(
        redis_url=REDIS_URL,
        cache_namespace=namespace,
        redis_connect_timeout=0.2,
        redis_socket_timeout=0.3,
    )
    with api.client_from_settings(settings) as cache:
        assert cache.namespace == namespace
        kwargs = cache.redis.connection_pool.connection_kwargs
        assert kwargs["socket_connect_timeout"] == 0.2
        assert kwargs["socket_timeout"] == 0.3
        assert cache.ping()
    with api.client_from_settings(settings, namespace="other") as cache:
        assert cache.namespace == "other"


def _retries(retry: Any) -> int:
    # Retry.get_retries() arrived in redis-py 5.1; _retries is there in every version.
    return int(retry.get_retries() if hasattr(retry, "get_retries") else retry._retries)


def test_redis_py_retries_and_health_checks_are_off(
    client: CacheClient, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    kwargs = client.redis.connection_pool.connection_kwargs
    assert _retries(kwargs["retry"]) == 0
    assert kwargs["health_check_interval"] == 0
    connection: Any = client.redis.connection_pool.make_connection()
    assert _retries(connection.retry) == 0
    assert connection.health_check_interval == 0
    # A dead server costs one refused connect, not retries with backoff:
    # count the socket connects redis-py attempts (sync or asyncio).
    attempts: list[object] = []
    for connection_class in (redis.connection.Connection, redis.asyncio.connection.Connection):
        original = connection_class._connect

        def counted(self: Any, _original: Any = original) -> Any:
            attempts.append(self)
            return _original(self)

        monkeypatch.setattr(connection_class, "_connect", counted)
    dead = api.raw_client(f"redis://127.0.0.1:{free_port()}/0", namespace="dead")
    assert dead.get("k") is None
    assert len(attempts) == 1
    assert dead.stats().errors == 1
    dead.close()


def test_hiredis_is_used_when_installed(client: CacheClient) -> None:
    connection: Any = client.redis.connection_pool.make_connection()
    parser = type(connection._parser).__name__
    assert ("Hiredis" in parser) == HIREDIS_AVAILABLE, parser


def test_clear_sends_scan_and_unlink_never_flush(
    client: CacheClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.set_many({"a": "1", "b": "2"})
    sent: list[str] = []
    original: Callable[..., object] = client.redis.execute_command

    def recording(*args: object, **options: object) -> object:
        sent.append(str(args[0]).upper())
        return original(*args, **options)

    monkeypatch.setattr(client.redis, "execute_command", recording)
    assert client.clear() == 2
    assert set(sent) == {"SCAN", "UNLINK"}


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.get(""), "key"),
        (lambda c: c.get(1), "key"),
        (lambda c: c.get("x" * 2000), "key"),
        (lambda c: c.set("k", 1), "value"),
        (lambda c: c.set("k", "v", ttl=0), "ttl"),
        (lambda c: c.set("k", "v", ttl=-5), "ttl"),
        (lambda c: c.set("k", "v", ttl=float("nan")), "ttl"),
        (lambda c: c.set("k", "v", ttl="60"), "ttl"),
        (lambda c: c.set("k", "v", ttl=True), "ttl"),
        (lambda c: c.set_json("k", {1, 2}), "value"),
        (lambda c: c.set_json("k", object()), "value"),
        (lambda c: c.set_json("k", float("inf")), "value"),
        (lambda c: c.delete("ok", ""), "key"),
    ],
)
def test_bad_input_is_invalid_input(client: CacheClient, call: object, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        call(client)  # type: ignore[operator]
    assert info.value.field == field


@pytest.mark.parametrize("namespace_value", ["", "a:b", "a*", "has space", "x" * 65, None])
def test_bad_namespace(namespace_value: object, api: Api) -> None:
    with pytest.raises(InvalidInput):
        api.raw_client(REDIS_URL, namespace=namespace_value)


@pytest.mark.parametrize(
    "kwargs",
    [{"connect_timeout": 0}, {"socket_timeout": -1}, {"connect_timeout": "1"}],
)
def test_bad_timeouts(kwargs: dict[str, object], api: Api) -> None:
    with pytest.raises(InvalidInput):
        api.raw_client(REDIS_URL, **kwargs)


def test_bad_url(api: Api) -> None:
    with pytest.raises(InvalidInput):
        api.raw_client("http://127.0.0.1:6379")


def test_the_cache_stands_alone(api: Api) -> None:
    """Importing the cache loads neither the database layer nor its driver."""
    package = "toolkit.aio.cache" if api.is_async else "toolkit.cache"
    code = (
        f"import sys, {package}; "
        "bad = [m for m in sys.modules "
        "if m.startswith(('toolkit.db', 'toolkit.aio.db', 'psycopg'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    root = pathlib.Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
