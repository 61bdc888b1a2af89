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
import time
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


def _rollback_quietly(conn: Connection) -> None:
    """Roll back if the connection still can; a broken one is discarded by the pool."""
    if conn.closed:
        return
    try:
        conn.execute("ROLLBACK")
    except psycopg.Error:
        conn.close()


def is_alive(conn: Connection) -> bool:
    """Whether a pooled connection survived its idle time, mostly without a round trip.

    An idle autocommit connection has nothing to read: if its socket is
    readable the server has spoken first (a termination notice after a
    restart, or end of file), and only then is a real query spent to decide.
    """
    pgconn = conn.pgconn
    if conn.closed or pgconn.status != ConnStatus.OK:
        return False
    readable, _, _ = select.select([pgconn.socket], [], [], 0)
    if not readable:
        return True
    try:
        conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


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
        conn = self._checked_out()
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

    def _checked_out(self) -> Connection:
        """A live connection from the pool, within ``pool_timeout``.

        Dead ones (closed by a server restart or a network cut while idle)
        are discarded and the next one taken at once; psycopg_pool's own
        check would sleep a second or more between attempts.
        """
        deadline = time.monotonic() + self.settings.pool_timeout
        while True:
            try:
                conn = self._pool.getconn(timeout=max(0.001, deadline - time.monotonic()))
            except (PoolTimeout, psycopg.Error) as exc:
                raise_translated(exc, "getting a connection")
            if is_alive(conn):
                return conn
            conn.close()
            self._pool.putconn(conn)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection inside BEGIN ... COMMIT; an exception rolls it back.

        Driver errors raised inside, or by the COMMIT itself, come out as
        toolkit exceptions. When the connection is lost during COMMIT, the
        outcome is looked up by transaction id on a fresh connection: the
        call returns normally if the transaction committed, and raises
        Unavailable only if it did not, so "raised" always means "not
        written".
        """
        with self.connection() as conn:
            try:
                conn.execute("BEGIN")
            except psycopg.Error as exc:
                raise_translated(exc, "BEGIN")
            try:
                yield conn
            except psycopg.Error as exc:
                _rollback_quietly(conn)
                raise_translated(exc, "transaction")
            except BaseException:
                _rollback_quietly(conn)
                raise
            self._commit(conn)

    def _commit(self, conn: Connection) -> None:
        if conn.info.transaction_status == TransactionStatus.INERROR:
            _rollback_quietly(conn)
            raise DatabaseError(
                "transaction: a statement failed inside it, so it was rolled back, not committed"
            )
        try:
            row = conn.execute("SELECT pg_current_xact_id_if_assigned()::text").fetchone()
        except psycopg.Error as exc:
            _rollback_quietly(conn)
            raise_translated(exc, "transaction (before COMMIT; nothing was written)")
        xid = row[0] if row else None
        try:
            conn.execute("COMMIT")
        except psycopg.Error as exc:
            if xid is None or not isinstance(exc, psycopg.OperationalError):
                raise_translated(exc, "COMMIT")
            outcome = self._outcome_of(xid)
            if outcome == "committed":
                log.warning("connection lost during COMMIT; transaction %s did commit", xid)
                return
            raise Unavailable(
                f"COMMIT: connection lost; transaction {xid} is {outcome}, nothing was written"
            ) from exc

    def _outcome_of(self, xid: str) -> str:
        """``committed`` or ``aborted`` for a transaction whose COMMIT went unanswered."""
        deadline = time.monotonic() + self.settings.pool_timeout
        while True:
            try:
                with psycopg.connect(
                    self.url,
                    autocommit=True,
                    connect_timeout=max(1, round(self.settings.connect_timeout)),
                ) as probe:
                    row = probe.execute("SELECT pg_xact_status(%s::xid8)", [xid]).fetchone()
                status = str(row[0]) if row and row[0] else "unknown"
            except psycopg.Error:
                status = "unknown (the database is unreachable)"
            # "in progress": the old backend has not finished its COMMIT yet.
            if status in ("committed", "aborted") or time.monotonic() > deadline:
                return status
            time.sleep(0.05)

    def stats(self) -> dict[str, int]:
        """The pool's counters (size, available, waiting, ...)."""
        return dict(self._pool.get_stats())
