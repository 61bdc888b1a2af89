"""spawn/stop/wait in both concurrency modules, and the LeaseKeeper on them.

The primitives are hand-written per mode: a thread in toolkit.concurrency, a
task in toolkit.aio.concurrency; the keeper is written once (toolkit.aio.leases,
its sync twin generated). The rules checked in both: a spawned function runs
with its arguments and its Stopping cue; stop() ends a function that waits
on the cue within its timeout; wait() re-raises what the function raised,
stop() logs it instead; past its timeout the async stop() cancels the task
while the sync one reports a thread it could not end.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest

from toolkit import concurrency as sync
from toolkit.aio import concurrency as aio
from toolkit.aio.leases import LeaseKeeper as AsyncLeaseKeeper
from toolkit.leases import LeaseKeeper
from toolkit.messaging.consumer import Periodic

BOUND = 1.0  # seconds a cooperative worker may take to end once stopped


def named_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


def named_tasks(name: str) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == name and not t.done()]


# -- sync: threads -----------------------------------------------------------------


def test_sync_spawn_runs_fn_with_its_arguments_on_a_named_thread() -> None:
    seen: list[Any] = []

    def fn(stopping: sync.Stopping, a: int, b: str) -> None:
        seen.append((a, b, threading.current_thread().name, stopping.is_set()))

    worker = sync.spawn(fn, 1, "two", name="t-spawn")
    assert sync.wait(worker, timeout=5)
    assert seen == [(1, "two", "t-spawn", False)]
    assert worker.done()


def test_sync_stop_ends_a_cooperative_worker_within_the_bound() -> None:
    ticks: list[int] = []

    def fn(stopping: sync.Stopping) -> None:
        while not stopping.wait(60):  # far longer than the test
            ticks.append(1)

    worker = sync.spawn(fn, name="t-stop")
    assert not sync.wait(worker, timeout=0.05)  # still running
    began = time.monotonic()
    assert sync.stop(worker, timeout=BOUND)
    assert time.monotonic() - began < BOUND
    assert ticks == []
    assert named_threads("t-stop") == []


def test_sync_wait_raises_what_fn_raised_and_stop_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fn(stopping: sync.Stopping) -> None:
        raise ValueError("the worker broke")

    worker = sync.spawn(fn, name="t-raise")
    with pytest.raises(ValueError, match="the worker broke"):
        sync.wait(worker, timeout=5)
    with caplog.at_level(logging.ERROR, logger="toolkit.concurrency"):
        assert sync.stop(worker, timeout=BOUND)  # does not raise
    assert "background worker t-raise failed" in caplog.text
    assert "the worker broke" in caplog.text  # the traceback


def test_sync_stop_reports_a_thread_it_could_not_end() -> None:
    release = threading.Event()

    def fn(stopping: sync.Stopping) -> None:
        release.wait(10)  # ignores the cue

    worker = sync.spawn(fn, name="t-deaf")
    began = time.monotonic()
    assert not sync.stop(worker, timeout=0.1)
    assert time.monotonic() - began < BOUND
    assert not worker.done()
    release.set()
    assert sync.wait(worker, timeout=5)


def test_sync_lease_keeper_renews_until_stopped() -> None:
    renewed: list[float] = []

    def renew() -> bool:
        renewed.append(time.monotonic())
        return True

    with LeaseKeeper(renew, 0.02, name="t-keeper") as keeper:
        time.sleep(0.3)
        assert len(named_threads("t-keeper")) == 1
    assert named_threads("t-keeper") == []  # joined on exit
    assert keeper.renewals >= 3 and not keeper.lost
    count = len(renewed)
    time.sleep(0.1)
    assert len(renewed) == count  # no renewal after the stop


def test_sync_lease_keeper_ends_itself_once_the_lease_is_lost() -> None:
    answers = iter([True, False])
    keeper = LeaseKeeper(lambda: next(answers), 0.01, name="t-lost")
    keeper.start()
    deadline = time.monotonic() + 5
    while named_threads("t-lost") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert named_threads("t-lost") == []
    assert keeper.lost and keeper.renewals == 1
    keeper.stop()  # after the end: a no-op


def test_lease_keeper_stop_without_start_is_a_no_op() -> None:
    LeaseKeeper(lambda: True, 0.01, name="t-never").stop()


def test_periodic_runs_its_job_again_after_a_failure_and_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []

    def job() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("first run fails")

    with caplog.at_level(logging.ERROR):
        periodic = Periodic("t-periodic", 0.02, job).start()
        deadline = time.monotonic() + 5
        while len(runs) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        periodic.stop()
    assert len(runs) >= 3
    assert "t-periodic failed; trying again" in caplog.text
    assert named_threads("t-periodic") == []


# -- async: tasks ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_async_spawn_runs_fn_with_its_arguments_as_a_named_task() -> None:
    seen: list[Any] = []

    async def fn(stopping: aio.Stopping, a: int, b: str) -> None:
        task = asyncio.current_task()
        seen.append((a, b, task.get_name() if task else None, stopping.is_set()))

    worker = aio.spawn(fn, 1, "two", name="t-spawn")
    assert await aio.wait(worker, timeout=5)
    assert seen == [(1, "two", "t-spawn", False)]
    assert worker.done()


@pytest.mark.asyncio
async def test_async_stop_ends_a_cooperative_worker_within_the_bound() -> None:
    ticks: list[int] = []

    async def fn(stopping: aio.Stopping) -> None:
        while not await stopping.wait(60):
            ticks.append(1)

    worker = aio.spawn(fn, name="t-stop")
    assert not await aio.wait(worker, timeout=0.05)
    began = time.monotonic()
    assert await aio.stop(worker, timeout=BOUND)
    assert time.monotonic() - began < BOUND
    assert ticks == []
    assert named_tasks("t-stop") == []


@pytest.mark.asyncio
async def test_async_wait_raises_what_fn_raised_and_stop_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fn(stopping: aio.Stopping) -> None:
        raise ValueError("the worker broke")

    worker = aio.spawn(fn, name="t-raise")
    with pytest.raises(ValueError, match="the worker broke"):
        await aio.wait(worker, timeout=5)
    with caplog.at_level(logging.ERROR, logger="toolkit.concurrency"):
        assert await aio.stop(worker, timeout=BOUND)
    assert "background worker t-raise failed" in caplog.text
    assert "the worker broke" in caplog.text


@pytest.mark.asyncio
async def test_async_stop_cancels_a_task_that_ignores_the_cue() -> None:
    async def fn(stopping: aio.Stopping) -> None:
        await asyncio.sleep(60)

    worker = aio.spawn(fn, name="t-deaf")
    await asyncio.sleep(0)  # let it start
    began = time.monotonic()
    assert await aio.stop(worker, timeout=0.1)
    assert time.monotonic() - began < BOUND
    assert worker.done()
    assert await aio.wait(worker, timeout=0)  # a cancelled worker has simply ended
    assert named_tasks("t-deaf") == []


@pytest.mark.asyncio
async def test_async_stop_of_a_cancelled_caller_leaves_the_worker_to_end() -> None:
    """Cancelling the caller of stop() neither cancels nor orphans the worker:
    the cue is set, so the worker ends on its own."""

    async def fn(stopping: aio.Stopping) -> None:
        while not await stopping.wait(60):
            pass
        await asyncio.sleep(0.05)  # a last step after the cue

    worker = aio.spawn(fn, name="t-caller")
    stopper = asyncio.create_task(aio.stop(worker, timeout=BOUND))
    await asyncio.sleep(0.01)
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    assert await aio.wait(worker, timeout=BOUND)


@pytest.mark.asyncio
async def test_async_lease_keeper_renews_until_stopped() -> None:
    renewed: list[float] = []

    async def renew() -> bool:
        renewed.append(time.monotonic())
        return True

    async with AsyncLeaseKeeper(renew, 0.02, name="t-keeper") as keeper:
        await asyncio.sleep(0.3)
        assert len(named_tasks("t-keeper")) == 1
    assert named_tasks("t-keeper") == []
    assert keeper.renewals >= 3 and not keeper.lost
    count = len(renewed)
    await asyncio.sleep(0.1)
    assert len(renewed) == count


@pytest.mark.asyncio
async def test_async_lease_keeper_ends_itself_once_the_lease_is_lost() -> None:
    answers = iter([True, False])

    async def renew() -> bool:
        return next(answers)

    keeper = AsyncLeaseKeeper(renew, 0.01, name="t-lost")
    keeper.start()
    deadline = time.monotonic() + 5
    while named_tasks("t-lost") and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert named_tasks("t-lost") == []
    assert keeper.lost and keeper.renewals == 1
    await keeper.stop()
