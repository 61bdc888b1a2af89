"""A cache of LLM responses keyed on a canonical fingerprint of the request.

See :class:`AsyncLLMCache`. Keys (``<ns>`` is the client's namespace, ``<t>`` the
tenant's UUID or ``shared``, ``<fp>`` the request fingerprint, ``<ms>`` a digest
of the model name)::

    <ns>:llm:v1:{<t>}:<fp>         the entry
    <ns>:llm:v1:{<t>}:lease:<fp>   the stampede lease while one caller computes it
    <ns>:llm:v1:{<t>}:gen          generation of the tenant's whole namespace
    <ns>:llm:v1:{<t>}:gen:<ms>     generation of one model, for that tenant

``{<t>}`` is the Redis Cluster hash tag: every key of one tenant hashes to
one slot, so the ``MGET`` of an entry with its generations (and its lease),
the generations' pipeline and the lease scripts never cross slots. Each
tenant (and the shared namespace) has its own generations, so invalidating
one leaves the others' entries valid; with an integrity key each tenant's
entries and generations are signed with a key derived from it
(:meth:`~toolkit.cache.codec.Signer.for_tenant`).

Every entry records the two generations it was written under; a lookup
reads the entry and both generations with one ``MGET`` and treats an entry
from another generation as a miss. Invalidating a model or the namespace is
one ``SET`` of a new generation, whatever the number of entries. A new
generation is its issue time plus 16 random bits rather than the old one
plus one, so a generation key that was evicted and written again can never
revive old entries, and one rolled back to an older value is recognised by
any client that saw the newer; a missing generation key makes every lookup
under it a miss.

Nothing read is trusted: an entry that does not decode, or whose payload
would exceed ``max_entry_bytes`` (a zlib bomb stops inflating there), is
corrupt; with an integrity key on the client (``TOOLKIT_CACHE_HMAC_KEY``)
an entry without a valid HMAC for its key is a forgery. Either is a miss,
deleted and counted (``corrupt`` / ``integrity_failures``). Nothing of a
sensitive or secret-bearing request is kept in the in-process memos.

The lease of a computation is renewed while it runs (every third of
``lease_ttl``), so a call slower than ``lease_ttl`` is still computed once.
"""

from __future__ import annotations

import functools
import inspect
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from functools import lru_cache
from typing import Any, Final, TypeVar, cast
from uuid import UUID

from toolkit.aio.cache.client import AnyRedis, AsyncCacheClient
from toolkit.aio.concurrency import ASYNC, run_blocking, sleep
from toolkit.aio.leases import LeaseKeeper
from toolkit.cache import codec, fingerprint
from toolkit.cache.entries import (
    CLEAN_MEMORY,
    DEFAULT,
    DEFAULT_LLM_TTL,
    EXTEND_LUA,
    OFF_LOOP_BYTES,
    RELEASE_LUA,
    CachedResponse,
    Default,
    Job,
    Lookup,
    Plan,
    encode_body,
    is_nondeterministic,
    key_prefix,
    lease_key,
    new_generation_value,
    open_generation,
    seal_generation,
    usage_of,
)
from toolkit.cache.fingerprint import (
    Canonical,
    KeyExplanation,
    RequestFingerprinter,
    model_scope,
)
from toolkit.cache.inputs import (
    Outcome,
    fraction,
    positive_seconds,
    ttl_seconds,
)
from toolkit.cache.secrets import SecretDetector
from toolkit.cache.stats import BypassReason, CacheStats
from toolkit.errors import InvalidInput
from toolkit.tenants import tenant_id

__all__ = ["AsyncLLMCache"]
# Shared with the other API (toolkit.cache.entries); apart, so both spellings sort.
__all__ += ["DEFAULT_LLM_TTL", "CachedResponse", "is_nondeterministic"]

_log = logging.getLogger(__name__)

_DEFAULT_DETECTOR: Final = SecretDetector()

