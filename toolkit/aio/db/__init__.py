"""PostgreSQL, async: the pool (:class:`AsyncDatabase`), the driver that runs bindings
(``await run(conn, binding, ...)``) and the repository patterns."""

from toolkit.aio.db.database import AsyncConnection, AsyncDatabase
from toolkit.aio.db.drivers import copy, run, run_many
from toolkit.db.errors import translate_error
from toolkit.db.replicas import CommitPosition

__all__ = [
    "AsyncConnection",
    "AsyncDatabase",
    "CommitPosition",
    "copy",
    "run",
    "run_many",
    "translate_error",
]
