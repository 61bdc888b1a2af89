"""PostgreSQL: the pool, the query registry, migrations and verification."""

from toolkit.db.database import Connection, Database
from toolkit.db.errors import translate_error
from toolkit.db.migrations import migrate, rollback

__all__ = ["Connection", "Database", "migrate", "rollback", "translate_error"]
