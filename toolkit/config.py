"""Settings from the environment, in one place.

Every setting is read from a ``TOOLKIT_``-prefixed environment variable, e.g.
``TOOLKIT_DATABASE_URL``. Defaults reach the services of a local development
machine. :func:`load_settings` turns a bad value into a
:class:`~toolkit.errors.ConfigurationError` that names the variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from toolkit.errors import ConfigurationError

ENV_PREFIX = "TOOLKIT_"

_MASK = "***"
_CONNINFO_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")
_URL_FIELDS = (
    "database_url",
    "migration_database_url",
    "redis_url",
    "amqp_url",
    "storage_url",
    "audit_anchor_url",
)


_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _split_path(value: str) -> tuple[str, ...]:
    return tuple(part for part in value.split(os.pathsep) if part.strip())


def _split_modules(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def mask_password(url: str) -> str:
    """``url`` with any password replaced by ``***``: URL userinfo, ``?password=`` or ``password=``.

    Used wherever a connection string may reach a message, a log line or a repr.
    """
    if "://" not in url:
        return _CONNINFO_PASSWORD.sub(lambda m: m.group(1) + _MASK, url)
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostinfo = netloc.rpartition("@")
            user, has_password, _ = userinfo.partition(":")
            netloc = f"{user}:{_MASK}@{hostinfo}" if has_password else netloc
        query = parts.query
        if "password" in query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, _MASK if k == "password" else v) for k, v in pairs], safe="*")
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return "<a URL that could not be parsed>"


class Settings(BaseSettings):
    """The toolkit's settings; construct with :func:`load_settings`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

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

    # Redis
    redis_url: str = "redis://127.0.0.1:6379/0"
    cache_namespace: str = Field(default="toolkit", min_length=1, max_length=64)
    redis_connect_timeout: float = Field(default=0.05, gt=0, le=60)
    redis_socket_timeout: float = Field(default=0.05, gt=0, le=60)
    cache_hmac_key: str | None = Field(default=None, min_length=16)
    """Integrity key of the LLM cache: entries are signed, unsigned ones not served."""

    # RabbitMQ
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    queue_prefix: str = Field(default="", max_length=64)

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
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, value: str) -> str:
        if not value.startswith(("amqp://", "amqps://")):
            raise ValueError("must start with amqp:// or amqps://")
        return value

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        """Fields for ``repr``, with passwords in connection URLs masked."""
        for name, value in super().__repr_args__():
            masked = name in _URL_FIELDS and isinstance(value, str)
            if name == "cache_hmac_key" and value is not None:
                yield name, _MASK
                continue
            yield name, mask_password(value) if masked else value

    @property
    def effective_migration_url(self) -> str:
        """The URL migrations run against."""
        return self.migration_database_url or self.database_url


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment, with keyword overrides.

    Raises :class:`ConfigurationError` naming the environment variable of the
    first bad value.
    """
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            problems.append(f"{ENV_PREFIX}{field.upper()}: {error['msg']}")
        raise ConfigurationError("invalid settings: " + "; ".join(problems)) from None
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
