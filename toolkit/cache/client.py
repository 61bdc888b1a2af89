# Generated from toolkit/aio/cache/client.py by tools/async_to_sync.py: do not edit.
# Edit the async source and run `tox -e generate`.
"""A fail-open Redis cache client.

:class:`CacheClient` wraps one redis-py client (with the hiredis parser
when it is installed) and puts every call behind a :class:`CircuitBreaker`:

* connect and socket timeouts are short (50 ms by default) and redis-py's own
  retries are switched off, so a dead or stalled Redis costs one bounded
  timeout per call, never a retry storm;
* after a few consecutive connection errors or timeouts the breaker opens,
  and from then on a read is a miss and a write is dropped at once, without
  touching the network, until a probe finds Redis back;
* no exception from Redis ever reaches the caller. Only bad arguments raise,
  as :class:`~toolkit.errors.InvalidInput`, and they are checked before any
  I/O, so they raise the same way whether Redis is up or down.

With an integrity key (``hmac_key``, ``TOOLKIT_CACHE_HMAC_KEY``) the
:class:`~toolkit.cache.LLMCache` built on a client signs its entries and
serves only entries that verify; the client's own byte and JSON values are
the caller's format and are not signed.

Keys live under a namespace (``<namespace>:<key>``). Writes are one atomic
``SET key value EX ttl``. Clearing a namespace uses ``SCAN`` + ``UNLINK``;
the client never sends ``FLUSHDB`` or ``FLUSHALL``.

A Redis Cluster is configured with a ``redis+cluster://host:port,host:port``
URL (:mod:`toolkit.cache.cluster`); the client then holds a redis-py
``RedisCluster`` and the API is unchanged. Every command keeps to one hash
slot: a batch lookup sends one ``MGET`` per slot (pipelined, one round trip
per node), ``clear`` scans every master, and the LLM cache's keys share
their tenant's hash tag. A failed master's slots are misses until its
replica takes over; the breaker guards the cluster as a whole.

The sync and the async client share the breaker class (one state machine),
the counters and the checks (:mod:`toolkit.cache.breaker`,
:mod:`toolkit.cache.stats`, :mod:`toolkit.cache.inputs`). In the async API a
task cancelled mid-call leaves no half-read reply behind: redis-py drops a
connection interrupted while reading.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar

import redis
from redis import ConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.utils import HIREDIS_AVAILABLE

from toolkit.cache.breaker import CircuitBreaker
from toolkit.cache.cluster import is_cluster_url, parse_cluster_url, slot_groups
from toolkit.cache.codec import Signer
from toolkit.cache.entries import GenerationMemory
from toolkit.cache.inputs import (
    CONNECTIVITY_ERRORS,
    DEFAULT_TTL,
    SCAN_BATCH,
    Outcome,
    as_bytes,
    check_timeouts,
    dumps_json,
    make_signer,
    namespaced_key,
    ttl_seconds,
    validate_namespace,
)
from toolkit.cache.stats import BypassReason, CacheStats, StatsRecorder
from toolkit.errors import InvalidInput, Unavailable

if TYPE_CHECKING:
    from toolkit.config import Settings

__all__ = [
    "DEFAULT_TTL",
    "HIREDIS_AVAILABLE",
    "AnyRedis",
    "CacheClient",
    "Outcome",
    "build_redis",
    "command",
    "make_signer",
    "ttl_seconds",
    "validate_namespace",
]

_log = logging.getLogger(__name__)

T = TypeVar("T")

AnyRedis = Redis | RedisCluster
"""The redis-py client a cache client holds: one server, or a Redis Cluster."""


def _pool_wants_command() -> bool:
    """Whether this redis-py's ConnectionPool.get_connection requires a command name.

    redis-py before 5.3 requires it; later versions deprecate passing it.
    """
    try:
        parameter = inspect.signature(ConnectionPool.get_connection).parameters.get("command_name")
    except (TypeError, ValueError):  # pragma: no cover - an unusual build
        return False
    return parameter is not None and parameter.default is inspect.Parameter.empty


_POOL_WANTS_COMMAND: Final = _pool_wants_command()


def command(r: AnyRedis, *args: str | bytes | int) -> Any:
    """Send one command on a pooled connection and return the raw reply.

    Used for the read hot path (GET, MGET): it goes to redis-py's connection
    directly, skipping the client's per-command machinery (retry loop,
    observability hooks, option parsing), which costs more than the command's
    own client-side work and adds nothing here: retries are off, and these
    commands have no reply callbacks. Error handling is redis-py's own: the
    connection disconnects itself on any error while sending or reading, and
    goes back to the pool either way. Server errors raise ResponseError.

    On a cluster the command goes through ``RedisCluster.execute_command``,
    which routes it to the master of its keys' slot and follows ``MOVED``
    redirections (a multi-key command must keep to one slot).
    """
    if isinstance(r, RedisCluster):
        routed: Callable[..., Any] = r.execute_command  # untyped in the sync client
        return routed(*args)
    pool: Any = r.connection_pool  # get_connection is untyped in redis.asyncio
    acquiring = pool.get_connection(args[0]) if _POOL_WANTS_COMMAND else pool.get_connection()
    connection = acquiring
    try:
        send: Callable[..., None] = connection.send_command  # untyped in redis-py
        send(*args)
        return connection.read_response()
    finally:
        pool.release(connection)


def build_redis(
    url: str,
    *,
    connect_timeout: float,
    socket_timeout: float,
    max_connections: int = 64,
) -> AnyRedis:
    """A redis-py client tuned to fail fast; a ``RedisCluster`` for a ``redis+cluster://`` URL.

    redis-py 6+ retries connection errors ten times with exponential backoff
    by default; a cache must not, so the retry policy is zero retries with no
    backoff. There is no health-check PING before commands either. A cluster
    client still follows ``MOVED``/``ASK`` redirections (they are answers,
    not failures) and refreshes its slot map after a connection error.
    """
    check_timeouts(connect_timeout, socket_timeout)
    if is_cluster_url(url):
        return _build_cluster(
            url,
            connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            max_connections=max_connections,
        )
    try:
        pool = ConnectionPool.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            max_connections=max_connections,
        )
    except ValueError as exc:
        raise InvalidInput(f"bad Redis URL: {exc}", field="redis_url") from None
    return Redis(connection_pool=pool)


def _build_cluster(
    url: str, *, connect_timeout: float, socket_timeout: float, max_connections: int
) -> RedisCluster:
    """A fail-fast ``RedisCluster`` seeded with the URL's nodes.

    The async client discovers the cluster on its first call. redis-py's
    sync client discovers it here, so building one raises Unavailable when
    no seed node answers.
    """
    address = parse_cluster_url(url)
    node: Callable[[str, int], ClusterNode] = ClusterNode  # untyped in the sync client
    try:
        return RedisCluster(
            startup_nodes=[node(host, port) for host, port in address.seeds],
            username=address.username,
            password=address.password,
            ssl=address.tls,
            socket_connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),
            max_connections=max_connections,
        )
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
        raise Unavailable(
            f"no seed node of the Redis Cluster answered ({type(exc).__name__})"
        ) from None


class CacheClient:
    """Namespaced get/set/delete over Redis that fails open.

    Build one with :meth:`from_settings` or :meth:`from_url`; the constructor
    takes an existing ``Redis``, whose timeouts and retry policy are
    then the caller's responsibility. One client is safe to share between
    threads, or for the async client between the tasks of one event loop
    (redis-py pools connections); after ``fork`` redis-py opens new
    connections in the child.
    """

    def __init__(
        self,
        redis_client: AnyRedis,
        *,
        namespace: str = "toolkit",
        default_ttl: float = DEFAULT_TTL,
        breaker: CircuitBreaker | None = None,
        hmac_key: str | bytes | None = None,
    ) -> None:
        self._signer = make_signer(hmac_key)
        self._redis = redis_client
        self._namespace = validate_namespace(namespace)
        self._prefix = namespace + ":"
        self._default_ttl = float(ttl_seconds(default_ttl, DEFAULT_TTL, "default_ttl"))
        self._breaker = breaker if breaker is not None else CircuitBreaker()
        self._stats = StatsRecorder()
        self._generation_memory = GenerationMemory()

    # -- construction ----------------------------------------------------

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str = "toolkit",
        connect_timeout: float = 0.05,
        socket_timeout: float = 0.05,
        default_ttl: float = DEFAULT_TTL,
        breaker: CircuitBreaker | None = None,
        max_connections: int = 64,
        hmac_key: str | bytes | None = None,
    ) -> CacheClient:
        """A client for the Redis at ``url`` (``redis://``, ``rediss://`` or ``unix://``),
        or for the Redis Cluster at ``redis+cluster://`` / ``rediss+cluster://`` seeds.

        No connection is opened here: the first call connects (except for the
        sync cluster client, which discovers the cluster's nodes at once).
        """
        validate_namespace(namespace)
        make_signer(hmac_key)  # refuse a bad key before connecting
        client = build_redis(
            url,
            connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            max_connections=max_connections,
        )
        return cls(
            client,
            namespace=namespace,
            default_ttl=default_ttl,
            breaker=breaker,
            hmac_key=hmac_key,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        namespace: str | None = None,
        *,
        default_ttl: float = DEFAULT_TTL,
        breaker: CircuitBreaker | None = None,
    ) -> CacheClient:
        """A client from ``TOOLKIT_REDIS_URL`` and the other ``TOOLKIT_`` Redis settings.

        ``namespace`` overrides ``TOOLKIT_CACHE_NAMESPACE``; the integrity key
        is ``TOOLKIT_CACHE_HMAC_KEY``.
        """
        if settings is None:
            # Imported here: the settings module pulls in the database driver,
            # and the cache must work (and import) without it.
            from toolkit.config import default_settings  # noqa: PLC0415

            settings = default_settings()
        return cls.from_url(
            settings.redis_url,
            namespace=namespace if namespace is not None else settings.cache_namespace,
            connect_timeout=settings.redis_connect_timeout,
            socket_timeout=settings.redis_socket_timeout,
            default_ttl=default_ttl,
            breaker=breaker,
            hmac_key=settings.cache_hmac_key,
        )

    # -- properties --------------------------------------------------------

    @property
    def namespace(self) -> str:
        """The prefix (without the trailing colon) of every key this client touches."""
        return self._namespace

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker guarding every call."""
        return self._breaker

    @property
    def redis(self) -> AnyRedis:
        """The underlying redis-py client (calls on it bypass the breaker)."""
        return self._redis

    @property
    def default_ttl(self) -> float:
        """Seconds a value set without a TTL lives."""
        return self._default_ttl

    @property
    def signer(self) -> Signer | None:
        """The integrity key's signer (None without a key); LLMCache signs entries with it."""
        return self._signer

    @property
    def generation_memory(self) -> GenerationMemory:
        """The newest LLM cache generation seen per key through this client (rollback checks)."""
        return self._generation_memory

    @property
    def recorder(self) -> StatsRecorder:
        """The live counters, for layers built on this client (e.g. LLMCache)."""
        return self._stats

    def key(self, name: str) -> str:
        """The full Redis key for ``name``: ``<namespace>:<name>``."""
        return namespaced_key(self._prefix, name)

    # -- the guarded call ------------------------------------------------------

    def execute(self, op: Callable[[AnyRedis], T]) -> T | Outcome:
        """Run ``op(redis)`` behind the breaker.

        Returns what ``op`` returned, :attr:`Outcome.BYPASSED` when the open
        breaker skipped the call, or :attr:`Outcome.FAILED` when the call
        raised. Never raises: every failure is counted in ``errors``,
        connection errors and timeouts also feed the breaker.
        """
        breaker = self._breaker
        if not breaker.allow():
            self._stats.bypass(BypassReason.BREAKER_OPEN)
            return Outcome.BYPASSED
        try:
            result = op(self._redis)
        except Exception as exc:  # fail open, always: nothing reaches the caller
            return self._failed(exc)
        breaker.record_success()
        return result

    def fetch(self, *full_keys: str) -> list[bytes | None] | Outcome:
        """``MGET`` of full (already namespaced) keys behind the breaker.

        :meth:`execute` specialised for the LLM cache's hit path: the same
        outcomes and counting, without building a closure per call.
        """
        breaker = self._breaker
        if not breaker.allow():
            self._stats.bypass(BypassReason.BREAKER_OPEN)
            return Outcome.BYPASSED
        try:
            result: list[bytes | None] = command(self._redis, "MGET", *full_keys)
        except Exception as exc:  # fail open, always
            return self._failed(exc)
        breaker.record_success()
        return result

    def _failed(self, exc: Exception) -> Outcome:
        """Count a failed call, tell the breaker whether Redis is at fault."""
        self._stats.error()
        if isinstance(exc, CONNECTIVITY_ERRORS):
            self._breaker.record_failure()
            _log.debug("redis call failed (%s): %s", type(exc).__name__, exc)
        elif isinstance(exc, redis.RedisError):
            self._breaker.record_success()  # the server answered
            _log.debug("redis refused a command (%s): %s", type(exc).__name__, exc)
        else:  # a driver bug, say: count it against Redis, to be safe
            self._breaker.record_failure()
            _log.debug("unexpected error in a redis call", exc_info=True)
        return Outcome.FAILED

    def call(self, op: Callable[[AnyRedis], T], fallback: T) -> T:
        """Like :meth:`execute`, but return ``fallback`` when the call did not succeed."""
        result = self.execute(op)
        return fallback if isinstance(result, Outcome) else result

    # -- bytes --------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        """The bytes stored at ``key``, or None on a miss (or while Redis is down)."""
        full = self.key(key)
        result = self.execute(lambda r: command(r, "GET", full))
        return self._count_read(result)

    def set(self, key: str, value: bytes | str, ttl: float | None = None) -> bool:
        """Store ``value`` at ``key`` for ``ttl`` seconds (default: ``default_ttl``).

        One atomic ``SET key value EX ttl``. Returns False when the write was
        dropped because Redis is down; the caller need not care.
        """
        full = self.key(key)
        data = as_bytes(value)
        seconds = ttl_seconds(ttl, self._default_ttl)
        return self._count_write(self.execute(lambda r: r.set(full, data, ex=seconds)))

    def delete(self, *keys: str) -> int:
        """Delete ``keys``; returns how many existed (0 while Redis is down)."""
        if not keys:
            return 0
        full = [self.key(k) for k in keys]
        result = self.execute(lambda r: r.unlink(*full))
        return 0 if isinstance(result, Outcome) else int(result)

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """Look ``keys`` up with one ``MGET`` (on a cluster, one per hash slot); returns
        the ones found.

        Every key counts as a hit or a miss (or, while the breaker is open,
        the whole batch as one bypass). On a cluster the per-slot ``MGET`` commands
        go in one pipeline (a round trip per node); if any node fails, the
        whole batch is a miss, never a silently partial answer.
        """
        names = list(dict.fromkeys(keys))  # dedupe, keep order
        if not names:
            return {}
        full = [self.key(k) for k in names]
        result = self._fetch_batch(full)
        if result is Outcome.BYPASSED:
            return {}
        found: dict[str, bytes] = {}
        if result is Outcome.FAILED:
            for _ in names:
                self._stats.miss()
            return found
        assert not isinstance(result, Outcome)
        for name, value in zip(names, result, strict=True):
            if value is None:
                self._stats.miss()
            else:
                self._stats.hit()
                found[name] = value
        return found

    def _fetch_batch(self, full: list[str]) -> list[bytes | None] | Outcome:
        """The values of ``full`` keys, in order: one ``MGET``, or one per slot on a cluster."""
        if not isinstance(self._redis, RedisCluster):
            return self.fetch(*full)
        groups = slot_groups(full)
        if len(groups) == 1:
            return self.fetch(*full)

        def op(r: AnyRedis) -> list[bytes | None]:
            pipe = r.pipeline(transaction=False)
            for group in groups:
                pipe.execute_command("MGET", *(full[i] for i in group))
            replies = pipe.execute()
            values: list[bytes | None] = [None] * len(full)
            for group, reply in zip(groups, replies, strict=True):
                for position, value in zip(group, reply, strict=True):
                    values[position] = value
            return values

        return self.execute(op)

    def set_many(self, items: Mapping[str, bytes | str], ttl: float | None = None) -> bool:
        """Store several values in one round trip (a pipeline of ``SET ... EX``).

        Each SET is atomic on its own; the batch is not a transaction. On a
        cluster redis-py's cluster pipeline sends each SET to its slot's master.
        """
        if not items:
            return True
        seconds = ttl_seconds(ttl, self._default_ttl)
        pairs = [(self.key(k), as_bytes(v)) for k, v in items.items()]

        def op(r: AnyRedis) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for full, data in pairs:
                pipe.set(full, data, ex=seconds)
            return pipe.execute()

        return self._count_write(self.execute(op))

    # -- JSON -----------------------------------------------------------------

    def get_json(self, key: str, default: Any = None) -> Any:
        """The JSON value at ``key``, or ``default`` on a miss.

        A stored value that is not valid JSON is counted as corrupt, deleted,
        and reported as a miss.
        """
        full = self.key(key)
        result = self.execute(lambda r: command(r, "GET", full))
        if isinstance(result, Outcome) or result is None:
            self._count_read(result)
            return default
        try:
            value = json.loads(result)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError both
            self.discard_corrupt(full)
            return default
        self._stats.hit()
        return value

    def set_json(self, key: str, value: Any, ttl: float | None = None) -> bool:
        """Store ``value`` as compact JSON; InvalidInput if it is not serialisable."""
        full = self.key(key)
        data = dumps_json(value)
        seconds = ttl_seconds(ttl, self._default_ttl)
        return self._count_write(self.execute(lambda r: r.set(full, data, ex=seconds)))

    # -- namespace -----------------------------------------------------------

    def clear(self) -> int:
        """Delete every key of this namespace with SCAN + UNLINK (never FLUSHDB).

        Returns how many keys were unlinked (so far, if Redis failed midway).
        Other namespaces and keys written concurrently under a new name may
        or may not survive; this is a maintenance operation, not a barrier.
        On a cluster every master is scanned, and redis-py splits each
        ``UNLINK`` batch by slot.
        """
        pattern = self._prefix + "*"
        deleted = [0]

        def op(r: AnyRedis) -> int:
            batch: list[bytes] = []
            names = (
                r.scan_iter(match=pattern, count=SCAN_BATCH, target_nodes=RedisCluster.PRIMARIES)
                if isinstance(r, RedisCluster)
                else r.scan_iter(match=pattern, count=SCAN_BATCH)
            )
            for name in names:
                batch.append(name)
                if len(batch) >= SCAN_BATCH:
                    deleted[0] += r.unlink(*batch)
                    batch.clear()
            if batch:
                deleted[0] += r.unlink(*batch)
            return deleted[0]

        self.execute(op)
        return deleted[0]

    def ping(self) -> bool:
        """Whether Redis answers (False while the breaker is open)."""

        def op(r: AnyRedis) -> bool:
            return bool(r.ping())

        return self.call(op, False)

    # -- stats and lifecycle -------------------------------------------------

    def stats(self) -> CacheStats:
        """A snapshot of the counters and the breaker state."""
        return self._stats.snapshot(self._breaker.state.value, self._breaker.opens)

    def reset_stats(self) -> None:
        """Zero the counters (the breaker keeps its state)."""
        self._stats.reset()

    def close(self) -> None:
        """Close the connections; the client must not be used afterwards."""
        try:
            self._redis.close()
            if not isinstance(self._redis, RedisCluster):  # a cluster closes its nodes' pools
                self._redis.connection_pool.disconnect()
        except Exception:  # closing a half-dead connection must not raise
            _log.debug("error while closing the redis client", exc_info=True)

    def __enter__(self) -> CacheClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(namespace={self._namespace!r}, "
            f"breaker={self._breaker.state.value})"
        )

    # -- helpers shared with the LLM cache -----------------------------------------

    def discard_corrupt(self, full_key: str) -> None:
        """Count a value that failed to decode as corrupt and a miss, and delete it."""
        self._stats.corrupt_entry()
        self._stats.miss()
        self.execute(lambda r: r.unlink(full_key))

    def discard_forged(self, full_key: str) -> None:
        """Count a value whose HMAC did not verify and a miss, and delete it."""
        self._stats.integrity_failure()
        self._stats.miss()
        self.execute(lambda r: r.unlink(full_key))

    def _count_read(self, result: bytes | Outcome | None) -> bytes | None:
        if result is Outcome.BYPASSED:
            return None
        if result is None or result is Outcome.FAILED:
            self._stats.miss()
            return None
        self._stats.hit()
        return result

    def _count_write(self, result: object) -> bool:
        if isinstance(result, Outcome):
            self._stats.dropped_write()
            return False
        self._stats.write()
        return True
