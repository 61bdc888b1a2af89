"""The reliability suite: each scenario adds a row to a report printed at the end.

``tox -e reliability`` runs everything here at full size, including the
scenarios that restart a server mid-run (marker ``service_restart``); those
start a private PostgreSQL cluster or RabbitMQ node of their own and restart
that one, never the machine's shared services. The default run takes the
fast part (proxy scenarios, modest fuzzing, corpora).

Every cell of a row is measured by its scenario (the state of the database,
broker or cache after the run, or counts kept while it ran). A scenario
records its row *before* it asserts its verdict, so a failing row still
shows what went wrong. ``None`` means the column does not apply to the
scenario (printed as "n/a").
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass

import pytest

from tests.support.report import render, render_row


@dataclass(frozen=True)
class Row:
    """What one scenario tried and what survived."""

    scenario: str
    operations: int
    errors_surfaced: int
    """Calls that raised to their caller (or messages parked or refused)."""
    outcome_unknown: int | None
    """Calls that raised OutcomeUnknown (each resolved afterwards by transaction id)."""
    wrong: int | None
    """Results or stored values that differ from what their own request should give."""
    data_lost: int
    duplicates_applied: int
    time_to_recover: str


ROWS: list[Row] = []


def _record(row: Row) -> None:
    ROWS.append(row)
    # Printed at once (visible with -s), before the scenario asserts its verdict.
    print(f"\nreliability row: {render_row(row)}", flush=True)


@pytest.fixture
def report():
    """Call ``report(Row(...))`` to add a scenario's row to the final table."""
    return _record


FUZZ_COUNTS: defaultdict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
"""Calls the fuzz made, by (mode, ``module.function``): [accepted, rejected]."""


def render_fuzz_counts(counts: dict[tuple[str, str], list[int]]) -> str:
    """A Markdown table of accepted and rejected calls per function, sync and async."""
    modes = sorted({mode for mode, _ in counts}, reverse=True)  # sync, then async
    functions = sorted({label for _, label in counts})
    header = "| function | " + " | ".join(f"{m} accepted | {m} rejected" for m in modes) + " |"
    lines = [header, "| --- |" + " ---: | ---: |" * len(modes)]
    for label in functions:
        cells = [counts.get((m, label), [0, 0]) for m in modes]
        lines.append(f"| {label} | " + " | ".join(f"{a:,} | {r:,}" for a, r in cells) + " |")
    return "\n".join(lines)


def render_fuzz_totals(counts: dict[tuple[str, str], list[int]]) -> str:
    """Per mode: functions fuzzed, calls accepted and rejected, fewest accepted for one."""
    lines = [
        "| mode | functions | accepted | rejected | fewest accepted (function) |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for mode in sorted({m for m, _ in counts}, reverse=True):
        mine = {label: ar for (m, label), ar in counts.items() if m == mode}
        fewest = min(mine, key=lambda label: mine[label][0])
        lines.append(
            f"| {mode} | {len(mine)} | {sum(a for a, _ in mine.values()):,} | "
            f"{sum(r for _, r in mine.values()):,} | {mine[fewest][0]:,} ({fewest}) |"
        )
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter) -> None:
    if FUZZ_COUNTS:
        terminalreporter.section("fuzz: accepted and rejected calls")
        terminalreporter.write_line(render_fuzz_totals(FUZZ_COUNTS))
        if terminalreporter.verbosity > 0:
            terminalreporter.write_line("")
            terminalreporter.write_line(render_fuzz_counts(FUZZ_COUNTS))
    if not ROWS:
        return
    table = render(ROWS)
    terminalreporter.section("reliability report")
    terminalreporter.write_line(table)
    target = os.environ.get("TOOLKIT_RELIABILITY_REPORT")
    if target:
        with open(target, "w", encoding="utf-8") as out:
            out.write(table + "\n")


# The messaging fixtures (own queue prefix, relay and worker threads, an
# effects table without uniqueness so a duplicate would show).
from tests.messaging.conftest import (  # noqa: E402
    effects,
    prefix,
    rabbit_proxy,
    run_relay,
    run_worker,
    topology,
)

__all__ = ["effects", "prefix", "rabbit_proxy", "report", "run_relay", "run_worker", "topology"]
