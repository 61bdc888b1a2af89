"""A cache of LLM responses keyed on a canonical fingerprint of the request.

See :class:`LLMCache`. Keys (``<ns>`` is the client's namespace, ``<fp>`` the
request fingerprint, ``<ms>`` a digest of the model name)::

    <ns>:llm:v1:<fp>           the entry
    <ns>:llm:v1:lease:<fp>     the stampede lease while one caller computes it
    <ns>:llm:v1:gen            generation of the whole namespace
    <ns>:llm:v1:gen:<ms>       generation of one model

Every entry records the two generations it was written under; a lookup
reads the entry and both generations with one ``MGET`` and treats an entry
from another generation as a miss. Invalidating a model or the namespace is
one ``SET`` of a new generation, whatever the number of entries. A new
generation is a random 64-bit value rather than the old one plus one, so a
generation key that was evicted and written again can never revive old
entries; and a missing generation key makes every lookup under it a miss.

Nothing read is trusted: an entry that does not decode, or whose payload
would exceed ``max_entry_bytes`` (a zlib bomb stops inflating there), is
corrupt; with an integrity key on the client (``TOOLKIT_CACHE_HMAC_KEY``)
an entry without a valid HMAC for its key is a forgery. Either is a miss,
deleted and counted (``corrupt`` / ``integrity_failures``). Nothing of a
sensitive or secret-bearing request is kept in the in-process memos.
"""

from __future__ import annotations

import enum
import json
import logging
import random
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, NamedTuple, cast

from redis import Redis

from toolkit.cache import codec, fingerprint
from toolkit.cache.client import CacheClient, Outcome, ttl_seconds
from toolkit.cache.fingerprint import (
    KEY_VERSION,
    Canonical,
    KeyExplanation,
    RequestFingerprinter,
    model_scope,
)
from toolkit.cache.secrets import SecretDetector
from toolkit.cache.stats import BypassReason, CacheStats
from toolkit.errors import InvalidInput

__all__ = ["DEFAULT_LLM_TTL", "CachedResponse", "LLMCache", "is_nondeterministic"]

_log = logging.getLogger(__name__)

DEFAULT_LLM_TTL: Final = 24 * 3600.0
"""Seconds an LLM response lives by default."""

_DEFAULT_DETECTOR: Final = SecretDetector()
_CLEAN_MEMORY: Final = 16_384
"""How many request fingerprints found free of secrets are remembered."""

# Compare-and-delete: release a lease only if it is still ours (it may have
# expired and been taken by another caller meanwhile).
_RELEASE_LUA: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class _Default(enum.Enum):
    TOKEN = 0


_DEFAULT: Final = _Default.TOKEN


def is_nondeterministic(request: Mapping[str, Any]) -> bool:
    """Whether ``request`` samples: a temperature above zero and no seed.

    A request without a temperature uses the provider's default, which is
    above zero for the common providers, so it counts as sampling too. A
    ``seed`` makes any temperature count as deterministic.
    """
    if request.get("seed") is not None:
        return False
    temperature = request.get("temperature")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        return True
    return temperature > 0


class CachedResponse(NamedTuple):
    """A response with its metadata, from the cache or just computed (immutable)."""

    response: Any
    """The response as stored: a str, or any JSON value (tuples come back as lists)."""
    model: str
    created_at: float
    """When the response was stored (or computed), in Unix seconds."""
    usage: dict[str, Any] | None
    """Token usage when it was given (or found as ``response["usage"]``)."""
    from_cache: bool
    """False when this call ran the compute function."""


class _Plan(NamedTuple):
    key: str
    model: str
    model_gen_key: str
    bypass: str | None


@dataclass(frozen=True, slots=True)
class _Job:
    plan: _Plan
    fn: Callable[[], Any]
    usage: Mapping[str, Any] | None
    seconds: int


class _Lookup(enum.Enum):
    MISS = "miss"  # Redis answered: nothing usable
    UNAVAILABLE = "unavailable"  # Redis did not answer (or the breaker is open)


