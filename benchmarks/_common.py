"""Timing and reporting helpers shared by the benchmark scripts."""

from __future__ import annotations

import gc
import inspect
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

Batch = Callable[[int], object]
"""One contender doing its whole batch once; it gets the round's index (warm-up rounds first)."""


def interleaved(
    contenders: Mapping[str, Batch],
    rounds: int,
    *,
    warmup: int = 1,
    before_each: Callable[[str], object] | None = None,
    cpu: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Seconds per round of each contender, over ``rounds`` timed rounds.

    The first ``warmup`` rounds run but are not kept: imports, caches and
    psycopg's prepared statements (made after 5 executions) settle there.
    The order rotates every round, so drift (caches, autovacuum, a noisy
    neighbour) is spread over every contender instead of charged to one.
    ``before_each(name)`` runs untimed before every batch, e.g. to empty a table.
    ``cpu``, when given, gets each timed round's process CPU seconds per contender
    (this process only: the client's share, not the server's).
    """
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            if before_each is not None:
                before_each(name)
            # Collect now so that one contender's garbage is not freed on another's clock.
            gc.collect()
            cpu_start = time.process_time()
            start = time.perf_counter()
            contenders[name](round_index)
            seconds = time.perf_counter() - start
            cpu_seconds = time.process_time() - cpu_start
            if round_index >= warmup:
                times[name].append(seconds)
                if cpu is not None:
                    cpu.setdefault(name, []).append(cpu_seconds)
    return times


async def interleaved_async(
    contenders: Mapping[str, Batch],
    rounds: int,
    *,
    warmup: int = 1,
    cpu: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """:func:`interleaved` on the running event loop: an awaitable batch is awaited
    on the clock; a plain one (e.g. a sync contender driving its own threads) is
    simply called, with the loop idle while it runs. ``cpu`` as for :func:`interleaved`."""
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            cpu_start = time.process_time()
            start = time.perf_counter()
            outcome = contenders[name](round_index)
            if inspect.isawaitable(outcome):
                await outcome
            seconds = time.perf_counter() - start
            cpu_seconds = time.process_time() - cpu_start
            if round_index >= warmup:
                times[name].append(seconds)
                if cpu is not None:
                    cpu.setdefault(name, []).append(cpu_seconds)
    return times


VERDICTS_FILE_ENV = "TOOLKIT_BENCH_VERDICTS"
"""Set by ``benchmarks/run.py``: the file each benchmark appends its targets' verdicts to."""


def record_verdict(benchmark: str, row: str, measured: str, target: str, met: bool | None) -> None:
    """Note one target's verdict for the summary ``run.py`` prints after every benchmark.

    ``measured`` is the figure judged, as printed in the benchmark's own table
    (e.g. ``"1.04x"``); ``met`` None means the row could not be judged (it
    says why in ``measured``). Outside ``run.py`` (a benchmark run alone) it
    does nothing.
    """
    path = os.environ.get(VERDICTS_FILE_ENV)
    if not path:
        return
    entry = {"benchmark": benchmark, "row": row, "measured": measured, "target": target}
    with open(path, "a", encoding="utf-8") as sink:
        sink.write(json.dumps({**entry, "met": met}) + "\n")


def percentile(values: Sequence[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``values`` lie (nearest rank, e.g. 0.99 for p99)."""
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(fraction * len(ordered)))) - 1
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def paired_ratio(contender: Sequence[float], anchor: Sequence[float]) -> float:
    """Median over rounds of contender time / anchor time in the same round.

    Pairing by round cancels load that comes and goes during the run, which
    a ratio of two separate medians would not.
    """
    return statistics.median(c / a for c, a in zip(contender, anchor, strict=True))


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-style markdown table, padded so it also reads as plain text."""
    widths = [len(header) for header in headers]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(headers), separator, *(line(row) for row in rows)])


def cpu_count() -> int:
    """CPUs this process may run on (what ``nproc`` prints)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_average() -> float | None:
    """The 1-minute load average (None where unknown), to tell a quiet machine from a busy one."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def machine_summary(extra: Mapping[str, str] | None = None) -> str:
    """Lines naming the date, machine, Python and any ``extra`` facts."""
    facts = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {cpu_count()} CPUs (nproc), {platform.system()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        **(extra or {}),
    }
    return "\n".join(f"- {key}: {value}" for key, value in facts.items())
