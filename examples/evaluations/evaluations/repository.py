"""Evaluations: the application's repository, made of the toolkit's public patterns.

Its queries are in ``sql/evaluations.sql`` (loaded through ``TOOLKIT_SQL_PATH``),
its table in ``migrations/`` (``TOOLKIT_MIGRATIONS_PATH``), and ``toolkit
verify`` checks every binding below once this module is in
``TOOLKIT_APP_MODULES``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from evaluations.records import Evaluation, EvaluationCreate, EvaluationFilter
from toolkit.db.bind import Exec, Many, One, Scalar
from toolkit.db.database import Connection
from toolkit.db.patterns import DEFAULT_LIMIT, delete_row, jsonb, list_page, parse_id, validate
from toolkit.records import Page

ENTITY = "evaluation"

_create = One(
    "evaluations.create",
    Evaluation,
    ("execution_id", "metric", "score", "passed", "details"),
    entity=ENTITY,
)
_get = One("evaluations.get", Evaluation, ("id",), entity=ENTITY)
_list = Many("evaluations.list", Evaluation, ("execution_id", "metric", "limit"))
_pass_rate = Scalar("evaluations.pass_rate", float, ("metric",))
_delete = Exec("evaluations.delete", ("id",))


def create(conn: Connection, data: EvaluationCreate | Mapping[str, Any]) -> Evaluation:
    """Record an evaluation; InvalidReference if its execution does not exist."""
    given = validate(EvaluationCreate, data)
    return _create(conn, **{**given.model_dump(), "details": jsonb(given.details)})


def get(conn: Connection, evaluation_id: UUID | str) -> Evaluation:
    """The evaluation with this id; NotFound otherwise."""
    key = parse_id(evaluation_id)
    return _get(conn, key, id=key)


def list(
    conn: Connection,
    filters: EvaluationFilter | Mapping[str, Any] | None = None,
    *,
    sort: str = "created_at",
    descending: bool = False,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page[Evaluation]:
    """A keyset page of evaluations, by ``created_at`` or ``score``."""
    where = validate(EvaluationFilter, filters)
    return list_page(
        _list,
        conn,
        where.model_dump(),
        sort=sort,
        descending=descending,
        limit=limit,
        cursor=cursor,
    )


def pass_rate(conn: Connection, metric: str) -> float | None:
    """The share of passed evaluations of ``metric``; None when there are none."""
    return _pass_rate(conn, metric=validate(EvaluationFilter, {"metric": metric}).metric)


def delete(conn: Connection, evaluation_id: UUID | str) -> None:
    """Delete an evaluation; NotFound if it does not exist."""
    delete_row(conn, _delete, entity=ENTITY, key=parse_id(evaluation_id), audit=None)