class LLMCache:
    """Caches LLM responses in Redis, failing open.

    ``client``
        The :class:`CacheClient`; its namespace, breaker and counters are shared.
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

    Entries are signed when the client has an integrity key (see
    :class:`CacheClient`); then only entries that verify are served.
    """

    def __init__(
        self,
        client: CacheClient,
        *,
        ttl: float = DEFAULT_LLM_TTL,
        ttl_jitter: float = 0.05,
        cache_nondeterministic: bool = False,
        secret_detector: SecretDetector | _Default | None = _DEFAULT,
        fingerprinter: RequestFingerprinter | None = None,
        compress_threshold: int | None = 128 * 1024,
        max_entry_bytes: int = codec.DEFAULT_MAX_ENTRY_BYTES,
        lease_ttl: float = 30.0,
        wait_timeout: float = 30.0,
        poll_interval: float = 0.005,
    ) -> None:
        if not isinstance(client, CacheClient):
            raise InvalidInput("client must be a CacheClient", field="client")
        self._ttl = float(ttl_seconds(ttl, DEFAULT_LLM_TTL))
        if isinstance(ttl_jitter, bool) or not 0 <= ttl_jitter < 1:
            raise InvalidInput("ttl_jitter must be in [0, 1)", field="ttl_jitter", value=ttl_jitter)
        for name, value in (
            ("lease_ttl", lease_ttl),
            ("wait_timeout", wait_timeout),
            ("poll_interval", poll_interval),
        ):
            _positive(value, name)
        if compress_threshold is not None and (
            isinstance(compress_threshold, bool) or compress_threshold < 0
        ):
            raise InvalidInput(
                "compress_threshold must be >= 0 or None", field="compress_threshold"
            )
        if isinstance(max_entry_bytes, bool) or not isinstance(max_entry_bytes, int):
            raise InvalidInput("max_entry_bytes must be an int", field="max_entry_bytes")
        if max_entry_bytes < 1:
            raise InvalidInput(
                "max_entry_bytes must be >= 1", field="max_entry_bytes", value=max_entry_bytes
            )
        self._client = client
        self._max_entry_bytes = max_entry_bytes
        self._signer = client.signer
        self._jitter = float(ttl_jitter)
        self.cache_nondeterministic = bool(cache_nondeterministic)
        self._detector = _DEFAULT_DETECTOR if secret_detector is _DEFAULT else secret_detector
        self._fingerprinter = fingerprinter or RequestFingerprinter()
        self._compress_threshold = compress_threshold
        self._lease_ttl = float(lease_ttl)
        self._wait_timeout = float(wait_timeout)
        self._poll_interval = float(poll_interval)
        self._prefix = f"{client.namespace}:llm:{KEY_VERSION}:"
        self._ns_gen_key = self._prefix + "gen"
        self._model_gen_key = lru_cache(maxsize=256)(self._make_model_gen_key)
        self._stats = client.recorder
        self._clean_requests: set[str] = set()
        self._release_script = client.redis.register_script(_RELEASE_LUA)

    # -- public API ------------------------------------------------------------

    @property
    def client(self) -> CacheClient:
        """The underlying :class:`CacheClient`."""
        return self._client

    def key(self, request: Mapping[str, Any]) -> str:
        """The Redis key of ``request``'s entry (a digest only, never the prompt)."""
        return self._prefix + self._fingerprinter.canonical(request).fingerprint

    def explain_key(self, request: Mapping[str, Any]) -> KeyExplanation:
        """The key of ``request`` and the fields that went into it, and those left out."""
        canonical = self._fingerprinter.canonical(request)
        return self._fingerprinter.explain(request, self._prefix + canonical.fingerprint)

    def get(self, request: Mapping[str, Any]) -> CachedResponse | None:
        """The cached response to ``request``, or None (a miss, a bypass, or Redis down)."""
        plan = self._plan(request)
        if plan.bypass is not None:
            self._stats.bypass(plan.bypass)
            return None
        found, _ = self._lookup(plan, count=True)
        return found if isinstance(found, CachedResponse) else None

    def set(
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
        body = _encode_body(response)
        usage_dict = _usage(response, usage)
        seconds = self._ttl_with_jitter(ttl)
        if plan.bypass is not None:
            self._stats.bypass(plan.bypass)
            return False
        return self._store(
            plan,
            response=response,
            body=body,
            usage=usage_dict,
            seconds=seconds,
            generations=None,
        )

    def get_or_compute(
        self,
        request: Mapping[str, Any],
        fn: Callable[[], Any],
        *,
        usage: Mapping[str, Any] | None = None,
        ttl: float | None = None,
        wait_timeout: float | None = None,
        lease_ttl: float | None = None,
    ) -> CachedResponse:
        """The cached response to ``request``, or ``fn()``'s result, stored.

        When many threads or processes miss on the same request at once,
        ``fn`` runs once: the first takes a lease (``SET NX PX lease_ttl``),
        the others poll for its result for up to ``wait_timeout`` seconds. If
        the lease holder fails or dies (its lease is released or expires) a
        waiter takes the lease and computes; a waiter that runs out of time
        computes without it. While Redis is down ``fn`` simply runs.

        ``fn`` takes no arguments and returns the response (a str or any JSON
        value); an exception from it propagates unchanged. ``usage`` defaults
        to ``response["usage"]`` when the response is a dict that has one.
        """
        plan = self._plan(request)
        seconds = self._ttl_with_jitter(ttl)
        wait = (
            self._wait_timeout if wait_timeout is None else _positive(wait_timeout, "wait_timeout")
        )
        lease = self._lease_ttl if lease_ttl is None else _positive(lease_ttl, "lease_ttl")
        if usage is not None:
            _usage(None, usage)  # refuse a bad usage before running fn
        job = _Job(plan, fn, usage, seconds)
        if plan.bypass is not None:
            self._stats.bypass(plan.bypass)
            return self._compute(job, store=False)
        found, _ = self._lookup(plan, count=True)
        if isinstance(found, CachedResponse):
            return found
        if found is _Lookup.UNAVAILABLE:
            return self._compute(job, store=False)
        return self._coalesce(job, wait, max(1, int(lease * 1000)))

    def _coalesce(self, job: _Job, wait: float, lease_ms: int) -> CachedResponse:
        """After a miss: compute under the lease, or wait for whoever holds it."""
        plan = job.plan
        lease_key = self._prefix + "lease:" + plan.key[len(self._prefix) :]
        token = secrets.token_hex(16)
        deadline = time.monotonic() + wait
        store = False  # unless we end up computing on a Redis that answers
        while True:
            acquired = self._client.execute(lambda r: r.set(lease_key, token, nx=True, px=lease_ms))
            if isinstance(acquired, Outcome):
                break
            if acquired:
                return self._compute_under_lease(job, lease_key, token)
            found, generations = self._wait_for(plan, lease_key, deadline)
            if isinstance(found, CachedResponse):
                return found
            if found is _Lookup.UNAVAILABLE:
                break
            if generations is None:  # timed out: compute without the lease
                store = True
                break
            # The lease is gone without a result (its holder failed or died): take it.
        return self._compute(job, store=store)

    def invalidate(self, request: Mapping[str, Any]) -> bool:
        """Delete the entry of ``request``; returns whether one existed."""
        key = self.key(request)
        return self._client.call(lambda r: bool(r.unlink(key)), False)

    def invalidate_model(self, model: str) -> bool:
        """Invalidate every entry of ``model`` (any namespace generation) in O(1).

        Returns False if Redis could not be told (the entries then stay valid
        until their TTL).
        """
        if not isinstance(model, str) or not model.strip():
            raise InvalidInput("model must be a non-empty str", field="model", value=model)
        return self._new_generation(self._model_gen_key(model))

    def invalidate_all(self) -> bool:
        """Invalidate every entry of this namespace in O(1)."""
        return self._new_generation(self._ns_gen_key)

    def stats(self) -> CacheStats:
        """The counters of the underlying client (shared with it)."""
        return self._client.stats()

    # -- internals ---------------------------------------------------------------

    def _make_model_gen_key(self, model: str) -> str:
        return self._prefix + "gen:" + model_scope(model)

    def _plan(self, request: Mapping[str, Any]) -> _Plan:
        canonical = self._fingerprinter.canonical(request)
        bypass: str | None = None
        if request.get("sensitive"):
            bypass = BypassReason.SENSITIVE
        elif self._detector is not None and self._holds_secret(request, canonical):
            bypass = BypassReason.SECRET_IN_REQUEST
        elif not self.cache_nondeterministic and is_nondeterministic(request):
            bypass = BypassReason.NONDETERMINISTIC
        if bypass in (BypassReason.SENSITIVE, BypassReason.SECRET_IN_REQUEST):
            self._forget(canonical)
        else:
            fingerprint.remember(canonical)
        return _Plan(
            self._prefix + canonical.fingerprint,
            canonical.model,
            self._model_gen_key(canonical.model),
            bypass,
        )

    def _forget(self, canonical: Canonical) -> None:
        """Drop a sensitive or secret-bearing request's text from the in-process memos.

        Its text is never memoised by this cache; this drops what an earlier,
        unmarked call of the same request left there.
        """
        fingerprint.forget(canonical)
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
        if len(self._clean_requests) >= _CLEAN_MEMORY:
            self._clean_requests = set()  # start afresh rather than grow
        self._clean_requests.add(fingerprint)
        return False

    def _ttl_with_jitter(self, ttl: float | None) -> int:
        seconds = ttl_seconds(ttl, self._ttl)
        if self._jitter and seconds > 1:
            # Not security-relevant: spreads expiry times.
            seconds -= int(seconds * self._jitter * random.random())  # noqa: S311
        return max(1, seconds)

    def _lookup(
        self, plan: _Plan, *, count: bool
    ) -> tuple[CachedResponse | _Lookup, tuple[bytes | None, bytes | None] | None]:
        """Read the entry and both generations in one round trip.

        Returns the response or why there is none, and the generations (None
        when Redis did not answer).
        """
        result = self._client.fetch(plan.key, self._ns_gen_key, plan.model_gen_key)
        if isinstance(result, Outcome):
            if count and result is Outcome.FAILED:
                self._stats.miss()
            return _Lookup.UNAVAILABLE, None
        entry, ns_gen, model_gen = result
        generations = (ns_gen, model_gen)
        found = self._decode(plan, entry, ns_gen, model_gen, count)
        return found, generations

    def _decode(
        self,
        plan: _Plan,
        entry: bytes | None,
        ns_gen: bytes | None,
        model_gen: bytes | None,
        count: bool,
    ) -> CachedResponse | _Lookup:
        if entry is None:
            if count:
                self._stats.miss()
            return _Lookup.MISS
        try:
            meta = codec.decode(
                entry,
                ns_gen,
                model_gen,
                max_bytes=self._max_entry_bytes,
                signer=self._signer,
                name=plan.key,
            )
        except codec.ForgedEntryError:
            _log.warning("deleting a cache entry that failed its integrity check: %s", plan.key)
            self._client.discard_forged(plan.key)
            return _Lookup.MISS
        except codec.CorruptEntryError:
            _log.debug("deleting a corrupt cache entry %s", plan.key)
            self._client.discard_corrupt(plan.key)
            return _Lookup.MISS
        if meta is None:
            # Written under an older generation: invalidated. Deleting it may
            # race with a fresh write of the same key; that costs a miss,
            # never a wrong hit.
            if count:
                self._stats.miss()
            self._client.execute(lambda r: r.unlink(plan.key))
            return _Lookup.MISS
        if count:
            self._stats.hit()
        return CachedResponse(meta[3], meta[0], meta[1], meta[2], True)

    def _store(
        self,
        plan: _Plan,
        *,
        response: Any,
        body: codec.Body,
        usage: dict[str, Any] | None,
        seconds: int,
        generations: tuple[bytes | None, bytes | None] | None,
    ) -> bool:
        if self._detector is not None and self._detector.scan_value(response):
            self._stats.bypass(BypassReason.SECRET_IN_RESPONSE)
            return False
        current = _valid_generations(generations) or self._ensure_generations(plan)
        if current is None:
            self._stats.dropped_write()
            return False
        try:
            data = codec.encode_entry(
                body,
                generations=current,
                model=plan.model,
                created_at=time.time(),
                usage=usage,
                compress_threshold=self._compress_threshold,
                max_bytes=self._max_entry_bytes,
                signer=self._signer,
                name=plan.key,
            )
        except codec.EntryTooLargeError:
            self._stats.bypass(BypassReason.TOO_LARGE)
            return False
        except (TypeError, ValueError) as exc:  # usage was checked before; a guard
            raise InvalidInput(f"cannot encode the entry: {exc}", field="usage") from None
        key = plan.key
        result = self._client.execute(lambda r: r.set(key, data, ex=seconds))
        if isinstance(result, Outcome):
            self._stats.dropped_write()
            return False
        self._stats.write()
        return True

    def _ensure_generations(self, plan: _Plan) -> tuple[bytes, bytes] | None:
        """The current generations, creating missing ones (``SET NX GET``)."""
        keys = (self._ns_gen_key, plan.model_gen_key)
        fresh = (_new_generation_value(), _new_generation_value())

        def op(r: Redis) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for key, value in zip(keys, fresh, strict=True):
                pipe.set(key, value, nx=True, get=True)
            return pipe.execute()

        result = self._client.execute(op)
        if isinstance(result, Outcome):
            return None
        ns_gen, model_gen = (
            fresh[i] if old is None else cast(bytes, old) for i, old in enumerate(result)
        )
        return _valid_generations((ns_gen, model_gen))

    def _new_generation(self, key: str) -> bool:
        value = _new_generation_value()
        return self._client.call(lambda r: bool(r.set(key, value)), False)

    def _compute(
        self,
        job: _Job,
        *,
        store: bool,
        generations: tuple[bytes | None, bytes | None] | None = None,
    ) -> CachedResponse:
        response = job.fn()
        usage = _usage(response, job.usage)
        if store:
            body = _encode_body(response)
            self._store(
                job.plan,
                response=response,
                body=body,
                usage=usage,
                seconds=job.seconds,
                generations=generations,
            )
        return CachedResponse(response, job.plan.model, time.time(), usage, False)

    def _compute_under_lease(self, job: _Job, lease_key: str, token: str) -> CachedResponse:
        try:
            # Someone may have stored the entry between our miss and our lease.
            found, generations = self._lookup(job.plan, count=False)
            if isinstance(found, CachedResponse):
                return found
            return self._compute(job, store=True, generations=generations)
        finally:
            self._client.execute(lambda r: self._release_script(keys=[lease_key], args=[token]))

    def _wait_for(
        self, plan: _Plan, lease_key: str, deadline: float
    ) -> tuple[CachedResponse | _Lookup, tuple[bytes | None, bytes | None] | None]:
        """Poll until the entry appears, the lease goes, or ``deadline``.

        Returns the response; or MISS with generations when the lease is gone
        (the caller may take it); or MISS with None on timeout; or UNAVAILABLE.
        """
        delay = self._poll_interval
        keys = (plan.key, self._ns_gen_key, plan.model_gen_key, lease_key)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return _Lookup.MISS, None
            # Jitter keeps waiters from polling in lock step.
            time.sleep(min(delay * (0.5 + random.random()), remaining))  # noqa: S311
            delay = min(delay * 2, 0.05)
            result = self._client.fetch(*keys)
            if isinstance(result, Outcome):
                return _Lookup.UNAVAILABLE, None
            entry, ns_gen, model_gen, lease = result
            found = self._decode(plan, entry, ns_gen, model_gen, count=False)
            if isinstance(found, CachedResponse):
                return found, (ns_gen, model_gen)
            if lease is None:
                return _Lookup.MISS, (ns_gen, model_gen)

    def __repr__(self) -> str:
        return f"LLMCache(namespace={self._client.namespace!r}, ttl={self._ttl:g})"


def _positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidInput(f"{name} must be a positive number of seconds", field=name, value=value)
    return float(value)


def _encode_body(response: Any) -> codec.Body:
    try:
        return codec.encode_body(response)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidInput(
            f"the response is not JSON-serialisable: {exc}",
            field="response",
            value=type(response).__name__,
        ) from None


def _usage(response: Any, usage: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if usage is None and isinstance(response, dict):
        found = response.get("usage")
        usage = found if isinstance(found, Mapping) else None
    if usage is None:
        return None
    if not isinstance(usage, Mapping):
        raise InvalidInput("usage must be a dict", field="usage", value=type(usage).__name__)
    result = dict(usage)
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"usage is not JSON-serialisable: {exc}", field="usage") from None
    return result


def _new_generation_value() -> bytes:
    """64 random bits as 16 hex digits (see the module docstring for why random)."""
    return secrets.token_hex(codec.GENERATION_BYTES // 2).encode("ascii")


def _valid_generations(
    generations: tuple[bytes | None, bytes | None] | None,
) -> tuple[bytes, bytes] | None:
    """Both generations if both are present and well-formed, else None."""
    if generations is None:
        return None
    ns_gen, model_gen = generations
    if (
        ns_gen is None
        or model_gen is None
        or len(ns_gen) != codec.GENERATION_BYTES
        or len(model_gen) != codec.GENERATION_BYTES
    ):
        return None
    return ns_gen, model_gen