_MODEL_KEYS: Final = 256
"""How many models' generation keys one cache (per tenant) remembers."""
_new_tuple: Final = tuple.__new__
"""Builds a NamedTuple without its Python-level ``__new__`` (a call saved per lookup)."""

Generations = tuple[bytes, bytes]
"""The namespace and model generation ids in effect (verified, with an integrity key)."""
T = TypeVar("T")


class AsyncLLMCache:
    """Caches LLM responses in Redis, failing open.

    ``client``
        The :class:`AsyncCacheClient`; its namespace, breaker and counters are shared.
    ``ttl``
        Default lifetime of an entry in seconds (24 h); each write subtracts up
        to ``ttl_jitter`` of it at random so that entries written together do
        not all expire together.
    ``cache_nondeterministic``
        Whether to cache requests that sample (temperature above zero, or no
        temperature, and no seed). False by default: such a request bypasses
        the cache, because replaying one sample for every caller changes what
        the caller asked for. Set it True when one answer per request is what
        you want (tests, demos, cost control).
    ``secret_detector``
        Requests and responses holding a secret shape bypass the cache; pass
        None to switch detection off, or your own :class:`SecretDetector`.
    ``compress_threshold``
        Entries at least this many bytes are zlib-compressed (None: never).
        zlib inflates at a few hundred MB/s, slower than a loopback GET of
        the same bytes, so the default (128 KiB) keeps hits on ordinary
        responses uncompressed and saves memory on the very large ones.
    ``max_entry_bytes``
        The maximum entry size: the largest payload (uncompressed) written or
        read, 32 MiB by default. A larger response is not stored (a bypass,
        ``too_large``); a stored entry that is or inflates larger is corrupt.
    ``lease_ttl`` / ``wait_timeout`` / ``poll_interval``
        Stampede control of :meth:`get_or_compute`, see there.
    ``tenant``
        The tenant (a UUID or its text) whose entries this cache reads and
        writes; None (the default) is the one shared namespace, which every
        cache built without a tenant shares: an identical request from any
        caller hits the same entry there. A platform serving several tenants
        builds one cache and binds it per request with :meth:`for_tenant`.

    Entries are signed when the client has an integrity key (see
    :class:`AsyncCacheClient`); then only entries that verify are served.
    """

    def __init__(
        self,
        client: AsyncCacheClient,
        *,
        ttl: float = DEFAULT_LLM_TTL,
        ttl_jitter: float = 0.05,
        cache_nondeterministic: bool = False,
        secret_detector: SecretDetector | Default | None = DEFAULT,
        fingerprinter: RequestFingerprinter | None = None,
        compress_threshold: int | None = 128 * 1024,
        max_entry_bytes: int = codec.DEFAULT_MAX_ENTRY_BYTES,
        lease_ttl: float = 30.0,
        wait_timeout: float = 30.0,
        poll_interval: float = 0.005,
        tenant: UUID | str | None = None,
    ) -> None:
        if not isinstance(client, AsyncCacheClient):
            raise InvalidInput(f"client must be a {AsyncCacheClient.__name__}", field="client")
        self._ttl = float(ttl_seconds(ttl, DEFAULT_LLM_TTL))
        jitter = fraction(ttl_jitter, "ttl_jitter")
        for name, value in (
            ("lease_ttl", lease_ttl),
            ("wait_timeout", wait_timeout),
            ("poll_interval", poll_interval),
        ):
            positive_seconds(value, name)
        if compress_threshold is not None and (
            isinstance(compress_threshold, bool)
            or not isinstance(compress_threshold, int)  # before comparing: a Decimal NaN raises
            or compress_threshold < 0
        ):
            raise InvalidInput(
                "compress_threshold must be an integer >= 0 or None",
                field="compress_threshold",
                value=compress_threshold,
            )
        if isinstance(max_entry_bytes, bool) or not isinstance(max_entry_bytes, int):
            raise InvalidInput("max_entry_bytes must be an int", field="max_entry_bytes")
        if max_entry_bytes < 1:
            raise InvalidInput(
                "max_entry_bytes must be >= 1", field="max_entry_bytes", value=max_entry_bytes
            )
        bound = None if tenant is None else tenant_id(tenant)
        self._client = client
        self._max_entry_bytes = max_entry_bytes
        self._jitter = jitter
        self.cache_nondeterministic = bool(cache_nondeterministic)
        self._detector = _DEFAULT_DETECTOR if secret_detector is DEFAULT else secret_detector
        self._fingerprinter = fingerprinter or RequestFingerprinter()
        self._compress_threshold = compress_threshold
        self._lease_ttl = float(lease_ttl)
        self._wait_timeout = float(wait_timeout)
        self._poll_interval = float(poll_interval)
        self._stats = client.recorder
        self._clean_requests: set[str] = set()
        self._release_script = client.redis.register_script(RELEASE_LUA)
        self._extend_script = client.redis.register_script(EXTEND_LUA)
        self._model_scope = lru_cache(maxsize=256)(model_scope)  # shared with bound caches
        self._bind(bound)

    def _bind(self, tenant: UUID | None) -> None:
        """Point this cache's keys and signer at ``tenant`` (None: the shared namespace)."""
        self._tenant = tenant
        self._prefix = key_prefix(self._client.namespace, tenant)
        self._ns_gen_key = self._prefix + "gen"
        self._model_gen_prefix = self._prefix + "gen:"
        self._model_gen_keys: dict[str, str] = {}  # model -> its generation key, for this tenant
        main = self._client.signer
        self._signer = main if main is None or tenant is None else main.for_tenant(tenant)

    # -- public API ------------------------------------------------------------

    @property
    def client(self) -> AsyncCacheClient:
        """The underlying :class:`AsyncCacheClient`."""
        return self._client

    @property
    def tenant(self) -> UUID | None:
        """The tenant whose entries this cache serves; None for the shared namespace."""
        return self._tenant

    def for_tenant(self, tenant: UUID | str) -> AsyncLLMCache:
        """This cache bound to ``tenant`` (a UUID or its text): its own entries, leases,
        generations and, with an integrity key, signing key.

        Cheap enough to call per request (about 2 µs): the new cache shares
        the client (breaker, counters), detector, fingerprinter, registered
        scripts and memos with this one and copies its settings; the tenant's
        derived key is computed once per tenant. None is refused
        (InvalidInput), so a tenant that was never resolved cannot fall back
        to the shared namespace.
        """
        bound = tenant_id(tenant)
        if bound == self._tenant:
            return self
        # What copy.copy does, without its generic machinery (several times slower).
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view._bind(bound)
        return view

    def key(self, request: Mapping[str, Any]) -> str:
        """The Redis key of ``request``'s entry (a digest only, never the prompt)."""
        return self._prefix + self._fingerprinter.canonical(request).fingerprint

    def explain_key(self, request: Mapping[str, Any]) -> KeyExplanation:
        """The key of ``request`` and the fields that went into it, and those left out."""
        canonical = self._fingerprinter.canonical(request)
        return self._fingerprinter.explain(request, self._prefix + canonical.fingerprint)

    async def get(self, request: Mapping[str, Any]) -> CachedResponse | None:
        """The cached response to ``request``, or None (a miss, a bypass, or Redis down)."""
        plan = self._plan(request)
        if plan.bypass is not None:
            self._stats.bypass(plan.bypass)
            return None
        found, _ = await self._lookup(plan, count=True)
        return found if isinstance(found, CachedResponse) else None

    async def set(
        self,
        request: Mapping[str, Any],
        response: Any,
        usage: Mapping[str, Any] | None = None,
        ttl: float | None = None,
    ) -> bool:
        """Store ``response`` to ``request``; returns whether it was stored.

        Not stored (and counted as a bypass): a sensitive request, a request or
        response holding a secret, a sampling request unless
        ``cache_nondeterministic``. Not stored either while Redis is down.
        Raises InvalidInput if the request, response or usage is not JSON or
        ``ttl`` is not a positive number.
        """
        plan = self._plan(request)
        body = encode_body(response)
        usage_dict = usage_of(response, usage)
        seconds = self._ttl_with_jitter(ttl)
        if plan.bypass is not None:
            self._stats.bypass(plan.bypass)
            return False
        return await self._store(
            plan,
            response=response,
            body=body,
            usage=usage_dict,
            seconds=seconds,
            generations=None,
        )

    async def get_or_compute(
        self,
        request: Mapping[str, Any],
        fn: Callable[[], Awaitable[Any]],
        *,
        usage: Mapping[str, Any] | None = None,
        ttl: float | None = None,
        wait_timeout: float | None = None,
        lease_ttl: float | None = None,
    ) -> CachedResponse:
        """The cached response to ``request``, or ``await fn()``'s result, stored.

        When many callers (tasks, threads or processes) miss on the same
        request at once, ``fn`` runs once: the first takes a lease
        (``SET NX PX lease_ttl``), the others poll for its result for up to
        ``wait_timeout`` seconds. While ``fn`` runs the lease is renewed every
        third of ``lease_ttl``, so a computation slower than ``lease_ttl`` is
        not started again by a waiter. If the lease holder fails or dies (its
        lease is released or expires) a waiter takes the lease and computes;
        a waiter that runs out of time computes without it. While Redis is
        down ``fn`` simply runs.

        ``fn`` takes no arguments and returns the response (a str or any JSON
        value); an exception from it propagates unchanged. ``usage`` defaults
        to ``response["usage"]`` when the response is a dict that has one.
        """
        plan = self._plan(request)
        seconds = self._ttl_with_jitter(ttl)
        wait = (
            self._wait_timeout
            if wait_timeout is None
            else positive_seconds(wait_timeout, "wait_timeout")
        )
        lease = self._lease_ttl if lease_ttl is None else positive_seconds(lease_ttl, "lease_ttl")
        if usage is not None:
            usage_of(None, usage)  # refuse a bad usage before running fn
        job = Job(plan, fn, usage, seconds)
        if plan.bypass is not None:
            self._stats.bypass(plan.bypass)
            return await self._compute(job, store=False)
        found, _ = await self._lookup(plan, count=True)
        if isinstance(found, CachedResponse):
            return found
        if found is Lookup.UNAVAILABLE:
            return await self._compute(job, store=False)
        return await self._coalesce(job, wait, max(1, int(lease * 1000)))

    async def _coalesce(self, job: Job, wait: float, lease_ms: int) -> CachedResponse:
        """After a miss: compute under the lease, or wait for whoever holds it."""
        plan = job.plan
        lease = lease_key(self._prefix, plan.key)
        token = secrets.token_hex(16)
        deadline = time.monotonic() + wait
        store = False  # unless we end up computing on a Redis that answers
        while True:
            acquired = await self._client.execute(
                lambda r: r.set(lease, token, nx=True, px=lease_ms)
            )
            if isinstance(acquired, Outcome):
                break
            if acquired:
                return await self._compute_under_lease(job, lease, token, lease_ms)
            found, lease_gone = await self._wait_for(plan, lease, deadline)
            if isinstance(found, CachedResponse):
                return found
            if found is Lookup.UNAVAILABLE:
                break
            if not lease_gone:  # timed out: compute without the lease
                store = True
                break
            # The lease is gone without a result (its holder failed or died): take it.
        return await self._compute(job, store=store)

    async def invalidate(self, request: Mapping[str, Any]) -> bool:
        """Delete the entry of ``request``; returns whether one existed."""
        key = self.key(request)

        async def op(r: AnyRedis) -> bool:
            return bool(await r.unlink(key))

        return await self._client.call(op, False)

    async def invalidate_model(self, model: str) -> bool:
        """Invalidate every entry of ``model`` for this cache's tenant (or the shared
        namespace), whatever the namespace generation, in O(1).

        Returns False if Redis could not be told (the entries then stay valid
        until their TTL).
        """
        if not isinstance(model, str) or not model.strip():
            raise InvalidInput("model must be a non-empty str", field="model", value=model)
        return await self._new_generation(self._model_gen_key(model)) is not None

    async def invalidate_all(self) -> bool:
        """Invalidate every entry of this cache's tenant (or of the shared namespace) in O(1).

        Other tenants' entries stay valid.
        """
        return await self._new_generation(self._ns_gen_key) is not None

    def stats(self) -> CacheStats:
        """The counters of the underlying client (shared with it)."""
        return self._client.stats()

    # -- internals ---------------------------------------------------------------

    def _model_gen_key(self, model: str) -> str:
        known = self._model_gen_keys
        key = known.get(model)
        if key is None:
            key = self._model_gen_prefix + self._model_scope(model)
            if len(known) >= _MODEL_KEYS:
                known.clear()  # start afresh rather than grow
            known[model] = key
        return key

    def _plan(self, request: Mapping[str, Any]) -> Plan:
        fingerprinter = self._fingerprinter
        token, canonical = fingerprinter.recall(request)  # a repeat skips the canonical JSON
        recalled = canonical is not None
        if canonical is None:
            canonical = fingerprinter.canonical(request)
        bypass: str | None = None
        if request.get("sensitive"):
            bypass = BypassReason.SENSITIVE
        elif (
            self._detector is not None
            and canonical.fingerprint not in self._clean_requests  # a call saved on a repeat
            and self._holds_secret(request, canonical)
        ):
            bypass = BypassReason.SECRET_IN_REQUEST
        elif not self.cache_nondeterministic and is_nondeterministic(request):
            bypass = BypassReason.NONDETERMINISTIC
        if bypass in (BypassReason.SENSITIVE, BypassReason.SECRET_IN_REQUEST):
            self._forget(canonical)
        elif not recalled:
            fingerprint.remember(canonical)
            fingerprinter.remember(token, canonical)
        model = canonical.model
        model_gen_key = self._model_gen_keys.get(model) or self._model_gen_key(model)
        key = self._prefix + canonical.fingerprint
        return _new_tuple(Plan, (key, model, model_gen_key, bypass))

    def _forget(self, canonical: Canonical) -> None:
        """Drop a sensitive or secret-bearing request's text from the in-process memos.

        Its text is never memoised by this cache; this drops what an earlier,
        unmarked call of the same request left there.
        """
        fingerprint.forget(canonical)
        self._fingerprinter.forget(canonical)
        if self._detector is not None and canonical.strings is not None:
            self._detector.forget(canonical.strings)

    def _holds_secret(self, request: Mapping[str, Any], canonical: Canonical) -> bool:
        """Whether a string that goes into the key holds a secret shape.

        Requests already found clean are remembered by fingerprint (the
        verdict is a function of the canonical text, and the detector never
        changes), so a repeated request costs one set lookup. Otherwise a
        hint test on the canonical JSON clears most requests; only one that
        holds a hint has its strings scanned with the regexes.
        """
        detector = self._detector
        fingerprint = canonical.fingerprint
        if detector is None or fingerprint in self._clean_requests:
            return False
        if detector.could_match(canonical.canonical_json):
            strings = canonical.strings
            if strings is None:
                strings = self._fingerprinter.strings(request)
            if detector.scan_strings(strings):
                return True
        if len(self._clean_requests) >= CLEAN_MEMORY:
            self._clean_requests.clear()  # start afresh rather than grow (shared with bound caches)
        self._clean_requests.add(fingerprint)
        return False

    def _ttl_with_jitter(self, ttl: float | None) -> int:
        seconds = ttl_seconds(ttl, self._ttl)
        if self._jitter and seconds > 1:
            # Not security-relevant: spreads expiry times.
            seconds -= int(seconds * self._jitter * random.random())  # noqa: S311
        return max(1, seconds)

    async def _lookup(
        self, plan: Plan, *, count: bool
    ) -> tuple[CachedResponse | Lookup, Generations | None]:
        """Read the entry and both generations in one round trip.

        Returns the response or why there is none, and the generations (None
        when Redis did not answer).
        """
        result = await self._client.fetch(plan.key, self._ns_gen_key, plan.model_gen_key)
        if isinstance(result, Outcome):
            if count and result is Outcome.FAILED:
                self._stats.miss()
            return Lookup.UNAVAILABLE, None
        entry, ns_value, model_value = result
        generations = await self._current_generations(plan, ns_value, model_value)
        found = await self._decode(plan, entry, generations, count)
        return found, generations

    async def _current_generations(
        self, plan: Plan, ns_value: bytes | None, model_value: bytes | None
    ) -> Generations | None:
        """The generation ids read from Redis, or None if either is missing or not to be trusted.

        With an integrity key a value whose HMAC does not verify is missing,
        and one older than a generation this process has seen at that key
        was rolled back: counted as an integrity failure, and replaced with
        a newer generation so that no process serves what it revived.
        """
        if (
            self._signer is None
            and ns_value is not None
            and model_value is not None
            and len(ns_value) == len(model_value) == codec.GENERATION_BYTES
        ):
            return ns_value, model_value  # what open_generation gives without a key, inline
        ns_key, model_key = self._ns_gen_key, plan.model_gen_key
        ns_gen = open_generation(ns_value, self._signer, ns_key)
        model_gen = open_generation(model_value, self._signer, model_key)
        if ns_gen is None or model_gen is None:
            return None
        if self._signer is not None:
            memory = self._client.generation_memory
            rolled_back = [
                key
                for key, generation in ((ns_key, ns_gen), (model_key, model_gen))
                if not memory.observe(key, generation)
            ]
            if rolled_back:
                _log.warning("a cache generation key was rolled back: %s", rolled_back[0])
                self._stats.integrity_failure()
                for key in rolled_back:
                    await self._new_generation(key)
                return None
        return ns_gen, model_gen

    async def _off_loop(self, size: int, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``; in the async API in a worker thread when ``size`` (bytes) is large.

        Scanning, compressing, signing and decoding a large entry take tens
        to hundreds of milliseconds that would otherwise hold up the loop.
        """
        if size >= OFF_LOOP_BYTES:
            return await run_blocking(fn, *args)
        return fn(*args)

    async def _decode(
        self,
        plan: Plan,
        entry: bytes | None,
        generations: Generations | None,
        count: bool,
    ) -> CachedResponse | Lookup:
        if entry is None:
            if count:
                self._stats.miss()
            return Lookup.MISS
        ns_gen, model_gen = (None, None) if generations is None else generations
        try:
            if len(entry) < OFF_LOOP_BYTES:  # called directly: no partial to build on a hit
                meta = codec.decode(
                    entry,
                    ns_gen,
                    model_gen,
                    max_bytes=self._max_entry_bytes,
                    signer=self._signer,
                    name=plan.key,
                )
            else:
                meta = await run_blocking(
                    functools.partial(
                        codec.decode,
                        entry,
                        ns_gen,
                        model_gen,
                        max_bytes=self._max_entry_bytes,
                        signer=self._signer,
                        name=plan.key,
                    )
                )
        except codec.ForgedEntryError:
            _log.warning("deleting a cache entry that failed its integrity check: %s", plan.key)
            await self._client.discard_forged(plan.key)
            return Lookup.MISS
        except codec.CorruptEntryError:
            _log.debug("deleting a corrupt cache entry %s", plan.key)
            await self._client.discard_corrupt(plan.key)
            return Lookup.MISS
        if meta is None:
            # Written under another generation (invalidated, or the generation is
            # missing or rolled back), past its signed expiry, or of an earlier
            # signed format. Deleting it may
            # race with a fresh write of the same key; that costs a miss,
            # never a wrong hit.
            if count:
                self._stats.miss()
            await self._client.execute(lambda r: r.unlink(plan.key))
            return Lookup.MISS
        if count:
            self._stats.hit()
        return _new_tuple(CachedResponse, (meta[3], meta[0], meta[1], meta[2], True))

    async def _store(
        self,
        plan: Plan,
        *,
        response: Any,
        body: codec.Body,
        usage: dict[str, Any] | None,
        seconds: int,
        generations: Generations | None,
    ) -> bool:
        size = len(body.data) + len(body.json)
        detector = self._detector
        if detector is not None and await _finish(detector.scan_value_steps(response)):
            self._stats.bypass(BypassReason.SECRET_IN_RESPONSE)
            return False
        current = generations or await self._ensure_generations(plan)
        if current is None:
            self._stats.dropped_write()
            return False
        now = time.time()
        try:
            data = await self._off_loop(
                size,
                functools.partial(
                    codec.encode_entry,
                    body,
                    generations=current,
                    model=plan.model,
                    created_at=now,
                    usage=usage,
                    compress_threshold=self._compress_threshold,
                    max_bytes=self._max_entry_bytes,
                    signer=self._signer,
                    name=plan.key,
                    expires_at=now + seconds,
                ),
            )
        except codec.EntryTooLargeError:
            self._stats.bypass(BypassReason.TOO_LARGE)
            return False
        except (TypeError, ValueError) as exc:  # usage was checked before; a guard
            raise InvalidInput(f"cannot encode the entry: {exc}", field="usage") from None
        key = plan.key
        result = await self._client.execute(lambda r: r.set(key, data, ex=seconds))
        if isinstance(result, Outcome):
            self._stats.dropped_write()
            return False
        self._stats.write()
        return True

    async def _ensure_generations(self, plan: Plan) -> Generations | None:
        """The current generations, creating missing ones (``SET NX GET``).

        A value that is malformed, fails its HMAC (an earlier format, a
        forgery) or was rolled back is replaced with a new generation.
        """
        keys = (self._ns_gen_key, plan.model_gen_key)
        memory = self._client.generation_memory
        fresh = tuple(new_generation_value(memory.newest(key)) for key in keys)

        async def op(r: AnyRedis) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for key, generation in zip(keys, fresh, strict=True):
                pipe.set(key, seal_generation(generation, self._signer, key), nx=True, get=True)
            return await pipe.execute()

        result = await self._client.execute(op)
        if isinstance(result, Outcome):
            return None
        current: list[bytes] = []
        for key, made, old in zip(keys, fresh, result, strict=True):
            if old is None:
                if self._signer is not None:
                    memory.observe(key, made)
                current.append(made)
                continue
            found = await self._current_generation(key, cast(bytes, old))
            if found is None:
                return None
            current.append(found)
        return current[0], current[1]

    async def _current_generation(self, key: str, value: bytes) -> bytes | None:
        """The generation id in ``value`` (read at ``key``), replaced if it cannot be trusted."""
        generation = open_generation(value, self._signer, key)
        if self._signer is None:
            return generation
        if generation is not None and self._client.generation_memory.observe(key, generation):
            return generation
        if generation is not None:
            _log.warning("a cache generation key was rolled back: %s", key)
            self._stats.integrity_failure()
        return await self._new_generation(key)

    async def _new_generation(self, key: str) -> bytes | None:
        """Write a new generation at ``key`` (newer than any seen); None if Redis did not answer."""
        memory = self._client.generation_memory
        generation = new_generation_value(memory.newest(key))
        value = seal_generation(generation, self._signer, key)

        async def op(r: AnyRedis) -> bool:
            return bool(await r.set(key, value))

        if not await self._client.call(op, False):
            return None
        memory.observe(key, generation)
        return generation

    async def _compute(
        self,
        job: Job,
        *,
        store: bool,
        generations: Generations | None = None,
    ) -> CachedResponse:
        if ASYNC:
            pending = job.fn()
            if not inspect.isawaitable(pending):
                raise InvalidInput(
                    "fn must be a coroutine function (or return an awaitable)",
                    field="fn",
                    value=type(pending).__name__,
                )
            response = await pending
        else:
            response = job.fn()
        usage = usage_of(response, job.usage)
        if store:
            body = encode_body(response)
            await self._store(
                job.plan,
                response=response,
                body=body,
                usage=usage,
                seconds=job.seconds,
                generations=generations,
            )
        return CachedResponse(response, job.plan.model, time.time(), usage, False)

    async def _compute_under_lease(
        self, job: Job, lease: str, token: str, lease_ms: int
    ) -> CachedResponse:
        keeper = self._lease_keeper(lease, token, lease_ms)
        try:
            # Someone may have stored the entry between our miss and our lease.
            found, generations = await self._lookup(job.plan, count=False)
            if isinstance(found, CachedResponse):
                return found
            keeper.start()
            return await self._compute(job, store=True, generations=generations)
        finally:
            try:
                await keeper.stop()
            finally:  # released even if a second cancellation interrupts the stop
                await self._client.execute(
                    lambda r: self._release_script(keys=[lease], args=[token])
                )

    def _lease_keeper(self, lease: str, token: str, lease_ms: int) -> LeaseKeeper:
        """A keeper that renews our stampede lease while we compute.

        Every third of the lease's TTL it runs a compare-token-and-``PEXPIRE``
        script through the client (behind its breaker), so a computation slower
        than ``lease_ttl`` keeps its lease and the waiters keep waiting for its
        result. It stops when told to, or once the lease is no longer ours
        (expired, and perhaps taken by another caller). A renewal that lands
        after the release is harmless: the script only extends a lease that
        still holds our token.
        """
        keys: list[str] = [lease]
        args: list[str | int] = [token, lease_ms]

        async def renew() -> bool:
            renewed = await self._client.execute(
                lambda r: self._extend_script(keys=keys, args=args)
            )
            if isinstance(renewed, Outcome):
                return True  # Redis is down: try again next time, the lease may survive
            if not renewed:
                _log.debug("lost the lease %s while computing", lease)
            return bool(renewed)

        interval = max(lease_ms / 3000, 0.001)  # a third of the TTL; never a spin
        # stop() waits this long for a renewal in flight (bounded by the socket timeout).
        return LeaseKeeper(
            renew, interval, name="toolkit-lease-keeper", stop_timeout=max(1.0, interval)
        )

    async def _wait_for(
        self, plan: Plan, lease: str, deadline: float
    ) -> tuple[CachedResponse | Lookup, bool]:
        """Poll until the entry appears, the lease goes, or ``deadline``.

        Returns the response; or MISS and True when the lease is gone (the
        caller may take it); or MISS and False on timeout; or UNAVAILABLE.
        """
        delay = self._poll_interval
        keys = (plan.key, self._ns_gen_key, plan.model_gen_key, lease)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Lookup.MISS, False
            # Jitter keeps waiters from polling in lock step.
            await sleep(min(delay * (0.5 + random.random()), remaining))  # noqa: S311
            delay = min(delay * 2, 0.05)
            result = await self._client.fetch(*keys)
            if isinstance(result, Outcome):
                return Lookup.UNAVAILABLE, False
            entry, ns_value, model_value, lease_value = result
            generations = await self._current_generations(plan, ns_value, model_value)
            found = await self._decode(plan, entry, generations, count=False)
            if isinstance(found, CachedResponse):
                return found, False
            if lease_value is None:
                return Lookup.MISS, True

    def __repr__(self) -> str:
        tenant = "shared" if self._tenant is None else str(self._tenant)
        return (
            f"{type(self).__name__}(namespace={self._client.namespace!r}, "
            f"tenant={tenant!r}, ttl={self._ttl:g})"
        )


async def _finish(steps: Generator[None, None, T]) -> T:
    """Run a stepwise scan to its end, letting other tasks run between its steps.

    On the event loop rather than in a thread: ``re`` holds the GIL for a
    whole search, and a worker thread holding it can be descheduled by the
    OS with the loop's thread waiting behind it, while a step here is short.
    """
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return cast(T, done.value)
        if ASYNC:
            await sleep(0)
