"""Settings from the environment and a ``.env`` file, in one place.

Every setting is read from a ``TOOLKIT_``-prefixed environment variable, e.g.
``TOOLKIT_DATABASE_URL``, or from the same line in a ``.env`` file in the
current directory (``TOOLKIT_ENV_FILE`` names another file; set it empty to
read none). The first of these that has a setting wins: a command-line option
(or a keyword override), the environment (which the pytest plugin's ini
options feed), the ``.env`` file, the default. Defaults reach the services of
a local development machine. :func:`load_settings` turns a bad value into a
:class:`~toolkit.errors.ConfigurationError` that names the variable, and warns
(:class:`UnknownSettingWarning`) about each ``TOOLKIT_*`` variable that is no
setting, e.g. a misspelt one, which would otherwise be silently ignored.
"""

from __future__ import annotations

import difflib
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from dotenv import dotenv_values
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from toolkit.errors import ConfigurationError

ENV_PREFIX = "TOOLKIT_"
ENV_FILE_VARIABLE = "TOOLKIT_ENV_FILE"
"""Names the ``.env`` file to read (default ``.env`` in the current directory); empty: none."""
DEFAULT_ENV_FILE = ".env"
NOT_SETTINGS = frozenset({ENV_FILE_VARIABLE, "TOOLKIT_FUZZ_EXAMPLES"})
"""``TOOLKIT_*`` variables that are no setting but are read elsewhere: not warned about."""
NOT_SETTINGS_PREFIXES = (
    "TOOLKIT_TEST_",
    "TOOLKIT_RELIABILITY_",
    "TOOLKIT_BENCH_",
    "TOOLKIT_CLUSTER_",
)
"""Prefixes of ``TOOLKIT_*`` variables read by the pytest plugin (``TOOLKIT_TEST_SERVER_URL``),
the toolkit's own tests (the reliability and scale-out suites) and its benchmarks: not
warned about."""


class UnknownSettingWarning(UserWarning):
    """A ``TOOLKIT_*`` variable (environment or ``.env``) that names no setting."""


_MASK = "***"
_NOT_A_USER = re.compile(r"[/?#&=@]")
_SECRET_NAME = re.compile(r"pass|secret|token", re.IGNORECASE)
# A key=value conninfo: a key naming a secret, and its value: quoted (maybe unterminated),
# or bare, with any bare words after it that are not ``key=`` (an unquoted password's rest).
_CONNINFO_SECRET = re.compile(
    r"((?:^|(?<=\s))\w*(?:pass|secret|token)\w*\s*=\s*)"
    r"('(?:[^'\\]|\\.)*'?|\S*(?:\s+(?!\w+\s*=)\S+)*)",
    re.IGNORECASE,
)
_URL_FIELDS = (
    "database_url",
    "migration_database_url",
    "redis_url",
    "amqp_url",
    "storage_url",
    "audit_anchor_url",
)


MISPLACED_AT = (
    "the URL has an '@' that libpq would not read as the end of user:password, so part of "
    "a password would be taken for the host or database name; percent-encode '@' as %40 "
    "and '/' as %2F in the user and password (the URL is not shown)"
)


_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _split_path(value: str) -> tuple[str, ...]:
    return tuple(part for part in value.split(os.pathsep) if part.strip())


