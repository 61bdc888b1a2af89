"""A thread-safe circuit breaker for calls to a service that may be down.

The breaker has three states:

``closed``
    Calls go through. Consecutive failures are counted; a success resets the
    count. After ``failure_threshold`` consecutive failures the breaker opens.
``open``
    Calls are refused at once (:meth:`CircuitBreaker.allow` returns False),
    so an outage costs the caller a few hundred nanoseconds instead of a
    timeout. After ``recovery_timeout`` seconds the breaker lets one probe
    through.
``half_open``
    Exactly one caller, the probe, is allowed through; everyone else is
    still refused. The probe's success closes the breaker, its failure opens
    it again for another ``recovery_timeout``.

Every state change is logged once, never once per call: opening and
recovering at WARNING (so an operator filtering on warnings sees both ends of
an outage), the open/half-open probe cycle of a long outage at DEBUG. Each
change is also reported to an optional callback.

One class serves both APIs: :class:`~toolkit.cache.CacheClient` and
:class:`~toolkit.aio.cache.AsyncCacheClient` take the same breaker (one
instance may even guard both). Its lock is a thread lock held for a few
attribute updates and never across I/O or an ``await``, so tasks on an event
loop use it without blocking the loop.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable

from toolkit.errors import InvalidInput

__all__ = ["BreakerState", "CircuitBreaker"]

_log = logging.getLogger(__name__)


class BreakerState(enum.StrEnum):
    """The state of a :class:`CircuitBreaker`."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


StateListener = Callable[[BreakerState, BreakerState], None]
"""Called as ``listener(old, new)`` after each state change, outside the lock."""


class CircuitBreaker:
    """Stops calling a failing service and probes it now and then.

    ``failure_threshold`` consecutive failures open the breaker;
    ``recovery_timeout`` seconds later one probe call is let through. A probe
    that neither succeeds nor fails within ``recovery_timeout`` (its thread
    died, say) is forgotten and another caller may probe.

    ``clock`` is injectable so tests can drive time; it must be monotonic.
    """

    def __init__(
        self,
        failure_threshold: int = 3,
        recovery_timeout: float = 1.0,
        *,
        name: str = "redis",
        clock: Callable[[], float] = time.monotonic,
        on_state_change: StateListener | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if isinstance(failure_threshold, bool) or not isinstance(failure_threshold, int):
            raise InvalidInput("failure_threshold must be an int", field="failure_threshold")
        if failure_threshold < 1:
            raise InvalidInput(
                "failure_threshold must be at least 1",
                field="failure_threshold",
                value=failure_threshold,
            )
        if (
            isinstance(recovery_timeout, bool)
            or not isinstance(recovery_timeout, int | float)  # a Decimal NaN raises on compare
            or not 0 < recovery_timeout <= 86400 * 366
        ):
            raise InvalidInput(
                "recovery_timeout must be a positive, finite number of seconds up to a year",
                field="recovery_timeout",
                value=recovery_timeout,
            )
        self.failure_threshold = failure_threshold
        self.recovery_timeout = float(recovery_timeout)
        self.name = name
        self._clock = clock
        self._on_state_change = on_state_change
        self._log = logger or _log
        self._lock = threading.Lock()
        # Read without the lock on the hot path: one attribute load is atomic.
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_started_at = 0.0
        self._opens = 0

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker past its timeout still reads ``open``)."""
        return self._state

    @property
    def opens(self) -> int:
        """How many times the breaker has opened since it was made."""
        return self._opens

    @property
    def consecutive_failures(self) -> int:
        """Failures since the last success."""
        return self._failures

    def allow(self) -> bool:
        """Whether a call may go through now.

        In ``closed`` state this is one attribute read. In ``open`` state it
        returns False until the recovery timeout has passed, then turns the
        breaker ``half_open`` and returns True to exactly one caller.
        """
        if self._state is BreakerState.CLOSED:
            return True
        now = self._clock()
        with self._lock:
            state = self.state  # re-read under the lock
            if state is BreakerState.CLOSED:
                return True
            if state is BreakerState.OPEN:
                if now - self._opened_at < self.recovery_timeout:
                    return False
            elif now - self._probe_started_at < self.recovery_timeout:
                return False  # a probe is in flight
            self._probe_started_at = now
            self._state = BreakerState.HALF_OPEN
        if state is BreakerState.OPEN:
            self._changed(state, BreakerState.HALF_OPEN)
        return True

    def record_success(self) -> None:
        """Report that a call reached the service; closes a half-open breaker."""
        if self._state is BreakerState.CLOSED and self._failures == 0:
            return
        with self._lock:
            old = self._state
            self._failures = 0
            if old is BreakerState.CLOSED:
                return
            # A late success from before the breaker opened also proves the
            # service is back, so open closes as well as half-open.
            self._state = BreakerState.CLOSED
        self._changed(old, BreakerState.CLOSED)

    def record_failure(self) -> None:
        """Report a connection error or timeout; may open the breaker."""
        now = self._clock()
        with self._lock:
            old = self._state
            self._failures += 1
            if old is BreakerState.OPEN:
                return
            if old is BreakerState.CLOSED and self._failures < self.failure_threshold:
                return
            self._state = BreakerState.OPEN
            self._opened_at = now
            if old is BreakerState.CLOSED:
                self._opens += 1
        self._changed(old, BreakerState.OPEN)

    def reset(self) -> None:
        """Force the breaker closed (for tests and operator action)."""
        with self._lock:
            old = self._state
            self._state = BreakerState.CLOSED
            self._failures = 0
        if old is not BreakerState.CLOSED:
            self._changed(old, BreakerState.CLOSED)

    def _changed(self, old: BreakerState, new: BreakerState) -> None:
        if new is BreakerState.OPEN and old is BreakerState.CLOSED:
            self._log.warning(
                "%s circuit breaker opened after %d consecutive failures; "
                "calls are bypassed (failing open) and retried in %g s",
                self.name,
                self.failure_threshold,
                self.recovery_timeout,
            )
        elif new is BreakerState.CLOSED:
            self._log.warning("%s circuit breaker closed: the service answers again", self.name)
        else:
            self._log.debug("%s circuit breaker %s -> %s", self.name, old.value, new.value)
        if self._on_state_change is not None:
            try:
                self._on_state_change(old, new)
            except Exception:  # a metrics hook must never break a cache call
                self._log.exception("%s circuit breaker listener failed", self.name)

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(name={self.name!r}, state={self._state.value}, "
            f"failures={self._failures}, opens={self._opens})"
        )
