"""The summary of judged targets that ``benchmarks/run.py`` prints after every benchmark."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import _common
from benchmarks.run import summary


def test_every_recorded_verdict_is_in_the_summary_with_its_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    verdicts = tmp_path / "verdicts.jsonl"
    monkeypatch.setenv(_common.VERDICTS_FILE_ENV, str(verdicts))
    _common.record_verdict("core", "get-by-id, toolkit", "1.04x", "<= 1.05x", True)
    _common.record_verdict("cache", "hit, 2 KB | repeated", "1.34x", "<= 1.3x", False)
    _common.record_verdict("storage", "local get", "n/a (no sample)", ">= 0.8x", None)

    printed = summary(verdicts)

    lines = printed.splitlines()
    assert any("core" in line and "1.04x" in line and "yes" in line for line in lines)
    assert any("cache" in line and "1.34x" in line and "MISSED" in line for line in lines)
    assert any("storage" in line and "not judged" in line for line in lines)
    assert printed.endswith("1 targets met, 1 missed, 1 not judged.")
    table = [line for line in lines if line.startswith("|")]
    assert all(line.replace("\\|", "").count("|") == 6 for line in table)  # 5 columns


def test_a_benchmark_run_alone_records_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(_common.VERDICTS_FILE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    _common.record_verdict("core", "row", "1.00x", "<= 1.05x", True)
    assert list(tmp_path.iterdir()) == []


def test_a_run_that_judged_nothing_says_so(tmp_path: Path) -> None:
    verdicts = tmp_path / "verdicts.jsonl"
    verdicts.touch()
    assert summary(verdicts) == "No targets were judged in this run."
