# Generated from toolkit/aio/db/database.py by tools/async_to_sync.py: do not edit.
# Edit the async source and run `tox -e generate`.
"""A pooled PostgreSQL database.

Pooled connections run in autocommit: a single read costs one round trip,
and psycopg's prepared statements survive the return to the pool (a
ROLLBACK on return would throw them away). Multi-step work is explicit::

    with db.transaction() as tx:
        user = users.create(tx, {"email": "ada@example.com", "display_name": "Ada"})
        agents.create(tx, {"owner_id": user.id, "name": "helper", "type": "assistant"})

A task cancelled mid-query or mid-transaction leaves the pool healthy:
psycopg cancels the statement on the server, the transaction is rolled back
and the connection goes back to the pool clean (or is discarded if broken).

One door: every transaction the toolkit opens, :meth:`Database.transaction`
and the one a write with ``audit=`` opens on a bare connection
(:func:`toolkit.db.patterns.atomic`), runs through :func:`transaction_on`,
so the lost-COMMIT lookup and the error translation are the same everywhere.
It is also where the tenant is set: ``transaction(tenant=...)`` and
``connection(tenant=...)`` send BEGIN and the transaction-local tenant in one
round trip (:mod:`toolkit.db.tenancy`), so the tenant ends with the
transaction and no pooled connection carries one to its next user.

And it is where reads meet replicas. With replica URLs, a transaction that
wrote yields its commit position (:attr:`Database.commit_position`),
read in the COMMIT's own round trip; ``connection(read_after=position)``
sends each query marked ``-- route: replica`` to a replica that has replayed
past that position (asked on the replica, before the query), else to the
primary, and every other query to the primary. Without replicas nothing of
this runs: COMMIT is a bare COMMIT and every query runs on the primary.
"""

from __future__ import annotations

import copy
import logging
import select
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import Any, cast
from uuid import UUID
from weakref import WeakKeyDictionary

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.abc import Query
from psycopg.pq import ConnStatus, TransactionStatus
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from toolkit.concurrency import Lock, sleep
from toolkit.config import Settings, default_settings
from toolkit.db.conninfo import describe_target, parse_conninfo, with_options
from toolkit.db.errors import (
    TransactionOutcome,
    connection_failure,
    raise_translated,
    translate_error,
)
from toolkit.db.replicas import (
    COMMIT_AND_POSITION,
    REPLAY_STATE,
    CommitPosition,
    ReplicaHealth,
    parse_lsn,
)
from toolkit.db.tenancy import BEGIN_AS_TENANT, tenant_id
from toolkit.errors import (
    Closed,
    DatabaseError,
    InvalidInput,
    OutcomeUnknown,
    TenancyUnavailable,
    ToolkitError,
    Unavailable,
)

__all__ = [
    "Connection",
    "Database",
    "ReadRoute",
    "TransactionOutcome",
    "connect",
    "is_alive",
    "read_route",
    "tenant_of",
    "transaction_on",
    "translate_error",
]

log = logging.getLogger(__name__)

Connection = psycopg.Connection[Any]
"""What repository functions take first: a pooled connection or a transaction."""


def connect(
    url: str,
    *,
    connect_timeout: float,
    context: str,
    prepare_threshold: int | None = 5,
    options: str | None = None,
) -> Connection:
    """A new autocommit connection, or one toolkit error line saying why not.

    ``prepare_threshold`` is psycopg's (None: never prepare), as
    ``TOOLKIT_PREPARE_THRESHOLD`` sets it for a pool's connections;
    ``options``, when given, replaces the URL's (as a pool's connections send it).
    """
    parse_conninfo(url)
    extra: dict[str, Any] = {} if options is None else {"options": options}
    try:
        return psycopg.Connection.connect(
            url,
            autocommit=True,
            connect_timeout=max(1, round(connect_timeout)),
            prepare_threshold=prepare_threshold,
            **extra,
        )
    except psycopg.Error as exc:
        raise connection_failure(exc, url, context) from exc


# Owning a table (directly or through a role the user is a member of) lets the
# user alter it, switch its row-level security off or drop its policies.
_PRIVILEGES = """
SELECT r.rolsuper, r.rolbypassrls, NOT r.rolsuper AND EXISTS (
    SELECT 1 FROM pg_catalog.pg_class AS c
    WHERE c.relkind IN ('r', 'p')
      AND (c.relrowsecurity OR c.relname = 'audit_events')
      AND pg_catalog.pg_has_role(r.oid, c.relowner, 'MEMBER')
)
FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user
"""
_PRIVILEGED = (
    "a superuser",
    "a role with BYPASSRLS",
    "the owner of the tables (or a member of the role that owns them)",
)


