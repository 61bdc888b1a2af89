"""Checks, conversions and outcomes shared by the sync and async cache clients.

No I/O: the namespace, tenant, key, TTL, timeout and integrity-key checks (each
raising :class:`~toolkit.errors.InvalidInput` before any call to Redis), the
value encodings of the byte and JSON methods, :class:`Outcome` and the
errors that count as an outage. :mod:`toolkit.cache.client` and
:mod:`toolkit.aio.cache.client` both use (and re-export) them, so the two
clients share one type and one body of each.
"""

from __future__ import annotations

import enum
import json
import math
import re
from typing import Final

import redis

from toolkit.cache.codec import MIN_KEY_BYTES, Signer
from toolkit.errors import InvalidInput

__all__ = [
    "CONNECTIVITY_ERRORS",
    "DEFAULT_TTL",
    "MAX_KEY_LENGTH",
    "MAX_SECONDS",
    "SCAN_BATCH",
    "Outcome",
    "as_bytes",
    "check_timeouts",
    "dumps_json",
    "fraction",
    "make_signer",
    "namespaced_key",
    "positive_seconds",
    "ttl_seconds",
    "validate_namespace",
]

DEFAULT_TTL: Final = 3600.0
"""Seconds a value set without an explicit TTL lives."""
MAX_SECONDS: Final = 100 * 366 * 86400
"""The longest TTL or timeout accepted, in seconds (a century): more is a mistake,
and past a float's range a number cannot be converted at all."""

# A colon would let namespace "a" clear namespace "a:b"; glob characters would
# widen the SCAN pattern. Both are refused.
_NAMESPACE_RE: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
MAX_KEY_LENGTH: Final = 1024
SCAN_BATCH: Final = 500

CONNECTIVITY_ERRORS: Final = (redis.ConnectionError, redis.TimeoutError, OSError)
"""Connection trouble: these trip the breaker. Other RedisErrors (WRONGTYPE,
OOM, NOSCRIPT) mean the server answered, so they are errors but not outages.
redis.asyncio raises the same classes (an asyncio timeout is a TimeoutError,
an OSError)."""


class Outcome(enum.Enum):
    """Why :meth:`CacheClient.execute` (or the async client's) returned no result."""

    BYPASSED = "bypassed"
    """The breaker is open; Redis was not called."""
    FAILED = "failed"
    """Redis was called and the call failed."""


def validate_namespace(namespace: object) -> str:
    """Return ``namespace`` if it is 1-64 of ``[A-Za-z0-9_.-]``, else raise InvalidInput."""
    if not isinstance(namespace, str) or not _NAMESPACE_RE.fullmatch(namespace):
        raise InvalidInput(
            "namespace must be 1-64 characters from A-Z a-z 0-9 _ . - (no ':' or glob characters)",
            field="namespace",
            value=namespace,
        )
    return namespace


def namespaced_key(prefix: str, name: object) -> str:
    """``prefix + name`` for a non-empty str ``name`` of at most 1024 characters."""
    if not isinstance(name, str) or not name:
        raise InvalidInput("a cache key must be a non-empty str", field="key", value=name)
    if len(name) > MAX_KEY_LENGTH:
        raise InvalidInput(f"a cache key is limited to {MAX_KEY_LENGTH} characters", field="key")
    return prefix + name


def _seconds(value: object) -> float | None:
    """``value`` as float seconds if it is a positive, finite int or float of at most
    MAX_SECONDS; None otherwise. The type is checked first: a bool, a Decimal (whose
    NaN raises on comparison) or a str is never compared; an int is compared before
    float() (which raises on one too large for a float)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not (0 < value <= MAX_SECONDS):  # False for NaN
        return None
    return float(value)


def ttl_seconds(ttl: object, default: float, field: str = "ttl") -> int:
    """Turn a TTL argument into whole seconds for ``EX`` (rounded up, at least 1)."""
    seconds = positive_seconds(default if ttl is None else ttl, field)
    return max(1, math.ceil(seconds))


def positive_seconds(value: object, name: str) -> float:
    """``value`` as a float if it is a positive, finite number of seconds (at most
    MAX_SECONDS), else raise InvalidInput naming ``name``."""
    seconds = _seconds(value)
    if seconds is None:
        raise InvalidInput(
            f"{name} must be a positive, finite number of seconds up to {MAX_SECONDS}",
            field=name,
            value=value,
        )
    return seconds


def fraction(value: object, name: str) -> float:
    """``value`` as a float if it is an int or float in [0, 1), else raise InvalidInput."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise InvalidInput(f"{name} must be a number in [0, 1)", field=name, value=value)
    return float(value)


def check_timeouts(connect_timeout: object, socket_timeout: object) -> None:
    """Refuse a connect or socket timeout that is not a positive number of seconds."""
    for name, value in (("connect_timeout", connect_timeout), ("socket_timeout", socket_timeout)):
        positive_seconds(value, name)


def make_signer(hmac_key: object) -> Signer | None:
    """A :class:`Signer` for an integrity key (str or bytes, at least 16 bytes), or None."""
    if hmac_key is None:
        return None
    key = hmac_key.encode("utf-8") if isinstance(hmac_key, str) else hmac_key
    if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
        # The key itself never goes into the error.
        raise InvalidInput(
            f"hmac_key must be a str or bytes of at least {MIN_KEY_BYTES} bytes", field="hmac_key"
        )
    return Signer(key)


def as_bytes(value: object) -> bytes:
    """A value for the byte methods: bytes as is, str as UTF-8; anything else is refused."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise InvalidInput(
        "cache values must be bytes or str (use set_json for other values)",
        field="value",
        value=type(value).__name__,
    )


def dumps_json(value: object) -> bytes:
    """``value`` as compact UTF-8 JSON; InvalidInput if it is not serialisable."""
    try:
        return json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidInput(
            f"value is not JSON-serialisable: {exc}", field="value", value=type(value).__name__
        ) from None
