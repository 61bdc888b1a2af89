"""The records, scripts and checks shared by the sync and async LLM caches.

No I/O: :class:`CachedResponse`, the sampling test
(:func:`is_nondeterministic`), the lease scripts, the plan of one lookup and
the encodings and checks of responses, usage and generations.
:mod:`toolkit.cache.llm` and :mod:`toolkit.aio.cache.llm` both use (and
re-export) them, so the two caches share one type and one body of each.
"""

from __future__ import annotations

import enum
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from toolkit.cache import codec
from toolkit.errors import InvalidInput

__all__ = [
    "CLEAN_MEMORY",
    "DEFAULT",
    "DEFAULT_LLM_TTL",
    "EXTEND_LUA",
    "RELEASE_LUA",
    "CachedResponse",
    "Default",
    "Job",
    "Lookup",
    "Plan",
    "encode_body",
    "is_nondeterministic",
    "lease_key",
    "new_generation_value",
    "usage_of",
    "valid_generations",
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


def new_generation_value() -> bytes:
    """64 random bits as 16 hex digits (random, so an evicted generation never comes back)."""
    return secrets.token_hex(codec.GENERATION_BYTES // 2).encode("ascii")


def valid_generations(
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