def _privileges(conn: Connection) -> str | None:
    """What lets ``conn``'s role bypass the application role's limits, if anything.

    "a superuser", "a role with BYPASSRLS", "the owner of the tables ...",
    joined by "and"; None for a role bound by them (as toolkit_app's members are).
    """
    try:
        cursor = conn.execute(_PRIVILEGES)
        row = cursor.fetchone()
    except psycopg.Error as exc:
        raise_translated(exc, "checking the role's privileges")
    if not row:
        return None
    return (
        " and ".join(reason for held, reason in zip(row, _PRIVILEGED, strict=True) if held) or None
    )


def _warn_if_privileged(conn: Connection) -> None:
    """Log one warning when the role bypasses what the toolkit_app role enforces."""
    privileged = _privileges(conn)
    if privileged:
        log.warning(
            "connected to %s, which is %s: the application role's protections "
            "(no DDL, append-only audit events, hidden password hashes, tenant "
            "isolation) are off; connect as a login role in toolkit_app",
            describe_target(str(conn.info.dsn)),
            privileged,
        )


def _asked_tenancy_refusal(conn: Connection) -> str | None:
    """Why ``conn``'s role may not run tenant-scoped work (None: it may): one round trip."""
    privileged = _privileges(conn)
    if privileged is None:
        return None
    return (
        f"tenant-scoped work refused: the role {conn.info.user!r} is {privileged}, so "
        "row-level security would not keep tenants apart; connect as a login role in "
        "toolkit_app (no superuser, no BYPASSRLS, owns no table)"
    )


# What each connection of the application's own (an AsyncDatabase remembers its
# own answer) may do with a tenant, asked on its first tenant-scoped transaction.
_own_refusals: WeakKeyDictionary[Connection, str | None] = WeakKeyDictionary()


def _refuse_untenantable(conn: Connection, home: Database | None) -> None:
    """Raise :class:`TenancyUnavailable` if ``conn``'s role is not bound by row-level security.

    Asked once per Database (or connection of the application's own) and
    remembered, so a tenant-scoped transaction costs no extra round trip.
    """
    if home is not None:
        refusal = home._tenancy_refusal(conn)
    elif conn in _own_refusals:
        refusal = _own_refusals[conn]
    else:
        refusal = _own_refusals[conn] = _asked_tenancy_refusal(conn)
    if refusal is not None:
        raise TenancyUnavailable(refusal)


def _rollback_quietly(conn: Connection) -> None:
    """Roll back if the connection still can; a broken one is discarded by the pool."""
    if conn.closed:
        return
    try:
        conn.execute("ROLLBACK")
    except psycopg.Error:
        conn.close()


def _again(error: ToolkitError) -> ToolkitError:
    """A fresh copy of ``error`` to raise for another caller (or ``error``, if not copyable)."""
    try:
        return copy.copy(error)
    except Exception:  # an exception whose constructor takes other arguments
        return error


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


_REUSED_MAYBE = "the server restarted since, so a 'committed' may be a later transaction's"
"""A lookup's answer after a crash: ids whose WAL never reached the disk are handed out again."""

# The AsyncDatabase each pooled connection belongs to, tagged when the pool makes
# it: the lookup of a lost COMMIT's outcome needs a fresh connection, and a
# connection's own conninfo lacks the password (psycopg hides it).
_homes: WeakKeyDictionary[Connection, Database] = WeakKeyDictionary()

# The tenant of the transaction the door holds open on a connection, while it is
# open: what a component handed that transaction (the file store) checks its own
# tenant against, without asking the server.
_tenants: WeakKeyDictionary[Connection, UUID] = WeakKeyDictionary()


def tenant_of(conn: Connection) -> UUID | None:
    """The tenant of the transaction :func:`transaction_on` holds open on ``conn``; no I/O.

    None outside such a transaction, and inside one begun without a tenant
    (whose rows are the default tenant's). A tenant set other than through
    the door is not seen.
    """
    if conn.info.transaction_status == TransactionStatus.IDLE:
        return None
    return _tenants.get(conn)


