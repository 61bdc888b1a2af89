"""The reliability suite: each scenario adds a row to a report printed at the end.

``tox -e reliability`` runs everything here, including the scenarios that
restart the machine's real services (marker ``service_restart``); the
default run takes the fast part (proxy scenarios, modest fuzzing, corpora).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Row:
    """What one scenario tried and what survived."""

    scenario: str
    operations: int
    errors_surfaced: int
    data_lost: int
    duplicates_applied: int
    time_to_recover: str


ROWS: list[Row] = []


@pytest.fixture
def report():
    """Call ``report(Row(...))`` to add a scenario's row to the final table."""
    return ROWS.append


def render(rows: list[Row]) -> str:
    lines = [
        "| scenario | operations | errors surfaced | data lost | duplicates applied "
        "| time to recover |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    lines += [
        f"| {r.scenario} | {r.operations:,} | {r.errors_surfaced:,} | {r.data_lost} | "
        f"{r.duplicates_applied} | {r.time_to_recover} |"
        for r in rows
    ]
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter) -> None:
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
