"""What the database layer says: libpq connection strings, and driver errors as toolkit errors.

Shared by :class:`~toolkit.db.database.Database` and
:class:`~toolkit.aio.db.database.AsyncDatabase` (and every driver call): no I/O here.
"""

from __future__ import annotations

import os
from typing import Any, Literal, NoReturn

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import PoolTimeout

from toolkit.config import mask_password
from toolkit.errors import (
    ConfigurationError,
    Conflict,
    DatabaseError,
    InvalidInput,
    InvalidReference,
    RetryableConflict,
    ToolkitError,
    Unavailable,
    bounded_repr,
)


def translate_error(exc: BaseException, context: str) -> ToolkitError:
    """The toolkit exception for a psycopg or pool error; ``context`` says what ran.

    The server's DETAIL (which can quote row values, e.g. a duplicate email)
    is kept on the exception's ``detail`` attribute for debugging, never in
    its message.
    """
    if isinstance(exc, ToolkitError):
        return exc
    if isinstance(exc, PoolTimeout):
        return Unavailable(f"{context}: no database connection free or reachable in time ({exc})")
    if not isinstance(exc, psycopg.Error):
        return DatabaseError(f"{context}: {exc}")
    error = _translated(exc, context)
    error.detail = exc.diag.message_detail
    return error


def _translated(exc: psycopg.Error, context: str) -> ToolkitError:
    state = exc.sqlstate or ""
    primary = exc.diag.message_primary or str(exc).strip().splitlines()[0]
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
    if state.startswith(("22", "23")) or (isinstance(exc, psycopg.DataError) and not state):
        return InvalidInput(f"{context}: {primary}")
    if state.startswith(("08", "57P", "53")) or isinstance(
        exc, (psycopg.OperationalError, psycopg.InterfaceError)
    ):
        return Unavailable(f"{context}: database unavailable ({primary})")
    return DatabaseError(f"{context}: {primary} [SQLSTATE {state or 'none'}]")


def raise_translated(exc: BaseException, context: str) -> NoReturn:
    """Raise the toolkit exception for ``exc``, chained to it."""
    raise translate_error(exc, context) from exc


TransactionOutcome = Literal["committed", "aborted", "in progress"]


def parse_conninfo(url: str) -> dict[str, Any]:
    """The parameters of a libpq URL or ``key=value`` string.

    A string libpq cannot parse (an unknown option, bad quoting) is a
    :class:`ConfigurationError` saying why, with any password masked.
    """
    try:
        return conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigurationError(
            f"the database URL {bounded_repr(mask_password(url))} is not a libpq URL or "
            f"conninfo string: {reason}"
        ) from None


def describe_target(url: str) -> str:
    """``database "x" as user "u" at host:port``, from a conninfo and the PG* environment.

    Never includes the password.
    """
    params = parse_conninfo(url)
    dbname = params.get("dbname") or os.environ.get("PGDATABASE") or "(default)"
    user = params.get("user") or os.environ.get("PGUSER") or "(default)"
    host = params.get("host") or os.environ.get("PGHOST") or "the local socket"
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    return f'database "{dbname}" as user "{user}" at {host}:{port}'


def connection_failure(exc: psycopg.Error, url: str, context: str) -> ToolkitError:
    """One line saying which database could not be reached and the likely fix.

    libpq reports connection failures as text without a SQLSTATE, so the
    cause is told from the server's (English) message; anything else keeps
    the server's words.
    """
    target = describe_target(url)
    text = str(exc).strip()
    reason = text.rsplit("failed: ", 1)[-1].splitlines()[0].removeprefix("FATAL:").strip()
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


def with_options(url: str, options: list[str]) -> str:
    """``options`` for the server, added after any ``options=`` the URL already has."""
    given = parse_conninfo(url).get("options")
    return " ".join([str(given), *options] if given else options)