@contextmanager
def transaction_on(conn: Connection, *, tenant: UUID | str | None = None) -> Iterator[Connection]:
    """The one door: run the block inside BEGIN ... COMMIT on a bare autocommit ``conn``.

    :meth:`Database.transaction` is this on a pooled connection; a write
    with ``audit=`` on a bare connection uses it too. An exception rolls the
    transaction back; driver errors, raised inside or by COMMIT, come out as
    toolkit exceptions. When the connection is lost during COMMIT, the
    outcome is looked up by transaction id through the Database ``conn``
    came from: returns normally if it committed, raises :class:`Unavailable`
    if it was rolled back, :class:`OutcomeUnknown` (with the ``xid``) if it
    cannot be known yet. A connection the application opened itself (not
    from an Database) is served the same way, except that a lost
    COMMIT's outcome cannot be looked up: it raises :class:`OutcomeUnknown`
    at once, to be asked later with ``transaction_status(xid)``. Raises
    :class:`InvalidInput` for a connection already inside a transaction or
    not in autocommit (its owner commits it, not the toolkit).

    With a ``tenant`` (a UUID or its text; :class:`InvalidInput` otherwise),
    BEGIN and ``set_config('toolkit.tenant_id', tenant, true)`` go in one
    round trip, so the tenant is transaction-local: it ends with the COMMIT
    or ROLLBACK, and the connection carries none afterwards. Before the first
    such transaction the role is checked once (per Database, or per
    connection of the application's own) and :class:`TenancyUnavailable` is
    raised, nothing begun, if it is a superuser, has BYPASSRLS or owns the
    tables. Without a tenant, only BEGIN is sent.
    """
    scoped = None if tenant is None else tenant_id(tenant)
    status = conn.info.transaction_status
    if status != TransactionStatus.IDLE or not conn.autocommit:
        state = "not in autocommit mode" if status == TransactionStatus.IDLE else status.name
        raise InvalidInput(
            f"transaction: the connection must be an idle autocommit one (as "
            f"Database.connection() gives), but it is {state}",
            field="conn",
        )
    home = _homes.get(conn)
    begin: Query = "BEGIN"
    if scoped is not None:
        _refuse_untenantable(conn, home)
        # A simple query of two statements: one round trip. The id is a parsed
        # UUID, quoted as a literal besides.
        begin = sql.SQL(BEGIN_AS_TENANT).format(tenant=sql.Literal(str(scoped)))
    try:
        conn.execute(begin)
    except BaseException as exc:
        # BEGIN ran but setting the tenant failed, or the caller was interrupted
        # (a cancelled task): no transaction, nor tenant, is left behind.
        if conn.info.transaction_status != TransactionStatus.IDLE:
            _rollback_quietly(conn)
        if isinstance(exc, psycopg.Error):
            raise_translated(exc, "BEGIN")
        raise
    if scoped is not None:
        _tenants[conn] = scoped
    try:
        try:
            yield conn
        except psycopg.Error as exc:
            _rollback_quietly(conn)
            raise_translated(exc, "transaction")
        except BaseException:
            # Includes a cancelled task: the statement was cancelled, now the transaction.
            _rollback_quietly(conn)
            raise
        _commit(conn, home)
    finally:
        _tenants.pop(conn, None)


def _commit(conn: Connection, home: Database | None) -> None:
    if conn.info.transaction_status == TransactionStatus.INERROR:
        _rollback_quietly(conn)
        raise DatabaseError(
            "transaction: a statement failed inside it, so it was rolled back, not committed"
        )
    try:
        # The server's start time too: after a crash, an id whose WAL never reached
        # the disk is handed out again, so a lookup must know whether one happened.
        cursor = conn.execute(
            "SELECT pg_current_xact_id_if_assigned()::text, pg_postmaster_start_time()"
        )
        row = cursor.fetchone()
    except psycopg.Error as exc:
        # COMMIT was never sent: the server rolls the transaction back.
        _rollback_quietly(conn)
        raise_translated(exc, "transaction (before COMMIT; nothing was written)")
    xid = int(row[0]) if row and row[0] is not None else None
    started: datetime | None = row[1] if row else None
    # With replicas, a transaction that wrote learns where its commit ends in the
    # WAL, in the COMMIT's own round trip (a read-only one has nothing to wait for,
    # and a replica's own transactions never write).
    positioned = xid is not None and home is not None and bool(home._replicas)
    try:
        if positioned:
            cursor = conn.execute(COMMIT_AND_POSITION)
            cursor.nextset()
            position = cursor.fetchone()
            if home is not None and position is not None:
                home._remember_position(CommitPosition.parse(position[0]))
        else:
            conn.execute("COMMIT")
    except psycopg.Error as exc:
        if xid is None or not isinstance(exc, psycopg.OperationalError):
            # No xid: the transaction wrote nothing, so it cannot have committed a change.
            raise_translated(exc, "COMMIT")
        if home is None:
            outcome = "not looked up: the connection did not come from a Database"
        else:
            outcome = home._outcome_of(xid, started)
        if outcome == "committed":
            log.warning("connection lost during COMMIT; transaction %s did commit", xid)
            if positioned and home is not None:
                # Where its commit ends is unknown: its reads must go to the primary.
                home._remember_position(CommitPosition.PRIMARY)
            return
        if outcome == "aborted":
            raise Unavailable(
                f"COMMIT: connection lost; transaction {xid} was rolled back, nothing was written"
            ) from exc
        raise OutcomeUnknown(
            f"COMMIT: connection lost and the outcome of transaction {xid} is unknown "
            f"({outcome}): it may have committed; ask transaction_status({xid}) later, "
            "with the error's server_started_at, before retrying",
            xid=xid,
            server_started_at=started,
        ) from exc


