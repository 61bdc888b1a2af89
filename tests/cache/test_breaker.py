"""The circuit breaker's state machine, driven by a fake clock."""

from __future__ import annotations

import logging
import threading

import pytest

from toolkit.cache import BreakerState, CircuitBreaker
from toolkit.errors import InvalidInput


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, recovery_timeout=5.0, clock=clock)


def test_opens_after_consecutive_failures_only(breaker: CircuitBreaker) -> None:
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # resets the count
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state.value == "open"
    assert not breaker.allow()
    assert breaker.opens == 1


def test_half_open_lets_exactly_one_probe_through(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.allow()  # the probe
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()
    assert not breaker.allow()


def test_probe_success_closes(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.now += 5
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow() and breaker.allow()
    assert breaker.consecutive_failures == 0


def test_probe_failure_reopens_for_another_timeout(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.now += 5
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.now += 4
    assert not breaker.allow()
    clock.now += 1
    assert breaker.allow()
    assert breaker.opens == 1  # re-opening from half-open is the same outage


def test_a_lost_probe_is_replaced_after_the_timeout(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.now += 5
    assert breaker.allow()  # this probe never reports back
    clock.now += 4
    assert not breaker.allow()
    clock.now += 1.5
    assert breaker.allow()


def test_one_warning_per_state_change_not_per_call(
    breaker: CircuitBreaker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="toolkit.cache.breaker")
    for _ in range(50):
        if breaker.allow():
            breaker.record_failure()
    clock.now += 5
    assert breaker.allow()
    breaker.record_success()
    for _ in range(50):
        assert breaker.allow()
        breaker.record_success()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "opened" in warnings[0].getMessage()
    assert "closed" in warnings[1].getMessage()
    assert len(caplog.records) == 3  # plus one DEBUG for open -> half_open


def test_listener_sees_every_change_and_cannot_break_the_breaker(clock: FakeClock) -> None:
    seen: list[tuple[str, str]] = []

    def listener(old: BreakerState, new: BreakerState) -> None:
        seen.append((old.value, new.value))
        raise RuntimeError("a broken metrics hook")

    breaker = CircuitBreaker(1, 1.0, clock=clock, on_state_change=listener)
    breaker.record_failure()
    clock.now += 1
    assert breaker.allow()
    breaker.record_success()
    assert seen == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_reset_closes(breaker: CircuitBreaker) -> None:
    for _ in range(3):
        breaker.record_failure()
    breaker.reset()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()


def test_concurrent_probes_only_one_wins(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.now += 5
    barrier = threading.Barrier(16)
    allowed: list[bool] = []

    def worker() -> None:
        barrier.wait()
        allowed.append(breaker.allow())

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allowed.count(True) == 1


@pytest.mark.parametrize(
    ("threshold", "timeout"), [(0, 1.0), (True, 1.0), (1.5, 1.0), (3, 0), (3, -1.0)]
)
def test_bad_arguments(threshold: object, timeout: float) -> None:
    with pytest.raises(InvalidInput):
        CircuitBreaker(threshold, timeout)  # type: ignore[arg-type]


def test_the_opening_warning_gives_the_retry_time_in_plain_seconds(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=3600.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="toolkit.cache.breaker")
    breaker.record_failure()
    assert caplog.records[0].getMessage().endswith("retried in 3600 s")
