"""Check what mypy says about a snippet: each line marked ``# E: why`` is an error, no other is.

A test writes the calls it means to be typed right, and the calls it means to
be refused with ``  # E: <why>`` after them::

    errors = mypy_errors(SNIPPET, tmp_path)
    assert errors.found == errors.expected, errors.output

mypy runs with the project's settings (``pyproject.toml``); only the
snippet's own errors count: the toolkit itself is checked by ``mypy toolkit``.
Needs mypy (``tox -e lint``); the test is skipped without it.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MARK = "  # E: "


@dataclass(frozen=True)
class SnippetErrors:
    """The snippet's lines mypy refused, the lines marked to be refused, and mypy's output."""

    found: list[int]
    expected: list[int]
    output: str


def mypy_errors(snippet: str, tmp_path: Path, name: str = "snippet.py") -> SnippetErrors:
    """Run mypy on ``snippet`` (dedented) and say which of its lines it refused."""
    api = pytest.importorskip("mypy.api")
    source = textwrap.dedent(snippet)
    path = tmp_path / name
    path.write_text(source)
    stdout, stderr, _ = api.run(
        ["--config-file", str(ROOT / "pyproject.toml"), "--no-error-summary", str(path)]
    )
    errors = [line for line in stdout.splitlines() if f"{name}:" in line and ": error: " in line]
    found = sorted({int(line.split(f"{name}:")[1].split(":")[0]) for line in errors})
    expected = [n for n, line in enumerate(source.splitlines(), 1) if MARK in line]
    return SnippetErrors(found, expected, stdout + stderr)