class ReadRoute:
    """Where the reads of one ``connection(read_after=...)`` block may run.

    Registered for the block's primary connection; the driver asks
    :func:`read_route` for each binding it runs there.
    """

    __slots__ = ("after", "database", "pinned", "tenant")

    def __init__(self, database: Database, after: CommitPosition, tenant: UUID | None) -> None:
        self.database = database
        self.after = after
        self.tenant = tenant
        # Set once a query not marked replica-routed ran in the block: it may have
        # written, and only the primary sees that, so later reads stay there.
        self.pinned = False


# The route of each primary connection inside a connection(read_after=...) block, while
# the block runs. A plain dict: the driver's test of it is one length check when empty.
_routes: dict[Connection, ReadRoute] = {}


def read_route(conn: Connection) -> ReadRoute | None:
    """The read route of ``conn`` inside a ``connection(read_after=...)`` block; no I/O."""
    return _routes.get(conn) if _routes else None


class _Replica:
    """One streaming replica: its URL, its health and its idle connections."""

    def __init__(self, url: str, retry_interval: float) -> None:
        self.url = url
        self.health = ReplicaHealth(url, retry_interval)
        self.idle: list[Connection] = []


def _replica_failed(exc: BaseException) -> bool:
    """Whether ``exc`` (raised on a replica) says the replica, not the query, failed.

    A lost or refused connection, a server shutting down, or a query cancelled
    by a conflict with recovery (SQLSTATE 40001 on a standby): the read is
    served by the primary instead.
    """
    error = getattr(exc, "driver_error", None) or exc
    return isinstance(
        error,
        (
            psycopg.OperationalError,
            psycopg.InterfaceError,
            pg_errors.SerializationFailure,
            pg_errors.AdminShutdown,
        ),
    )


class _NewestFirstPool(ConnectionPool[Connection]):
    """psycopg_pool's pool, handing out the connection returned last, not the one idle longest.

    Back-to-back requests then run on one client connection and one server
    backend whose caches are still warm (sequential requests over a pool of
    10 rotated through all ten: about 70 µs more server CPU and 80 µs more
    client CPU per request). The connections at the far end stay idle, so
    ``max_idle`` can close them when the load drops. Only the order changes:
    the lock, the waiting queue, growing, shrinking and the checks stay psycopg_pool's.
    It overrides a psycopg_pool internal (``_get_ready_connection``, taking from
    the ``_pool`` deque): tests/core/test_database.py checks the order it gives.
    """

    def _get_ready_connection(self, timeout: float | None) -> Connection | None:
        # Under the pool's lock. The pool takes from the left and puts returned
        # connections on the right: move the newest to the left.
        self._pool.rotate(1)
        return super()._get_ready_connection(timeout)


class _Checkout:
    """``with _Checkout(database) as conn``: a pooled autocommit connection,
    handed back idle (or discarded).

    A class, not a generator-based context manager: it runs on every
    request, and a generator costs two more frames on the way in and out.
    """

    __slots__ = ("_conn", "_database")

    def __init__(self, database: Database) -> None:
        self._database = database

    def __enter__(self) -> Connection:
        database = self._database
        if not database._opened:
            database._open("connection()")
        self._conn = database._checked_out()
        return self._conn

    def __exit__(self, *exc_info: object) -> None:
        conn = self._conn
        if conn.pgconn.transaction_status != TransactionStatus.IDLE and not conn.closed:
            # A caller left a transaction open: end it rather than pool it.
            try:
                conn.rollback()
            except psycopg.Error:
                conn.close()
        self._database._pool.putconn(conn)


# The last commit position of a writing transaction, per task (thread) and database.
_last_position: ContextVar[tuple[int, CommitPosition] | None] = ContextVar(
    "toolkit_commit_position", default=None
)


