"""Counters of what the cache did, for metrics and tests."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["BypassReason", "CacheStats"]


class BypassReason:
    """Why a call skipped Redis on purpose (the keys of ``bypass_reasons``)."""

    BREAKER_OPEN = "breaker_open"
    SENSITIVE = "sensitive"
    SECRET_IN_REQUEST = "secret_in_request"  # noqa: S105 - a label, not a secret
    SECRET_IN_RESPONSE = "secret_in_response"  # noqa: S105 - a label, not a secret
    NONDETERMINISTIC = "nondeterministic"
    TOO_LARGE = "too_large"


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of a cache's counters, from :meth:`CacheClient.stats`.

    Every read ends as exactly one of ``hits``, ``misses`` or ``bypasses``;
    writes skipped on purpose count as bypasses too. ``errors`` counts Redis
    calls that failed (a failed read is also a miss). ``dropped_writes``
    counts writes lost because Redis failed or the breaker was open.
    ``corrupt`` counts stored values that failed to decode (each is also a
    miss, and was deleted). ``integrity_failures`` counts entries read under
    an integrity key whose HMAC was missing or wrong: forged, altered,
    copied from another key, or written without the key (each is also a
    miss, and was deleted).
    """

    hits: int = 0
    misses: int = 0
    errors: int = 0
    bypasses: int = 0
    writes: int = 0
    dropped_writes: int = 0
    corrupt: int = 0
    integrity_failures: int = 0
    breaker_state: str = "closed"
    breaker_opens: int = 0
    bypass_reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The counters as a plain dict (a copy)."""
        return asdict(self)

    @property
    def hit_ratio(self) -> float:
        """Hits over hits plus misses; 0.0 before the first lookup."""
        looked_up = self.hits + self.misses
        return self.hits / looked_up if looked_up else 0.0


class StatsRecorder:
    """The mutable, thread-safe counters behind :class:`CacheStats`."""

    __slots__ = (
        "_bypass_reasons",
        "_lock",
        "bypasses",
        "corrupt",
        "dropped_writes",
        "errors",
        "hits",
        "integrity_failures",
        "misses",
        "writes",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self.bypasses = 0
        self.writes = 0
        self.dropped_writes = 0
        self.corrupt = 0
        self.integrity_failures = 0
        self._bypass_reasons: dict[str, int] = {}

    def hit(self) -> None:
        """Count a read that returned a value."""
        with self._lock:
            self.hits += 1

    def miss(self) -> None:
        """Count a read that found nothing usable."""
        with self._lock:
            self.misses += 1

    def error(self) -> None:
        """Count a failed Redis call."""
        with self._lock:
            self.errors += 1

    def write(self) -> None:
        """Count a value stored."""
        with self._lock:
            self.writes += 1

    def dropped_write(self) -> None:
        """Count a write lost to a Redis failure."""
        with self._lock:
            self.dropped_writes += 1

    def corrupt_entry(self) -> None:
        """Count a stored value that failed to decode."""
        with self._lock:
            self.corrupt += 1

    def integrity_failure(self) -> None:
        """Count a stored value whose HMAC did not verify."""
        with self._lock:
            self.integrity_failures += 1

    def bypass(self, reason: str) -> None:
        """Count a call that skipped Redis on purpose, by reason."""
        with self._lock:
            self.bypasses += 1
            self._bypass_reasons[reason] = self._bypass_reasons.get(reason, 0) + 1

    def snapshot(self, breaker_state: str, breaker_opens: int) -> CacheStats:
        """A consistent copy of the counters."""
        with self._lock:
            return CacheStats(
                hits=self.hits,
                misses=self.misses,
                errors=self.errors,
                bypasses=self.bypasses,
                writes=self.writes,
                dropped_writes=self.dropped_writes,
                corrupt=self.corrupt,
                integrity_failures=self.integrity_failures,
                breaker_state=breaker_state,
                breaker_opens=breaker_opens,
                bypass_reasons=dict(self._bypass_reasons),
            )

    def reset(self) -> None:
        """Zero every counter."""
        with self._lock:
            self.hits = self.misses = self.errors = self.bypasses = 0
            self.writes = self.dropped_writes = self.corrupt = self.integrity_failures = 0
            self._bypass_reasons.clear()
