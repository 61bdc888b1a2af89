"""PostgreSQL: the pool, the driver that runs bindings, the query registry, migrations
and verification."""

from toolkit.db.database import Connection, Database
from toolkit.db.drivers import copy, run, run_many
from toolkit.db.errors import translate_error
from toolkit.db.migrations import migrate, rollback
from toolkit.db.replicas import CommitPosition

__all__ = [
    "CommitPosition",
    "Connection",
    "Database",
    "copy",
    "migrate",
    "rollback",
    "run",
    "run_many",
    "translate_error",
]
