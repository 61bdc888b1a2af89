"""What the database layer says: libpq connection strings, and driver errors as toolkit errors.

Shared by :class:`~toolkit.db.database.Database` and
:class:`~toolkit.aio.db.database.AsyncDatabase` (and every driver call): no I/O here.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal, NoReturn

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import PoolTimeout

from toolkit.config import MISPLACED_AT, mask_password, misplaced_at
from toolkit.errors import (
    ConfigurationError,
    Conflict,
    DatabaseError,
    InvalidInput,
    InvalidReference,
    RetryableConflict,
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


SECRET_KEYS = frozenset({"password", "sslpassword"})
"""libpq parameters whose value is a secret, masked wherever a conninfo is shown."""

NOT_SHOWN = "(URL not shown: its password cannot be told apart from the rest)"

_QUOTED = re.compile(r'"([^"]*)"')


def parse_conninfo(url: str) -> dict[str, Any]:
    """The parameters of a libpq URL or ``key=value`` string.

    A string libpq cannot parse (an unknown option, bad quoting) is a
    :class:`ConfigurationError` saying why, without the string: where libpq
    cannot parse it, nothing tells its password apart. So is a URL with an
    ``@`` libpq would not read as the end of user:password.
    """
    if misplaced_at(url):
        raise ConfigurationError(f"the database URL is not usable: {MISPLACED_AT}")
    try:
        return conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        reason = _parse_failure_reason(exc, url)
    # Raised out of the except block: libpq's own text can quote the password, and
    # would otherwise stay reachable as __context__.
    raise ConfigurationError(
        f"the database URL (not shown) is not a libpq URL or conninfo string: {reason}"
    )


def _parse_failure_reason(exc: psycopg.ProgrammingError, url: str) -> str:
    """libpq's reason, keeping a quoted fragment only when it is a name given as ``name=``.

    libpq quotes pieces of the string (``missing "=" after "secret"``,
    ``unexpected spaces found in "u:pass word"``), which can be a password.
    """
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__

    def shown(match: re.Match[str]) -> str:
        fragment = match.group(1)
        is_key = re.fullmatch(r"\w+", fragment) and re.search(
            rf"(?:^|[\s?&]){re.escape(fragment)}\s*=", url
        )
        return match.group(0) if is_key or not re.search(r"\w", fragment) else '"…"'

    return _QUOTED.sub(shown, reason)


def mask_conninfo(url: str) -> str:
    """A libpq URL or ``key=value`` string fit to show: every secret libpq sees is ``***``.

    :func:`~toolkit.config.mask_password` masks from the text; libpq then
    parses the result, and unless every secret it finds there reads ``***``
    (e.g. a percent-encoded parameter name), the string is rebuilt from
    libpq's own parse with the secrets masked. A string libpq cannot parse,
    or with a misplaced ``@``, is not shown at all.
    """
    if misplaced_at(url):
        return NOT_SHOWN
    try:
        params = conninfo_to_dict(url)
        masked = mask_password(url)
        seen = conninfo_to_dict(masked)
    except psycopg.ProgrammingError:
        return NOT_SHOWN
    if all(seen.get(key) in (None, "***") for key in SECRET_KEYS) and set(seen) == set(params):
        return masked
    return make_conninfo("", **{k: "***" if k in SECRET_KEYS else v for k, v in params.items()})


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