def _split_modules(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


# A comma or semicolon (as Celery writes broker lists) followed by the next URL's scheme:
# a comma inside a password (allowed unencoded in a URL's userinfo) does not split.
_AMQP_SEPARATOR = re.compile(r"\s*[,;]\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")


def split_amqp_urls(value: str) -> tuple[str, ...]:
    """The broker URLs in ``value``: one URL, or several separated by commas (or
    semicolons) before the next ``scheme://``."""
    return tuple(part for part in _AMQP_SEPARATOR.split(value.strip()) if part.strip())


def mask_password(url: str) -> str:
    """``url`` with anything that may be a password replaced by ``***``, judged from the text.

    Used wherever a connection or storage URL may reach a message, a log line
    or a repr; it never needs the URL to be well formed. In a URL everything
    between ``user:`` and the *last* ``@`` is masked (libpq ends the userinfo
    at the first ``@`` before a ``/``, urllib at the last ``@`` before ``/?#``:
    the last ``@`` covers both), and so is the value of every query parameter
    whose name (percent-decoded) has ``pass``, ``secret`` or ``token`` in it.
    In a ``key=value`` string the value of every such key is masked, quoted
    or not. :func:`toolkit.db.conninfo.mask_conninfo` checks the result for a
    PostgreSQL URL against libpq's own parse.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        return _CONNINFO_SECRET.sub(lambda m: m.group(1) + _MASK, url)
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        if _NOT_A_USER.search(user):  # the "@" was further on: userinfo swallowed more
            rest = f"{_MASK}@{rest}"
        else:
            rest = (f"{user}:{_MASK}@" if colon else f"{user}@") + rest
    address, question, query = rest.partition("?")
    if question:
        query = _masked_query(query)
    return f"{scheme}://{address}{question}{query}"


def _masked_query(query: str) -> str:
    """``query`` with secret-named parameters masked, and any ``&``-piece without ``=`` after
    one (a password with a raw ``&`` in it)."""
    pairs, in_secret = [], False
    for pair in query.split("&"):
        name, equals, _ = pair.partition("=")
        if equals:
            in_secret = bool(_SECRET_NAME.search(unquote(name)))
            pairs.append(f"{name}={_MASK}" if in_secret else pair)
        elif not in_secret:
            pairs.append(pair)
    return "&".join(pairs)


def misplaced_at(url: str) -> bool:
    """Whether a PostgreSQL URL has an ``@`` that libpq would not read as the end of user:password.

    libpq ends the userinfo at the first ``@`` before any ``/``, so a password
    with a raw ``@`` or ``/`` is silently read as part of the host, port or
    database name, where messages would show it. Such a URL is refused
    (the password must percent-encode them, ``%40`` and ``%2F``).
    """
    _, separator, rest = url.partition("://")
    if not separator:
        return False
    end = min((i for i in (rest.find("@"), rest.find("/")) if i >= 0), default=-1)
    if end >= 0 and rest[end] == "@":
        rest = rest[end + 1 :]
    return "@" in rest


class Settings(BaseSettings):
    """The toolkit's settings; construct with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=DEFAULT_ENV_FILE,
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    # PostgreSQL
    database_url: str = "postgresql://postgres@127.0.0.1:5432/toolkit"
    """Where the application connects: a libpq URL or ``key=value`` string."""
    migration_database_url: str | None = None
    """Where migrations run (an owner role); defaults to ``database_url``."""
    pool_min_size: int = Field(default=1, ge=0, le=1000)
    pool_max_size: int = Field(default=10, ge=1, le=1000)
    pool_timeout: float = Field(default=5.0, gt=0, le=600)
    """Seconds to wait for a free connection before raising Unavailable."""
    connect_timeout: float = Field(default=5.0, gt=0, le=600)
    statement_timeout_ms: int = Field(default=30_000, ge=0, le=86_400_000)
    """Server-side bound on one statement; 0 disables it."""
    application_name: str = Field(default="toolkit", min_length=1, max_length=63)
    database_replica_urls: str = ""
    """Streaming replicas of ``database_url`` for reads marked ``-- route: replica``:
    PostgreSQL URLs separated by whitespace. Empty: every read runs on the primary."""
    replica_max_lag: float = Field(default=10.0, gt=0, le=86_400)
    """Seconds of replay lag beyond which a replica is skipped until it catches up."""
    replica_retry_interval: float = Field(default=1.0, gt=0, le=3600)
    """Seconds a replica found down, lagging or not a standby is skipped before it is tried."""
    prepare_threshold: int | None = Field(default=5, ge=0, le=1_000_000)
    """Executions of one query on a connection before psycopg prepares it on the server
    (psycopg's own default, 5); ``off`` (or ``none``) never prepares, even queries bound with
    ``prepare=True``. Set ``off`` behind a transaction-mode pooler (PgBouncer 1.18, for one),
    which cannot keep a prepared statement from one transaction to the next."""

    # Redis
    redis_url: str = "redis://127.0.0.1:6379/0"
    """The cache's Redis; ``redis+cluster://host:port,host:port`` (or ``rediss+cluster://``)
    names a Redis Cluster by its seed nodes."""
    cache_namespace: str = Field(default="toolkit", min_length=1, max_length=64)
    redis_connect_timeout: float = Field(default=0.05, gt=0, le=60)
    redis_socket_timeout: float = Field(default=0.05, gt=0, le=60)
    cache_hmac_key: str | None = Field(default=None, min_length=16)
    """Integrity key of the LLM cache: entries are signed, unsigned ones not served."""

    # RabbitMQ
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    """RabbitMQ; several URLs separated by commas name a cluster's nodes (publishers,
    workers and the relay reconnect to another node when theirs goes away)."""
    queue_prefix: str = Field(default="", max_length=64)
    amqp_quorum_replicas: int | None = Field(default=None, ge=1, le=99)
    """Nodes holding each quorum queue (``x-quorum-initial-group-size``) when the topology
    is first declared; unset, the broker decides (``quorum_cluster_size``, 3 by default)."""

    # Storage
    storage_url: str = "file://./toolkit-files"
    audit_anchor_url: str | None = None
    """Where ``toolkit audit anchor`` writes (a storage URL, keys under ``audit-anchors/``);
    defaults to ``storage_url``. Point it at a store the database owner cannot write."""

    # The application's own tables
    sql_path: str = ""
    """Folders of the application's named queries, ``os.pathsep``-separated."""
    migrations_path: str = ""
    """Folders of the application's migrations, applied after the toolkit's."""
    app_modules: str = ""
    """Comma-separated modules whose import binds the application's queries."""

    @field_validator("prepare_threshold", mode="before")
    @classmethod
    def _prepare_off(cls, value: object) -> object:
        # "off" or "none" (any case): never prepare.
        if isinstance(value, str):
            text = value.strip()
            if text.lower() in ("off", "none"):
                return None
            if not text.lstrip("-").isdigit():
                raise ValueError("must be a count of executions (0 or more) or off")
        return value

    @field_validator("sql_path", "migrations_path")
    @classmethod
    def _existing_folders(cls, value: str) -> str:
        missing = [f for f in _split_path(value) if not Path(f).is_dir()]
        if missing:
            raise ValueError(f"not a folder: {', '.join(missing)}")
        return value

    @field_validator("app_modules")
    @classmethod
    def _module_names(cls, value: str) -> str:
        bad = [m for m in _split_modules(value) if not _MODULE.fullmatch(m)]
        if bad:
            raise ValueError(f"not a module name: {', '.join(bad)}")
        return value

    @property
    def sql_folders(self) -> tuple[Path, ...]:
        """The application's query folders (``TOOLKIT_SQL_PATH``)."""
        return tuple(Path(f) for f in _split_path(self.sql_path))

    @property
    def migration_folders(self) -> tuple[Path, ...]:
        """The application's migration folders (``TOOLKIT_MIGRATIONS_PATH``)."""
        return tuple(Path(f) for f in _split_path(self.migrations_path))

    @property
    def app_module_names(self) -> tuple[str, ...]:
        """The application's binding modules (``TOOLKIT_APP_MODULES``)."""
        return _split_modules(self.app_modules)

    @field_validator("database_url", "migration_database_url")
    @classmethod
    def _postgres_conninfo(cls, value: str | None) -> str | None:
        if value is None:
            return value
        # The rest of the syntax is libpq's to judge: Database and migrate parse it
        # before connecting (this module stays free of the driver).
        if "://" in value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("a URL must start with postgresql:// or postgres://")
        if misplaced_at(value):
            raise ValueError(MISPLACED_AT)
        return value

    @field_validator("database_replica_urls")
    @classmethod
    def _replica_urls(cls, value: str) -> str:
        for url in value.split():
            if not url.startswith(("postgresql://", "postgres://")):
                raise ValueError("each replica must be a postgresql:// URL")
            if misplaced_at(url):
                raise ValueError(MISPLACED_AT)
        return value

    @property
    def replica_urls(self) -> tuple[str, ...]:
        """The replicas' URLs (``TOOLKIT_DATABASE_REPLICA_URLS``), in order."""
        return tuple(self.database_replica_urls.split())

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        # redis+cluster:// and rediss+cluster:// name a Redis Cluster's seed nodes.
        if not value.startswith(
            ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
        ):
            raise ValueError(
                "must start with redis://, rediss://, unix://, redis+cluster:// "
                "or rediss+cluster://"
            )
        return value

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, value: str) -> str:
        urls = split_amqp_urls(value)
        if not urls or not all(url.startswith(("amqp://", "amqps://")) for url in urls):
            raise ValueError("must start with amqp:// or amqps:// (each URL of a list)")
        return value

    @property
    def amqp_urls(self) -> tuple[str, ...]:
        """The broker URLs of ``TOOLKIT_AMQP_URL``: one, or a cluster's nodes in order."""
        return split_amqp_urls(self.amqp_url)

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        """Fields for ``repr``, with passwords in connection URLs masked."""
        for name, value in super().__repr_args__():
            masked = name in _URL_FIELDS and isinstance(value, str)
            if name == "database_replica_urls" and isinstance(value, str):
                yield name, " ".join(mask_password(url) for url in value.split())
                continue
            if name == "amqp_url" and isinstance(value, str):
                yield name, ",".join(mask_password(url) for url in split_amqp_urls(value))
                continue
            if name == "cache_hmac_key" and value is not None:
                yield name, _MASK
                continue
            yield name, mask_password(value) if masked else value

    @property
    def effective_migration_url(self) -> str:
        """The URL migrations run against."""
        return self.migration_database_url or self.database_url


