"""The records, scripts and checks shared by the sync and async LLM caches.

No I/O: :class:`CachedResponse`, the sampling test
(:func:`is_nondeterministic`), the lease scripts, the plan of one lookup and
the encodings and checks of responses, usage and generations.
:mod:`toolkit.cache.llm` and :mod:`toolkit.aio.cache.llm` both use (and
re-export) them, so the two caches share one type and one body of each.
"""

from __future__ import annotations

import enum
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple
from uuid import UUID

from toolkit.cache import codec
from toolkit.cache.fingerprint import KEY_VERSION
from toolkit.errors import InvalidInput

__all__ = [
    "CLEAN_MEMORY",
    "DEFAULT",
    "DEFAULT_LLM_TTL",
    "EXTEND_LUA",
    "OFF_LOOP_BYTES",
    "RELEASE_LUA",
    "SHARED_TAG",
    "CachedResponse",
    "Default",
    "GenerationMemory",
    "Job",
    "Lookup",
    "Plan",
    "encode_body",
    "generation_time",
    "is_nondeterministic",
    "key_prefix",
    "lease_key",
    "new_generation_value",
    "open_generation",
    "seal_generation",
    "usage_of",
]

DEFAULT_LLM_TTL: Final = 24 * 3600.0
"""Seconds an LLM response lives by default."""

CLEAN_MEMORY: Final = 16_384
"""How many request fingerprints found free of secrets are remembered."""

RELEASE_LUA: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""
"""Compare-and-delete: release a lease only if it is still ours (it may have
expired and been taken by another caller meanwhile)."""

EXTEND_LUA: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
"""Compare-and-extend: push a lease's expiry ``ARGV[2]`` ms ahead only if it is
still ours; 0 means it expired or someone else holds it now."""


class Default(enum.Enum):
    """The type of :data:`DEFAULT`: "not given", where None means "none"."""

    TOKEN = 0


DEFAULT: Final = Default.TOKEN


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


class Plan(NamedTuple):
    """What one request maps to: its entry key, model, model generation key, bypass reason."""

    key: str
    model: str
    model_gen_key: str
    bypass: str | None


@dataclass(frozen=True, slots=True)
class Job:
    """One ``get_or_compute`` call: the plan, the compute function and how to store."""

    plan: Plan
    fn: Callable[[], Any]
    """Returns the response (sync), or an awaitable of it (async)."""
    usage: Mapping[str, Any] | None
    seconds: int


class Lookup(enum.Enum):
    """Why a lookup found no response."""

    MISS = "miss"
    """Redis answered: nothing usable."""
    UNAVAILABLE = "unavailable"
    """Redis did not answer (or the breaker is open)."""


SHARED_TAG: Final = "shared"
"""The hash tag of the shared namespace (a cache bound to no tenant); no UUID's text."""


def key_prefix(namespace: str, tenant: UUID | None) -> str:
    """The start of every key of ``tenant``'s entries: ``<namespace>:llm:<version>:{<tenant>}:``.

    ``{<tenant>}`` (the UUID's text, or ``{shared}`` for None) is the key's
    Redis Cluster hash tag: a namespace holds no brace, so it is the first
    ``{...}``, and an entry, its lease and the tenant's generation keys all
    hash to one slot, where a multi-key ``MGET``, pipeline or script on them
    is allowed.
    """
    tag = SHARED_TAG if tenant is None else str(tenant)
    return f"{namespace}:llm:{KEY_VERSION}:{{{tag}}}:"


def lease_key(prefix: str, entry_key: str) -> str:
    """The stampede lease of the entry ``entry_key`` (``<prefix>lease:<fingerprint>``)."""
    return prefix + "lease:" + entry_key[len(prefix) :]


def encode_body(response: Any) -> codec.Body:
    """The entry body of ``response``; InvalidInput if it is not JSON-serialisable."""
    try:
        return codec.encode_body(response)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidInput(
            f"the response is not JSON-serialisable: {exc}",
            field="response",
            value=type(response).__name__,
        ) from None


def usage_of(response: Any, usage: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``usage`` (default: ``response["usage"]``) as a JSON dict; InvalidInput if it is not one."""
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


_TIME_DIGITS: Final = 12
"""Hex digits of a generation's issue time (48 bits of Unix milliseconds)."""
OFF_LOOP_BYTES: Final = 64 << 10
"""Entries (and responses) at least this large are encoded, scanned and decoded in a worker
thread by the async cache, so the event loop is never held up for long."""


def new_generation_value(after_ms: int = 0) -> bytes:
    """A new generation id: its issue time (Unix ms, later than ``after_ms``) and 16 random bits.

    16 hex digits. The time orders generations (a rolled-back one is older
    than one already seen); the time and the random bits together make an
    evicted generation never come back.
    """
    issued = max(time.time_ns() // 1_000_000, after_ms + 1)
    return f"{issued:0{_TIME_DIGITS}x}".encode("ascii") + secrets.token_hex(
        (codec.GENERATION_BYTES - _TIME_DIGITS) // 2
    ).encode("ascii")


def generation_time(generation: bytes) -> int:
    """The issue time (Unix ms) of a generation id; 0 if it has none (an earlier format)."""
    try:
        return int(generation[:_TIME_DIGITS], 16)
    except ValueError:
        return 0


def seal_generation(generation: bytes, signer: codec.Signer | None, name: str) -> bytes:
    """The value stored at the generation key ``name``: the id, then its HMAC with a signer."""
    if signer is None:
        return generation
    return generation + signer.tag_generation(name, generation)


def open_generation(value: bytes | None, signer: codec.Signer | None, name: str) -> bytes | None:
    """The generation id stored at ``name``; None if missing, malformed or (with a signer) its
    HMAC does not verify. Without a signer a signed value's id is taken unchecked."""
    if value is None or len(value) < codec.GENERATION_BYTES:
        return None
    generation = value[: codec.GENERATION_BYTES]
    if signer is None:
        return generation if len(value) in (codec.GENERATION_BYTES, _SEALED_BYTES) else None
    if len(value) != _SEALED_BYTES or not hmac.compare_digest(
        value[codec.GENERATION_BYTES :], signer.tag_generation(name, generation)
    ):
        return None
    return generation


_SEALED_BYTES: Final = codec.GENERATION_BYTES + codec.TAG_BYTES


class GenerationMemory:
    """The newest generation seen per generation key, in this process, for one Redis.

    With an integrity key, a generation older than one already seen means
    the key was rolled back (someone with write access to Redis restored an
    earlier value to revive entries invalidated since): the cache treats it
    as a miss, counts an integrity failure and writes a newer generation.
    Only what this process has seen is known: a process that never saw the
    newer generation cannot tell (see the README's cache section).
    """

    __slots__ = ("_lock", "_newest")

    _LIMIT: Final = 4096

    def __init__(self) -> None:
        self._newest: dict[str, int] = {}
        self._lock = threading.Lock()

    def newest(self, name: str) -> int:
        """The newest issue time seen at ``name`` (Unix ms), 0 if none."""
        return self._newest.get(name, 0)

    def observe(self, name: str, generation: bytes) -> bool:
        """Remember ``generation`` at ``name``; False if it is older than one seen there."""
        issued = generation_time(generation)
        with self._lock:
            newest = self._newest.get(name, 0)
            if issued < newest:
                return False
            if issued > newest:
                if len(self._newest) >= self._LIMIT and name not in self._newest:
                    self._newest.clear()  # start afresh rather than grow
                self._newest[name] = issued
            return True
