"""libpq connection strings: parsed, masked for showing, and described.

Shared by :class:`~toolkit.db.database.Database`,
:class:`~toolkit.aio.db.database.AsyncDatabase`, the migrations and the demo:
no I/O here, and never a password in what it returns or raises.
"""

from __future__ import annotations

import os
import re
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from toolkit.config import MISPLACED_AT, mask_password, misplaced_at
from toolkit.errors import ConfigurationError

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


def with_options(url: str, options: list[str]) -> str:
    """``options`` for the server, added after any ``options=`` the URL already has."""
    given = parse_conninfo(url).get("options")
    return " ".join([str(given), *options] if given else options)
