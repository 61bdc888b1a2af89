"""Plain-SQL migrations under yoyo-migrations.

``migrate`` creates the target database when it is missing, then applies
what is pending: the toolkit's migrations first, then the application's
(``TOOLKIT_MIGRATIONS_PATH``), in file-name order within each;
``rollback`` reverts the newest N (or all), the application's first, and
refuses, before reverting any, when one of them has no rollback (yoyo would
forget it without undoing it, and the next ``migrate`` would fail on what it left);
``status`` lists what is applied and pending. Runs hold a PostgreSQL advisory lock for
their whole run, so concurrent runs queue up instead of racing. The lock
belongs to a transaction held open for the run and dies with it, so a crashed
run never leaves a stale lock behind, even through a transaction-mode pooler;
yoyo's own lock row, which a killed run does leave, is cleared while the
advisory lock is held (no other toolkit run can own it then).

The whole conninfo (``sslmode``, ``options``, ``target_session_attrs``, ...)
reaches yoyo's connection, and what the URL leaves out comes from libpq's
``PG*`` environment as for every other connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from yoyo import get_backend, read_migrations
from yoyo.exceptions import BadMigration, LockTimeout, MigrationConflict

from toolkit.config import default_settings
from toolkit.db.conninfo import describe_target, parse_conninfo
from toolkit.db.database import Connection, connect, transaction_on
from toolkit.db.errors import raise_translated
from toolkit.db.registry import package_directory
from toolkit.errors import ConfigurationError, DatabaseError, InvalidInput

log = logging.getLogger(__name__)

MIGRATION_LOCK_KEY = 0x746F6F6C6B6974  # "toolkit"
"""The advisory lock key that ``migrate``, ``rollback`` and ``toolkit maintain`` share."""
_LOCK_TIMEOUT_S = 300
_CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class MigrationResult:
    """What a migrate or rollback run did."""

    applied: tuple[str, ...]
    rolled_back: tuple[str, ...]
    database_created: bool


@dataclass(frozen=True)
class MigrationState:
    """One migration, whether it is applied, and whose it is (``toolkit`` or ``app``)."""

    id: str
    applied: bool
    origin: str = "toolkit"


def _yoyo_url(url: str) -> str:
    """A yoyo URL carrying every conninfo parameter of ``url`` as a query argument.

    yoyo's psycopg backend passes query arguments straight to
    ``psycopg.connect`` (``dbname`` included), so nothing is dropped.
    """
    params = {key: str(value) for key, value in parse_conninfo(url).items()}
    if not params.get("dbname"):
        raise ConfigurationError(f"the database URL names no database ({describe_target(url)})")
    return "postgresql+psycopg://?" + urlencode(params)


def ensure_database(url: str) -> bool:
    """Create the database named by ``url`` if it does not exist; True if created."""
    params = parse_conninfo(url)
    dbname = str(params.get("dbname") or "")
    if not dbname:
        raise ConfigurationError(f"the database URL names no database ({describe_target(url)})")
    maintenance = make_conninfo(url, dbname="postgres")
    conn = connect(
        maintenance, connect_timeout=_CONNECT_TIMEOUT_S, context=f"creating database {dbname}"
    )
    try:
        with conn:
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
def _migration_lock(url: str) -> Iterator[Connection]:
    conn = connect(url, connect_timeout=_CONNECT_TIMEOUT_S, context="connecting")
    try:
        # Held by a transaction kept open for the whole run, not by the session: a
        # transaction-mode pooler (PgBouncer) keeps one server connection for an open
        # transaction, but would hand a session lock's connection, still locked, to
        # others once the statement ended. Closing the connection (or a crash) ends
        # the transaction and the lock with it.
        with transaction_on(conn):
            conn.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT_S}s'")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK_KEY])
            yield conn
    except psycopg.Error as exc:
        raise_translated(exc, "taking the migration lock")
    finally:
        conn.close()


@contextmanager
def _locked_backend(url: str) -> Iterator[Any]:
    """yoyo's backend for ``url``, used under the advisory lock.

    A yoyo lock row left by a killed run is removed first: while this run
    holds the advisory lock, no other run can be holding yoyo's.
    """
    with _migration_lock(url):
        try:
            backend = get_backend(_yoyo_url(url))
        except psycopg.Error as exc:
            raise_translated(exc, "connecting to migrate")
        # yoyo runs its bookkeeping statements once per migration: preparing them gains
        # nothing, and through a transaction-mode pooler the prepared ones go missing.
        backend.connection.prepare_threshold = None
        try:
            backend.break_lock()
            with backend.lock():
                yield backend
        except psycopg.Error as exc:
            raise_translated(exc, "migrating")
        except (BadMigration, LockTimeout, MigrationConflict) as exc:
            raise DatabaseError(f"migrating: {exc}") from exc
        finally:
            backend.connection.close()


def _migrations(app_folders: Sequence[Path] | None) -> Any:
    """The toolkit's migrations, then the application's; an id used twice is an error."""
    folders = default_settings().migration_folders if app_folders is None else app_folders
    own = package_directory("migrations")
    seen: dict[str, Path] = {}
    for folder in (own, *folders):
        for path in sorted(Path(folder).glob("*.sql")):
            if path.name.endswith(".rollback.sql"):
                continue
            first = seen.setdefault(path.stem, path)
            if first != path:
                raise ConfigurationError(
                    f"migration id {path.stem!r} is used twice: {first} and {path}; "
                    "give the application's migrations names of their own"
                )
    migrations = read_migrations(str(own), *(str(folder) for folder in folders))
    _check_dependencies(migrations)
    return migrations


def _check_dependencies(migrations: Sequence[Any]) -> None:
    """Raise ConfigurationError naming any ``-- depends:`` id that is not one of ``migrations``.

    yoyo reports only "Could not resolve dependencies in <file>", and
    resolves ids against every migration its process has read, not just these.
    """
    known = {migration.id for migration in migrations}
    for migration in migrations:
        try:
            migration.load()
            unreadable = None
        except BadMigration as exc:
            unreadable = exc
        # yoyo sets __depends__ before it resolves it (and fails) in load().
        declared = getattr(migration.module, "__depends__", None) or ()
        if isinstance(declared, str | bytes):
            declared = [declared]
        unknown = sorted(str(name) for name in declared if name not in known)
        if unknown:
            raise ConfigurationError(
                f"migration {migration.path} depends on {', '.join(map(repr, unknown))}, "
                "which is not a migration id (a migration's id is its file name without .sql)"
            )
        if unreadable is not None:
            raise ConfigurationError(f"migration {migration.path} cannot be read: {unreadable}")


def _origin(migration: Any) -> str:
    own = package_directory("migrations").resolve()
    return "toolkit" if Path(migration.path).resolve().parent == own else "app"


def migrate(
    url: str,
    app_folders: Sequence[Path] | None = None,
    *,
    on_created: Callable[[], None] | None = None,
    on_applied: Callable[[str], None] | None = None,
) -> MigrationResult:
    """Create the database if needed and apply every pending migration.

    ``app_folders`` holds the application's migrations (``TOOLKIT_MIGRATIONS_PATH``
    when None); they run after the toolkit's, under the same lock.
    ``on_created`` is called once the database is created (when it was
    missing), and ``on_applied`` with each migration's id as soon as it is
    applied (committed), so a long batch shows its progress as it goes.
    """
    migrations = _migrations(app_folders)
    created = ensure_database(url)
    if created and on_created is not None:
        on_created()
    with _locked_backend(url) as backend:
        pending = backend.to_apply(migrations)
        # One at a time, as yoyo's apply_migrations does, to name the one that fails.
        for migration in pending:
            try:
                backend.apply_one(migration)
            except psycopg.Error as exc:
                raise_translated(exc, f"migration {migration.id} ({migration.path}) failed")
            log.info("applied %s", migration.id)
            if on_applied is not None:
                on_applied(migration.id)
        if pending:
            backend.run_post_apply(pending)
    applied = tuple(m.id for m in pending)
    return MigrationResult(applied=applied, rolled_back=(), database_created=created)


def _has_rollback(step: Any) -> bool:
    """True if yoyo's ``step`` (a wrapper, a group or a single step) undoes anything."""
    if hasattr(step, "steps"):  # StepGroup
        return any(_has_rollback(inner) for inner in step.steps)
    if hasattr(step, "step"):  # TransactionWrapper, Transactionless
        return _has_rollback(step.step)
    return bool(getattr(step, "_rollback", None))


