"""Evaluations: the application's repository, made of the toolkit's public patterns.

Its queries are in ``sql/evaluations.sql`` (loaded through ``TOOLKIT_SQL_PATH``),
its table in ``migrations/`` (``TOOLKIT_MIGRATIONS_PATH``), and ``toolkit
verify`` checks every binding below once this module is in
``TOOLKIT_APP_MODULES``.
"""

from __future__ import annotations

import builtins

from evaluations.records import Evaluation, EvaluationCreate, EvaluationFilter
from toolkit.db import Connection, run
from toolkit.db.bind import Many, Scalar
from toolkit.db.patterns import Entity, validate

_entity: Entity[Evaluation, EvaluationFilter] = Entity(
    "evaluations",
    Evaluation,
    EvaluationFilter,
    entity="evaluation",
    create=EvaluationCreate,
)
_pass_rate = Scalar("evaluations.pass_rate", float, ("metric",))
_metrics = Many("evaluations.metrics", str, ())

# The entity's functions under their own names, as the toolkit's repositories
# export them. ``list`` now names the entity's list in this module, so the
# builtin is spelt ``builtins.list`` here (a bare ``list[str]`` fails).
create = _entity.create
get = _entity.get
list = _entity.list
count = _entity.count
delete = _entity.delete


def pass_rate(conn: Connection, metric: str) -> float | None:
    """The share of passed evaluations of ``metric``; None when there are none."""
    return run(conn, _pass_rate, metric=validate(EvaluationFilter, {"metric": metric}).metric)


def metrics(conn: Connection) -> builtins.list[str]:
    """Every metric evaluated so far, in order."""
    return run(conn, _metrics)
