"""Driver errors as toolkit errors: translation, and what a failed connection means.

Shared by :class:`~toolkit.db.database.Database` and
:class:`~toolkit.aio.db.database.AsyncDatabase` (and every driver call): no I/O here.
Connection strings themselves (parsing, masking, describing) are
:mod:`toolkit.db.conninfo`.
"""

from __future__ import annotations

import re
from typing import Literal, NoReturn

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import PoolTimeout

from toolkit.db.conninfo import describe_target
from toolkit.db.tenancy import TENANT_REQUIRED_SQLSTATE
from toolkit.errors import (
    ConfigurationError,
    Conflict,
    DatabaseError,
    InvalidInput,
    InvalidReference,
    RetryableConflict,
    TenantMismatch,
    TenantRequired,
    ToolkitError,
    Unavailable,
)


def translate_error(exc: BaseException, context: str) -> ToolkitError:
    """The toolkit exception for a psycopg or pool error; ``context`` says what ran.

    The server's DETAIL (which can quote row values, e.g. a duplicate email)
    is kept on the exception's ``detail`` attribute and the psycopg exception
    on ``driver_error``, for debugging, never in its message. Raise it with
    :func:`raise_translated`, which keeps the driver exception off the chain.
    """
    if isinstance(exc, ToolkitError):
        return exc
    error: ToolkitError
    if isinstance(exc, PoolTimeout):
        error = Unavailable(f"{context}: no database connection free or reachable in time ({exc})")
    elif not isinstance(exc, psycopg.Error):
        error = DatabaseError(f"{context}: {exc}")
    else:
        error = _translated(exc, context)
        error.detail = exc.diag.message_detail
    error.driver_error = exc
    return error


_RLS_REFUSED_ROW = re.compile(r'violates row-level security policy.* for table "(?P<table>[^"]+)"')
"""A WITH CHECK failure: "new row violates row-level security policy ... for table "t"".
Other SQLSTATE 42501 messages (a missing privilege, or "query would be affected by
row-level security policy" under row_security = off) are not a tenant mismatch."""


def _translated(exc: psycopg.Error, context: str) -> ToolkitError:
    state = exc.sqlstate or ""
    primary = exc.diag.message_primary or str(exc).strip().splitlines()[0]
    if state == TENANT_REQUIRED_SQLSTATE:
        return TenantRequired(
            f"{context}: no tenant is set for this transaction, and row-level security "
            "needs one; run it in Database.transaction(tenant=...) or "
            "Database.connection(tenant=...)"
        )
    refused_row = _RLS_REFUSED_ROW.search(primary) if state == "42501" else None
    if refused_row:
        # The server's message names the table and policy, never the row's values.
        table = refused_row["table"]
        return TenantMismatch(
            f"{context}: the row names another tenant than the transaction's, so row-level "
            f'security on table "{table}" refused it; nothing was written',
            table=table,
        )
    if isinstance(exc, pg_errors.UniqueViolation):
        return Conflict(f"{context}: {primary}")
    if isinstance(exc, pg_errors.ForeignKeyViolation):
        return InvalidReference(f"{context}: {primary}")
    if isinstance(exc, (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)):
        return RetryableConflict(
            f"{context}: aborted by a concurrent transaction, nothing of it was written; "
            f"retry the whole transaction ({primary})"
        )
    if isinstance(exc, pg_errors.QueryCanceled):
        return Unavailable(f"{context}: statement timed out or was cancelled ({primary})")
    if isinstance(exc, pg_errors.LockNotAvailable):
        # lock_timeout or NOWAIT: the server is fine, another session holds the lock.
        return Unavailable(f"{context}: a lock was not granted in time ({primary})")
    if state.startswith(("22", "23")) or (isinstance(exc, psycopg.DataError) and not state):
        return InvalidInput(f"{context}: {primary}")
    if state.startswith(("08", "57P", "53")) or isinstance(
        exc, (psycopg.OperationalError, psycopg.InterfaceError)
    ):
        return Unavailable(f"{context}: database unavailable ({primary})")
    return DatabaseError(f"{context}: {primary} [SQLSTATE {state or 'none'}]")


def raise_translated(exc: BaseException, context: str) -> NoReturn:
    """Raise the toolkit exception for ``exc``, with ``exc`` on its ``driver_error`` only.

    Not chained (``from exc``) nor left as ``__context__``: psycopg's text
    carries the server's DETAIL, which can quote row values, and a traceback
    prints every link of the chain.
    """
    error = translate_error(exc, context)
    if error is exc:
        raise error
    raise_detached(error, exc)


def raise_detached(error: ToolkitError, driver_error: BaseException) -> NoReturn:
    """Raise ``error`` with ``driver_error`` on its ``driver_error`` attribute, off its chain.

    Called inside an ``except`` block, where Python would set the handled
    driver exception as ``__context__``: that link is cut on the way out.
    """
    error.driver_error = driver_error
    try:
        raise error from None
    except ToolkitError as raised:
        raised.__context__ = None
        raise


TransactionOutcome = Literal["committed", "aborted", "in progress"]


def connection_failure(exc: psycopg.Error, url: str, context: str) -> ToolkitError:
    """One line saying which database could not be reached and the likely fix.

    libpq reports connection failures as text without a SQLSTATE, so the
    cause is told from the server's (English) message; anything else keeps
    the server's words.
    """
    target = describe_target(url)
    text = str(exc).strip()
    reason = text.rsplit("failed: ", 1)[-1].splitlines()[0].removeprefix("FATAL:").strip()
    if "unsupported startup parameter" in text:
        # PgBouncer refuses what it cannot replay on its shared server connections;
        # the toolkit sends ``options`` for TOOLKIT_STATEMENT_TIMEOUT_MS.
        return ConfigurationError(
            f"{context}: {target}: {reason}: a pooler (PgBouncer) answers there and refuses it; "
            "set TOOLKIT_STATEMENT_TIMEOUT_MS=0 and drop options= from the URL, and put the "
            "bound on the role instead (ALTER ROLE ... SET statement_timeout = '30s')"
        )
    if "database" in text and "does not exist" in text:
        return ConfigurationError(
            f"{context}: {target}: the database does not exist; "
            "run `toolkit migrate`, which creates it"
        )
    if any(
        sign in text
        for sign in ("password authentication failed", "role", "no pg_hba.conf entry", "password")
    ):
        return ConfigurationError(
            f"{context}: {target}: authentication failed ({reason}); "
            "check the user and password in the database URL and pg_hba.conf"
        )
    if any(sign in text for sign in ("Connection refused", "timeout expired", "No such file")):
        return Unavailable(
            f"{context}: {target}: nothing answers there ({reason}); "
            "is PostgreSQL running and listening on that host and port?"
        )
    return Unavailable(f"{context}: {target}: cannot connect ({reason})")
