"""A Markdown table of scenario rows: what the reliability and scale-out suites print.

A row is a frozen dataclass whose field names are its column headers
(underscores read as spaces); counts (int fields) are right-aligned with
thousands separators, ``None`` prints as "n/a" (the column does not apply).
"""

from __future__ import annotations

import dataclasses
from typing import Any


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render_row(row: Any) -> str:
    """One Markdown table line."""
    cells = (_cell(getattr(row, f.name)) for f in dataclasses.fields(row))
    return "| " + " | ".join(cells) + " |"


def render(rows: list[Any]) -> str:
    """The header, the alignment line and a line per row (the fields of the first row's class)."""
    fields = dataclasses.fields(rows[0])
    counts = {f.name for f in fields if "int" in str(f.type)}
    header = "| " + " | ".join(f.name.replace("_", " ") for f in fields) + " |"
    align = "|" + "|".join(" ---: " if f.name in counts else " --- " for f in fields) + "|"
    return "\n".join([header, align, *(render_row(r) for r in rows)])