def _refuse_without_rollback(chosen: Sequence[Any]) -> None:
    """Raise ConfigurationError naming the first of ``chosen`` that has no rollback.

    yoyo "rolls back" such a migration by deleting its log row alone, which
    leaves its tables behind; so nothing is rolled back when one would be.
    """
    for migration in chosen:
        migration.load()
        if not any(_has_rollback(step) for step in migration.steps):
            path = Path(migration.path)
            if path.suffix == ".sql":
                where = f"{path.with_name(path.stem + '.rollback.sql')} is missing or empty"
            else:
                where = f"no step in {path} has a rollback"
            raise ConfigurationError(
                f"migration {migration.id} cannot be rolled back: {where}; nothing was rolled back"
            )


def rollback(
    url: str, count: int | None = 1, app_folders: Sequence[Path] | None = None
) -> MigrationResult:
    """Revert the newest ``count`` applied migrations (one by default; all when None).

    Raises ConfigurationError, having reverted none, when one of them has no rollback.
    """
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise InvalidInput(
            f"rollback count must be a whole number of at least 1, got {str(count)[:40]}",
            field="count",
        )
    migrations = _migrations(app_folders)
    with _locked_backend(url) as backend:
        applied = backend.to_rollback(migrations)
        chosen = applied if count is None else applied[:count]
        _refuse_without_rollback(chosen)
        backend.rollback_migrations(chosen)
    return MigrationResult(
        applied=(), rolled_back=tuple(m.id for m in chosen), database_created=False
    )


def status(url: str, app_folders: Sequence[Path] | None = None) -> list[MigrationState]:
    """Every migration, in order, with whether it is applied to ``url``'s database."""
    migrations = _migrations(app_folders)
    with _locked_backend(url) as backend:
        applied = {m.id for m in backend.to_rollback(migrations)}
    return [MigrationState(m.id, m.id in applied, _origin(m)) for m in migrations]
