"""The application's own settings, beside the toolkit's.

The toolkit's settings (``TOOLKIT_DATABASE_URL``, ``TOOLKIT_REDIS_URL``,
``TOOLKIT_AMQP_URL``, ``TOOLKIT_STORAGE_URL``, pool sizes and timeouts) are
read by :func:`toolkit.config.load_settings`; what only this service decides
is read here from ``AGENTS_API_*`` variables.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AppSettings(BaseSettings):
    """What this service decides: limits, and which services it opens."""

    model_config = SettingsConfigDict(env_prefix="AGENTS_API_", extra="ignore", frozen=True)

    max_upload_bytes: int = Field(default=10 << 20, ge=1)
    """The largest upload accepted; a larger one is refused with 413 and leaves nothing."""
    retry_after_seconds: int = Field(default=5, ge=0, le=3600)
    """The ``Retry-After`` sent with a 503 when a service is unavailable."""
    ready_timeout: float = Field(default=2.0, gt=0, le=60)
    """Seconds each readiness check may take before its service counts as down."""
    cache: bool = True
    """Open the LLM cache (Redis); without it, completions are computed every time."""
    storage: bool = True
    """Open the file store (``TOOLKIT_STORAGE_URL``) and serve the ``/files`` routes."""
    broker_check: bool = True
    """Report RabbitMQ in the readiness probe (the relay, not this service, publishes)."""
