"""A pooled PostgreSQL database and the translation of driver errors.

Pooled connections run in autocommit: a single read costs one round trip,
and psycopg's prepared statements survive the return to the pool (a
ROLLBACK on return would throw them away). Multi-step work is explicit::

    with db.transaction() as tx:
        user = users.create(tx, email="ada@example.com", display_name="Ada")
        agents.create(tx, owner_id=user.id, name="helper", type="assistant")
"""

from __future__ import annotations

import logging
import select
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import ConnStatus, TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from toolkit.config import Settings, default_settings
from toolkit.errors import (
    Conflict,
    DatabaseError,
    InvalidInput,
    InvalidReference,
    ToolkitError,
    Unavailable,
)

log = logging.getLogger(__name__)

Connection = psycopg.Connection[Any]
"""What repository functions take first: a pooled connection or a transaction."""


def translate_error(exc: BaseException, context: str) -> ToolkitError:
    """The toolkit exception for a psycopg or pool error; ``context`` says what ran."""
    if isinstance(exc, ToolkitError):
        return exc
    if isinstance(exc, PoolTimeout):
        return Unavailable(f"{context}: no database connection free or reachable in time ({exc})")
    if not isinstance(exc, psycopg.Error):
        return DatabaseError(f"{context}: {exc}")
    state = exc.sqlstate or ""
    diag = exc.diag
    primary = diag.message_primary or str(exc).strip().splitlines()[0]
    detail = f" ({diag.message_detail})" if diag.message_detail else ""
    if isinstance(exc, pg_errors.UniqueViolation):
        return Conflict(f"{context}: {primary}{detail}")
    if isinstance(exc, pg_errors.ForeignKeyViolation):
        return InvalidReference(f"{context}: {primary}{detail}")
    if isinstance(exc, (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)):
        return Conflict(f"{context}: concurrent update, retry the transaction ({primary})")
    if isinstance(exc, pg_errors.QueryCanceled):
        return Unavailable(f"{context}: statement timed out or was cancelled ({primary})")
    if state.startswith(("22", "23")) or (isinstance(exc, psycopg.DataError) and not state):
        return InvalidInput(f"{context}: {primary}{detail}")
    if state.startswith(("08", "57P", "53")) or isinstance(
        exc, (psycopg.OperationalError, psycopg.InterfaceError)
    ):
        return Unavailable(f"{context}: database unavailable ({primary})")
    return DatabaseError(f"{context}: {primary}{detail} [SQLSTATE {state or 'none'}]")


def raise_translated(exc: BaseException, context: str) -> NoReturn:
    """Raise the toolkit exception for ``exc``, chained to it."""
    raise translate_error(exc, context) from exc


def check_idle_connection(conn: Connection) -> None:
    """Reject a pooled connection that died while idle, without a round trip.

    An idle autocommit connection has nothing to read: if its socket is
    readable the server has spoken first (a termination notice after a
    restart, or end of file), so only then is a real query spent to decide.
    """
    pgconn = conn.pgconn
    if pgconn.status != ConnStatus.OK:
        raise psycopg.OperationalError("connection is broken")
    readable, _, _ = select.select([pgconn.socket], [], [], 0)
    if readable:
        conn.execute("SELECT 1")


class Database:
    """A connection pool to one PostgreSQL database.

    The pool opens lazily on first use, waits at most ``pool_timeout``
    seconds for a free or new connection (then raises
    :class:`~toolkit.errors.Unavailable`), and replaces connections that a
    server restart has closed.
    """

    def __init__(self, settings: Settings | None = None, *, url: str | None = None) -> None:
        self.settings = settings or default_settings()
        self.url = url or self.settings.database_url
        options = []
        if self.settings.statement_timeout_ms:
            options.append(f"-c statement_timeout={self.settings.statement_timeout_ms}")
        self._pool = ConnectionPool(
            self.url,
            min_size=self.settings.pool_min_size,
            max_size=self.settings.pool_max_size,
            timeout=self.settings.pool_timeout,
            kwargs={
                "autocommit": True,
                "application_name": self.settings.application_name,
                "connect_timeout": max(1, round(self.settings.connect_timeout)),
                "options": " ".join(options),
            },
            check=check_idle_connection,
            reconnect_timeout=max(self.settings.pool_timeout, 5.0),
            name=self.settings.application_name,
            open=False,
        )
        self._opened = False

    def open(self) -> None:
        """Open the pool (done on first use; call it to fail early)."""
        if not self._opened:
            self._pool.open(wait=False)
            self._opened = True

    def close(self) -> None:
        """Close every connection of the pool."""
        if self._opened:
            self._pool.close()
            self._opened = False

    def __enter__(self) -> Database:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A pooled autocommit connection for reads or single statements."""
        self.open()
        try:
            conn = self._pool.getconn()
        except (PoolTimeout, psycopg.Error) as exc:
            raise_translated(exc, "getting a connection")
        try:
            yield conn
        finally:
            if conn.info.transaction_status != TransactionStatus.IDLE and not conn.closed:
                # A caller left a transaction open: end it rather than pool it.
                try:
                    conn.rollback()
                except psycopg.Error:
                    conn.close()
            self._pool.putconn(conn)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection inside BEGIN ... COMMIT; an exception rolls it back.

        Driver errors raised inside, or by the COMMIT itself, come out as
        toolkit exceptions.
        """
        with self.connection() as conn:
            try:
                with conn.transaction():
                    yield conn
            except psycopg.Error as exc:
                raise_translated(exc, "transaction")

    def stats(self) -> dict[str, int]:
        """The pool's counters (size, available, waiting, ...)."""
        return dict(self._pool.get_stats())
