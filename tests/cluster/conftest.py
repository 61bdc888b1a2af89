"""The scale-out suite (``tox -e cluster``): replicas, PgBouncer, Redis Cluster,
a RabbitMQ cluster and partitioned tables, each started privately on ports of
its own and stopped by the scenario that started it. The machine's shared
services are never restarted or reconfigured.

Each scenario adds a row to a report printed at the end. Every cell is
measured by the scenario (counts kept while it ran, or the state of the
database, broker or cache afterwards); a scenario records its row *before*
it asserts its verdict, so a failing row still shows what went wrong.
``None`` means the column does not apply (printed as "n/a").
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from tests.support.report import render, render_row


@dataclass(frozen=True)
class Row:
    """What one scale-out scenario tried and what survived."""

    scenario: str
    operations: int
    errors_surfaced: int
    """Calls that raised to their caller."""
    stale_reads: int | None
    """Reads that returned a value older than the caller's own last write."""
    lost: int | None
    applied_twice: int | None
    time_to_recover: str


ROWS: list[Row] = []


def _record(row: Row) -> None:
    ROWS.append(row)
    print(f"\ncluster row: {render_row(row)}", flush=True)


@pytest.fixture
def report():
    """Call ``report(Row(...))`` to add a scenario's row to the final table."""
    return _record


def pytest_terminal_summary(terminalreporter) -> None:
    if not ROWS:
        return
    table = render(ROWS)
    terminalreporter.section("scale-out report")
    terminalreporter.write_line(table)
    target = os.environ.get("TOOLKIT_CLUSTER_REPORT")
    if target:
        with open(target, "w", encoding="utf-8") as out:
            out.write(table + "\n")


# The messaging fixtures the RabbitMQ cluster scenario reuses: relay and worker
# threads stopped at teardown, an effects table without uniqueness (a duplicate shows).
from tests.messaging.conftest import effects, run_relay, run_worker  # noqa: E402, F401
