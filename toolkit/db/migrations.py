"""Plain-SQL migrations under yoyo-migrations.

``migrate`` creates the target database when it is missing, then applies
what is pending; ``rollback`` reverts the newest N (or all). Both hold a
PostgreSQL advisory lock for their whole run, so concurrent runs queue up
instead of racing (the lock dies with its session, so a crashed run never
leaves a stale lock behind).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from yoyo import get_backend, read_migrations

from toolkit.db.database import raise_translated
from toolkit.db.registry import package_directory
from toolkit.errors import ConfigurationError, InvalidInput

log = logging.getLogger(__name__)

_LOCK_KEY = 0x746F6F6C6B6974  # "toolkit"
_LOCK_TIMEOUT_S = 300


@dataclass(frozen=True)
class MigrationResult:
    """What a migrate or rollback run did."""

    applied: tuple[str, ...]
    rolled_back: tuple[str, ...]
    database_created: bool


def _yoyo_url(url: str) -> str:
    """The same libpq URL in the form yoyo's psycopg 3 backend expects."""
    params = conninfo_to_dict(url)
    user = quote(str(params.get("user") or "postgres"), safe="")
    password = quote(str(params.get("password") or ""), safe="")
    host = str(params.get("host") or "127.0.0.1")
    port = str(params.get("port") or "5432")
    dbname = quote(str(params.get("dbname") or ""), safe="")
    if not dbname:
        raise ConfigurationError(f"database URL {url!r} names no database")
    auth = f"{user}:{password}@" if password else f"{user}@"
    if host.startswith("/"):
        return f"postgresql+psycopg://{auth}/{dbname}?host={host}&port={port}"
    return f"postgresql+psycopg://{auth}{host}:{port}/{dbname}"


def ensure_database(url: str) -> bool:
    """Create the database named by ``url`` if it does not exist; True if created."""
    params = conninfo_to_dict(url)
    dbname = str(params.get("dbname") or "")
    if not dbname:
        raise ConfigurationError(f"database URL {url!r} names no database")
    maintenance = make_conninfo(url, dbname="postgres")
    try:
        with psycopg.connect(maintenance, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [dbname]
            ).fetchone()
            if exists:
                return False
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            except psycopg.errors.DuplicateDatabase:
                return False  # created meanwhile by a concurrent run
            except psycopg.errors.UniqueViolation:
                return False
            log.info("created database %s", dbname)
            return True
    except psycopg.Error as exc:
        raise_translated(exc, f"creating database {dbname}")


@contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        raise_translated(exc, "connecting to migrate")
    try:
        conn.execute(f"SET lock_timeout = '{_LOCK_TIMEOUT_S}s'")
        conn.execute("SELECT pg_advisory_lock(%s)", [_LOCK_KEY])
        yield
    except psycopg.Error as exc:
        raise_translated(exc, "taking the migration lock")
    finally:
        conn.close()


def _migrations() -> Any:
    return read_migrations(str(package_directory("migrations")))


def migrate(url: str) -> MigrationResult:
    """Create the database if needed and apply every pending migration."""
    created = ensure_database(url)
    with _migration_lock(url):
        backend = get_backend(_yoyo_url(url))
        try:
            with backend.lock():
                pending = backend.to_apply(_migrations())
                backend.apply_migrations(pending)
        finally:
            backend.connection.close()
    applied = tuple(m.id for m in pending)
    for migration_id in applied:
        log.info("applied %s", migration_id)
    return MigrationResult(applied=applied, rolled_back=(), database_created=created)


def rollback(url: str, count: int | None = None) -> MigrationResult:
    """Revert the newest ``count`` applied migrations (all when None)."""
    if count is not None and count < 1:
        raise InvalidInput(f"rollback count must be at least 1, got {count}", field="count")
    with _migration_lock(url):
        backend = get_backend(_yoyo_url(url))
        try:
            with backend.lock():
                applied = backend.to_rollback(_migrations())
                chosen = applied if count is None else applied[:count]
                backend.rollback_migrations(chosen)
        finally:
            backend.connection.close()
    return MigrationResult(
        applied=(), rolled_back=tuple(m.id for m in chosen), database_created=False
    )


def status(url: str) -> list[tuple[str, bool]]:
    """Every migration id with whether it is applied."""
    backend = get_backend(_yoyo_url(url))
    try:
        migrations = _migrations()
        applied = {m.id for m in backend.to_rollback(migrations)}
        return [(m.id, m.id in applied) for m in migrations]
    finally:
        backend.connection.close()