def env_file() -> str | None:
    """The ``.env`` file to read: ``TOOLKIT_ENV_FILE``, else ``.env``; None when set empty."""
    return os.environ.get(ENV_FILE_VARIABLE, DEFAULT_ENV_FILE) or None


def setting_variables() -> frozenset[str]:
    """The environment variable of every setting, e.g. ``TOOLKIT_DATABASE_URL``."""
    return frozenset(ENV_PREFIX + name.upper() for name in Settings.model_fields)


def unknown_variables(dotenv_path: str | None) -> list[str]:
    """The ``TOOLKIT_*`` names in the environment or the ``.env`` file that name no setting.

    Names are matched without regard to case, as the settings are read.
    """
    names = set(os.environ)
    if dotenv_path is not None and Path(dotenv_path).is_file():
        names.update(dotenv_values(dotenv_path, encoding="utf-8"))
    known = setting_variables()
    return sorted(
        name
        for name in names
        if name.upper().startswith(ENV_PREFIX)
        and name.upper() not in known
        and name.upper() not in NOT_SETTINGS
        and not name.upper().startswith(NOT_SETTINGS_PREFIXES)
    )


def warn_unknown_variables(dotenv_path: str | None) -> None:
    """Warn (:class:`UnknownSettingWarning`) about each unknown ``TOOLKIT_*`` variable.

    Python's default warning filter shows each message once per process.
    """
    # Compared without the prefix, which every name shares and would make any two look alike.
    fields = sorted(name.upper() for name in Settings.model_fields)
    for name in unknown_variables(dotenv_path):
        closest = difflib.get_close_matches(name.upper().removeprefix(ENV_PREFIX), fields, n=1)
        hint = f"; did you mean {ENV_PREFIX}{closest[0]}?" if closest else ""
        where = "the environment" if name in os.environ else dotenv_path
        warnings.warn(
            f"{name} (in {where}) is not a toolkit setting and is ignored{hint}",
            UnknownSettingWarning,
            stacklevel=1,
        )


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment and ``.env``, with keyword overrides.

    Raises :class:`ConfigurationError` naming the environment variable of the
    first bad value; warns about ``TOOLKIT_*`` variables that name no setting.
    """
    dotenv_path = env_file()
    warn_unknown_variables(dotenv_path)
    problems = []
    try:
        settings = Settings(**overrides, _env_file=dotenv_path)  # type: ignore[arg-type]
    except ValidationError as exc:
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            problems.append(f"{ENV_PREFIX}{field.upper()}: {error['msg']}")
    if problems:
        # Raised out of the except block: pydantic's error quotes the values (passwords
        # in URLs), and would otherwise stay reachable as __context__.
        raise ConfigurationError("invalid settings: " + "; ".join(problems))
    if settings.pool_min_size > settings.pool_max_size:
        raise ConfigurationError(
            f"{ENV_PREFIX}POOL_MIN_SIZE ({settings.pool_min_size}) exceeds "
            f"{ENV_PREFIX}POOL_MAX_SIZE ({settings.pool_max_size})"
        )
    return settings


def settings_from_options(
    options: object, names: Mapping[str, str] = {"database_url": "database_url"}
) -> Settings:
    """The settings, with the command-line options that were given as overrides.

    ``names`` maps an option's attribute (e.g. of an ``argparse.Namespace``)
    to the setting it overrides; options left out (None or empty) keep the
    environment's value.
    """
    overrides = {
        setting: value
        for option, setting in names.items()
        if (value := getattr(options, option, None))
    }
    return load_settings(**overrides)


@lru_cache(maxsize=1)
def default_settings() -> Settings:
    """The settings from the environment, read once per process."""
    return load_settings()
