"""The application's records: what its queries return and what creates them."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import Field

from toolkit.records import Input, Record


class Evaluation(Record):
    """One score given to an execution (columns of every ``evaluations.*`` query, in order)."""

    id: UUID
    execution_id: UUID
    metric: str
    score: float
    passed: bool
    details: dict[str, Any]
    created_at: datetime


class EvaluationCreate(Input):
    """What a caller gives to record an evaluation."""

    execution_id: UUID
    metric: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    score: float = Field(ge=0, le=1, allow_inf_nan=False)
    passed: bool
    details: dict[str, Any] = Field(default_factory=dict)


class EvaluationFilter(Input):
    """The filters ``list`` accepts."""

    execution_id: UUID | None = None
    metric: str | None = None