class Database:
    """A connection pool to one PostgreSQL database.

    The pool opens lazily on first use, once however many callers arrive
    together, waits at most ``pool_timeout`` seconds for a free or new
    connection (then raises :class:`~toolkit.errors.Unavailable`), and
    replaces connections that a server restart has closed. After
    :meth:`close` every method raises :class:`~toolkit.errors.Closed`: make
    a new one instead.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        url: str | None = None,
        replica_urls: Sequence[str] | None = None,
        warn_if_privileged: bool = True,
    ) -> None:
        self.settings = settings or default_settings()
        self.url = url or self.settings.database_url
        parse_conninfo(self.url)  # a malformed URL fails here, in one line
        self._warn_if_privileged = warn_if_privileged
        options = []
        if self.settings.statement_timeout_ms:
            options.append(f"-c statement_timeout={self.settings.statement_timeout_ms}")
        self._connection_options = options
        urls = self.settings.replica_urls if replica_urls is None else tuple(replica_urls)
        for replica_url in urls:
            parse_conninfo(replica_url)
        self._replicas = [_Replica(u, self.settings.replica_retry_interval) for u in urls]
        self._next_replica = 0
        self._reads = {"replica": 0, "primary": 0, "fallback": 0}
        # The pool's own reconnect attempts log a warning each; one clear
        # error from open() is what the caller sees instead.
        self._pool = _NewestFirstPool(
            self.url,
            min_size=self.settings.pool_min_size,
            max_size=self.settings.pool_max_size,
            timeout=self.settings.pool_timeout,
            kwargs={
                "autocommit": True,
                "application_name": self.settings.application_name,
                "connect_timeout": max(1, round(self.settings.connect_timeout)),
                "options": with_options(self.url, options),
                # None behind a transaction-mode pooler: a statement prepared in one
                # transaction's server connection is missing from the next one's.
                "prepare_threshold": self.settings.prepare_threshold,
            },
            configure=self._adopt,
            reconnect_timeout=max(self.settings.pool_timeout, 5.0),
            name=self.settings.application_name,
            open=False,
        )
        self._opened = False
        self._closed = False
        # Callers arriving together before the pool is open wait for one
        # opening, rather than each sending a probe connection of its own.
        self._opening = Lock()
        self._open_failure: ToolkitError | None = None
        # Whether tenant-scoped work may run as this role, asked on first use only.
        self._checking_tenancy = Lock()
        self._tenancy_known = False
        self._tenancy_refused: str | None = None

    def _connection_kwargs(self, url: str) -> dict[str, Any]:
        """How a replica's connections are made: as the pool's, with ``url``'s own options."""
        made_as = cast(dict[str, Any], self._pool.kwargs)  # a dict: __init__ passes one
        return dict(made_as, options=with_options(url, self._connection_options))

    def _tenancy_refusal(self, conn: Connection) -> str | None:
        """Why this database's role may not run tenant-scoped work (None: it may).

        Asked on ``conn`` (one of this pool's) by the first caller only; later
        ones, and those that waited meanwhile, get the remembered answer.
        """
        if not self._tenancy_known:
            with self._checking_tenancy:
                if not self._tenancy_known:
                    self._tenancy_refused = _asked_tenancy_refusal(conn)
                    self._tenancy_known = True
        return self._tenancy_refused

    def _adopt(self, conn: Connection) -> None:
        """Tag a connection the pool just made as this database's (see :func:`transaction_on`)."""
        _homes[conn] = self

    def _refuse_if_closed(self, action: str) -> None:
        if self._closed:
            name = type(self).__name__
            raise Closed(
                f"{action}: this {name} was closed by close() and cannot be reopened; "
                f"make a new {name}"
            )

    def open(self) -> None:
        """Open the pool (done on first use; call it to fail early).

        One connection is tried first, within ``connect_timeout``: a database
        that does not exist, refused credentials or a server that does not
        answer raise one :class:`ConfigurationError` or :class:`Unavailable`
        naming the database and the likely fix, instead of a pool retrying
        in the background until ``pool_timeout``. Callers that arrive while
        another opens wait for it; those that waited through a failed
        attempt get its error rather than each trying in turn. Raises
        :class:`Closed` after :meth:`close`.
        """
        self._open("open()")

    def _open(self, action: str) -> None:
        if self._opened:
            return
        self._refuse_if_closed(action)
        failure_before = self._open_failure
        with self._opening:
            self._refuse_if_closed(action)
            if self._opened:
                return
            failure = self._open_failure
            if failure is not None and failure is not failure_before:
                # An attempt failed while this caller waited. Trying again at once
                # would cost each waiting caller connect_timeout, one after another,
                # against a server that does not answer.
                raise _again(failure) from failure
            try:
                with connect(
                    self.url,
                    connect_timeout=self.settings.connect_timeout,
                    context="connecting",
                    prepare_threshold=self.settings.prepare_threshold,
                    # The pool's startup options too: a pooler that refuses them
                    # (PgBouncer and ``options``) is told here, in one line.
                    options=with_options(self.url, self._connection_options),
                ) as probe:
                    if self._warn_if_privileged:
                        _warn_if_privileged(probe)
                self._pool.open(wait=False)
            except ToolkitError as exc:
                self._open_failure = exc
                raise
            self._opened = True
            self._open_failure = None

    def session(self, context: str) -> Connection:
        """A connection of its own, outside the pool, made as the pool's are.

        For a session that outlives any unit of work (the outbox relay's
        ``LISTEN``); the caller closes it. ``context`` names the use in the
        error raised when it cannot be made. Transactions still go through
        :meth:`transaction` or :func:`transaction_on`.
        """
        self._refuse_if_closed(context)
        return connect(
            self.url,
            connect_timeout=self.settings.connect_timeout,
            context=context,
            prepare_threshold=self.settings.prepare_threshold,
            options=with_options(self.url, self._connection_options),
        )

    def close(self) -> None:
        """Close every connection of the pool, for good: later use raises :class:`Closed`.

        Closing twice, or before first use, is harmless.
        """
        with self._opening:  # not while another caller is halfway through opening
            self._closed = True
            opened, self._opened = self._opened, False
        if opened:
            self._pool.close()
        for replica in self._replicas:
            idle, replica.idle = replica.idle, []
            for conn in idle:
                conn.close()

    def __enter__(self) -> Database:
        self._open("open()")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def connection(
        self,
        tenant: UUID | str | None = None,
        *,
        read_after: CommitPosition | str | None = None,
    ) -> AbstractContextManager[Connection]:
        """A pooled autocommit connection for reads or single statements.

        With a ``tenant``, the block runs as one transaction of that tenant,
        exactly as :meth:`transaction` (committed on exit, rolled back by an
        exception): the tenant is set transaction-local, because a session
        setting would stay on the pooled connection for its next user and be
        lost behind a transaction-mode pooler, so it cannot outlive a
        transaction.

        With ``read_after`` (a :class:`CommitPosition`, or its text: usually
        the caller's last :attr:`commit_position`, or ``CommitPosition.START``
        when it has written nothing) and replicas configured, each query
        marked ``-- route: replica`` run on the connection goes to a replica
        that has replayed past that position (one replica asked per read, in
        turn), in the same tenant if any, through :func:`transaction_on`;
        when none has, it runs on the primary. Every other query runs on the
        primary, and keeps the block's later reads there (it may have
        written). A replica that is down, not a standby, or lags more than
        ``replica_max_lag`` seconds is skipped for ``replica_retry_interval``
        seconds, logged once, and its reads are served by the primary: no
        error reaches the caller. Without replicas, ``read_after`` changes
        nothing.
        """
        if tenant is None and read_after is None:
            return _Checkout(self)  # a request's usual checkout: one context manager, no generator
        return self._scoped_or_routed(tenant, read_after)

    @contextmanager
    def _scoped_or_routed(
        self, tenant: UUID | str | None, read_after: CommitPosition | str | None
    ) -> Iterator[Connection]:
        """:meth:`connection` with a tenant or a ``read_after`` position."""
        after = None if read_after is None else self._position_of(read_after)
        scoped = None if tenant is None else tenant_id(tenant)
        with _Checkout(self) if scoped is None else self.transaction(tenant=scoped) as conn:
            if after is None or not self._replicas:
                yield conn
                return
            _routes[conn] = ReadRoute(self, after, scoped)
            try:
                yield conn
            finally:
                _routes.pop(conn, None)

    @staticmethod
    def _position_of(value: CommitPosition | str) -> CommitPosition:
        if isinstance(value, CommitPosition):
            return value
        if isinstance(value, str):
            return CommitPosition.parse(value)
        raise InvalidInput(
            "read_after must be a CommitPosition or its text",
            field="read_after",
            value=str(value)[:40],
        )

    @property
    def commit_position(self) -> CommitPosition | None:
        """Where the last writing transaction this task (thread) committed here ends in the WAL.

        The read-your-writes token: pass it as ``connection(read_after=...)``,
        in this process or (as its ``str``) in a later request. None before
        such a commit, and always without replicas (no position is taken).
        A transaction that wrote nothing leaves it as it was.
        ``CommitPosition.PRIMARY`` when the COMMIT's answer was lost but the
        lookup found it committed: reads given it run on the primary.
        """
        remembered = _last_position.get()
        if remembered is None or remembered[0] != id(self):
            return None
        return remembered[1]

    def _remember_position(self, position: CommitPosition) -> None:
        _last_position.set((id(self), position))

    def read_counts(self) -> dict[str, int]:
        """Where this Database's replica-routed reads of ``read_after`` blocks ran.

        ``replica``: on a replica; ``primary``: on the primary (no replica had
        replayed the position, none was usable, or the block had run a query
        that is not replica-routed); ``fallback``: begun on a replica that
        failed, then served by the primary. Counted without a lock: under
        threads a count may miss an increment.
        """
        return dict(self._reads)

    @contextmanager
    def replica_for(self, route: ReadRoute) -> Iterator[Connection | None]:
        """A replica connection that has replayed past ``route.after``, or None: use the primary.

        The driver runs one replica-routed query in the block. A failure of the
        replica itself raised there (see :func:`_replica_failed`) is not raised:
        the replica is skipped and the block ends normally, for the driver to
        run the query on the primary instead.
        """
        found = None if route.pinned else self._replica_past(route.after)
        if found is None:
            self._reads["primary"] += 1
            yield None
            return
        replica, conn = found
        try:
            if route.tenant is None:
                yield conn
            else:
                with transaction_on(conn, tenant=route.tenant):
                    yield conn
        except Exception as exc:
            if not _replica_failed(exc):
                raise
            replica.health.skip(f"it failed during a read ({type(exc).__name__})")
            conn.close()
            self._reads["fallback"] += 1
        else:
            self._reads["replica"] += 1
        finally:
            self._give_back(replica, conn)

    def _replica_past(self, after: CommitPosition) -> tuple[_Replica, Connection] | None:
        """The next usable replica, with a connection, if it has replayed past ``after``."""
        self._refuse_if_closed("connection()")
        count = len(self._replicas)
        for step in range(count):
            replica = self._replicas[(self._next_replica + step) % count]
            if replica.health.may_try():
                self._next_replica = (self._next_replica + step + 1) % count
                break
        else:
            return None
        conn: Connection | None = None
        try:
            conn = self._replica_connection(replica)
            cursor = conn.execute(REPLAY_STATE)
            row = cursor.fetchone()
        except (psycopg.Error, ToolkitError) as exc:
            if conn is not None:
                conn.close()
            replica.health.skip(f"it cannot be reached ({type(exc).__name__})")
            return None
        replayed, lag = row if row else (None, None)
        if replayed is None:
            reason = "it is not a standby (not in recovery)"
        elif lag is not None and lag > self.settings.replica_max_lag:
            reason = f"its replay lags {lag:.1f} s (bound {self.settings.replica_max_lag:g} s)"
        else:
            replica.health.usable()
            if parse_lsn(replayed) >= after.lsn:
                return replica, conn
            self._give_back(replica, conn)
            return None
        replica.health.skip(reason)
        self._give_back(replica, conn)
        return None

    def _replica_connection(self, replica: _Replica) -> Connection:
        """An idle connection to ``replica`` that survived its idle time, or a new one."""
        while True:
            try:
                conn = replica.idle.pop()
            except IndexError:  # none idle (another thread may have taken the last)
                break
            if is_alive(conn):
                return conn
            conn.close()
        try:
            conn = psycopg.Connection.connect(replica.url, **self._connection_kwargs(replica.url))
        except psycopg.Error as exc:
            raise connection_failure(exc, replica.url, "connecting to a replica") from None
        _homes[conn] = self  # its tenancy answer is the primary's: the same roles
        return conn

    def _give_back(self, replica: _Replica, conn: Connection) -> None:
        """Keep a healthy replica connection for the next read (up to ``pool_max_size``)."""
        healthy = not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE
        if healthy and not self._closed and len(replica.idle) < self.settings.pool_max_size:
            replica.idle.append(conn)
        elif not conn.closed:
            conn.pgconn.finish()  # no round trip: a terminate message and the socket closed

    def _checked_out(self) -> Connection:
        """A live connection from the pool, within ``pool_timeout``.

        Dead ones (closed by a server restart or a network cut while idle)
        are discarded and the next one taken at once; psycopg_pool's own
        check would sleep a second or more between attempts.
        """
        deadline = time.monotonic() + self.settings.pool_timeout
        while True:
            pass
            try:
                conn = self._pool.getconn(timeout=max(0.001, deadline - time.monotonic()))
            except PoolClosed as exc:
                self._refuse_if_closed("connection()")  # close() ran while this caller waited
                raise_translated(exc, "getting a connection")
            except (PoolTimeout, psycopg.Error) as exc:
                raise_translated(exc, "getting a connection")
            pass
            if is_alive(conn):
                return conn
            conn.close()
            self._pool.putconn(conn)

    @contextmanager
    def transaction(self, tenant: UUID | str | None = None) -> Iterator[Connection]:
        """A connection inside BEGIN ... COMMIT; an exception rolls it back.

        With a ``tenant`` (a UUID or its text), row-level security shows and
        accepts only that tenant's rows in the block; the tenant is set in the
        same round trip as BEGIN and ends with the transaction. The first
        tenant-scoped use of this database checks its role once and raises
        :class:`~toolkit.errors.TenancyUnavailable` for a superuser, a role
        with BYPASSRLS, or the tables' owner (see :func:`transaction_on`).

        Driver errors raised inside, or by the COMMIT itself, come out as
        toolkit exceptions. When the connection is lost during COMMIT, the
        outcome is looked up by transaction id on a fresh connection: the
        call returns normally if the transaction committed, raises
        :class:`Unavailable` if it was rolled back (nothing was written), and
        raises :class:`OutcomeUnknown` (carrying the transaction id) if the
        server still shows it in progress or cannot be reached before
        ``pool_timeout``; ask :meth:`transaction_status` later.
        """
        self._refuse_if_closed("transaction()")
        scoped = None if tenant is None else tenant_id(tenant)  # refused before a checkout
        with _Checkout(self) as conn, transaction_on(conn, tenant=scoped):
            yield conn

    def transaction_status(
        self, xid: int, *, server_started_at: datetime | None = None
    ) -> TransactionOutcome:
        """Whether transaction ``xid`` (from :class:`OutcomeUnknown`) committed.

        Returns ``"committed"``, ``"aborted"`` or ``"in progress"``. Raises
        :class:`Unavailable` when the database cannot be reached,
        :class:`OutcomeUnknown` when the server no longer remembers a
        transaction that old, and :class:`InvalidInput` for a value that is
        not a transaction id or one the server has not issued yet.

        Pass the error's ``server_started_at``: after a crash PostgreSQL hands
        out again the ids whose WAL never reached the disk, so when the server
        has restarted since, "committed" may be a later transaction's and
        raises :class:`OutcomeUnknown` instead (check the data the
        transaction wrote), and "in progress" can only be such a later one, so
        the answer is "aborted". Without it, a crash in between goes unseen.
        """
        self._refuse_if_closed("transaction_status()")
        status = self._status_of(xid, server_started_at)
        if status == _REUSED_MAYBE:
            raise OutcomeUnknown(
                f"transaction {xid}: the server restarted after COMMIT was sent, and after a "
                "crash an id that never reached the disk is handed out again, so 'committed' "
                "may be a later transaction's; check the data the transaction wrote",
                xid=xid,
                server_started_at=server_started_at,
            )
        return status  # type: ignore[return-value]

    def _status_of(self, xid: int, server_started_at: datetime | None = None) -> str:
        """:meth:`transaction_status` on a connection of its own, open or closed pool alike.

        Returns :data:`_REUSED_MAYBE` where transaction_status raises.
        """
        if isinstance(xid, bool) or not isinstance(xid, int) or not 0 < xid < 2**63:
            raise InvalidInput(
                "xid must be a positive 64-bit transaction id", field="xid", value=str(xid)[:40]
            )
        probe = connect(
            self.url,
            connect_timeout=self.settings.connect_timeout,
            context="transaction_status",
            prepare_threshold=self.settings.prepare_threshold,
        )
        try:
            with probe:
                cursor = probe.execute(
                    "SELECT pg_xact_status(%s::text::xid8), pg_postmaster_start_time()", [str(xid)]
                )
                row = cursor.fetchone()
        except psycopg.Error as exc:
            raise_translated(exc, "transaction_status")
        status = row[0] if row else None
        if status not in ("committed", "aborted", "in progress"):
            raise OutcomeUnknown(
                f"transaction {xid} is too old (or too new) for the server to know its outcome",
                xid=xid,
                server_started_at=server_started_at,
            )
        restarted = (
            server_started_at is not None and row is not None and row[1] != server_started_at
        )
        if restarted and status == "in progress":
            # The restart ended our transaction; only a later one can hold the id now.
            return "aborted"
        if restarted and status == "committed":
            return _REUSED_MAYBE
        return str(status)

    def _outcome_of(self, xid: int, server_started_at: datetime | None) -> str:
        """The status of a transaction whose COMMIT went unanswered, polled until known.

        "in progress" means the old backend has not finished its COMMIT yet;
        the lookup retries until ``pool_timeout`` and then says what it saw.
        """
        deadline = time.monotonic() + self.settings.pool_timeout
        while True:
            try:
                # even if close() ran meanwhile
                status: str = self._status_of(xid, server_started_at)
            except OutcomeUnknown:
                return "unknown to the server"
            except ToolkitError:
                status = "the database is unreachable"
            if status in ("committed", "aborted", _REUSED_MAYBE) or time.monotonic() > deadline:
                return status
            sleep(0.05)

    def stats(self) -> dict[str, int]:
        """The pool's counters (size, available, waiting, ...)."""
        self._refuse_if_closed("stats()")
        return dict(self._pool.get_stats())
