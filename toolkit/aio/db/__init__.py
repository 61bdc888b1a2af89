"""PostgreSQL, async: the pool (:class:`AsyncDatabase`), the driver that runs bindings
(``await run(conn, binding, ...)``) and the repository patterns."""

from toolkit.aio.db.database import AsyncConnection, AsyncDatabase
from toolkit.aio.db.drivers import copy, run
from toolkit.db.errors import translate_error

__all__ = ["AsyncConnection", "AsyncDatabase", "copy", "run", "translate_error"]
