"""PostgreSQL, async: the pool (:class:`AsyncDatabase`) and the repository patterns."""

from toolkit.aio.db.database import AsyncConnection, AsyncDatabase
from toolkit.db.errors import translate_error

__all__ = ["AsyncConnection", "AsyncDatabase", "translate_error"]
