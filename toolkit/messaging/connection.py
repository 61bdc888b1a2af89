"""Connecting to RabbitMQ with bounded waits, and translating pika's errors.

Every connection sets a heartbeat (a dead peer is noticed), a socket and
handshake timeout, and ``blocked_connection_timeout``: a broker under a
memory or disk alarm blocks publishers, and after that many seconds pika
closes the connection instead of hanging the caller.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pika
import pika.exceptions as pex

from toolkit.config import mask_password
from toolkit.errors import ToolkitError, Unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionOptions:
    """How a toolkit connection to RabbitMQ behaves."""

    heartbeat: int = 30
    """Seconds between heartbeats; a peer silent for two intervals is dead."""
    blocked_connection_timeout: float = 30.0
    """Seconds a blocked connection (resource alarm) may stay blocked before it is closed."""
    socket_timeout: float = 5.0
    """Seconds for the TCP connect and each socket operation of the handshake."""
    stack_timeout: float = 10.0
    """Seconds for the whole connection establishment (TCP, TLS, AMQP handshake)."""
    name: str = "toolkit"
    """The connection name shown by ``rabbitmqctl list_connections``."""


def parameters(url: str, options: ConnectionOptions | None = None) -> pika.URLParameters:
    """pika connection parameters for ``url`` with the toolkit's bounds applied."""
    opts = options or ConnectionOptions()
    params = pika.URLParameters(url)
    params.heartbeat = opts.heartbeat
    params.blocked_connection_timeout = opts.blocked_connection_timeout
    params.socket_timeout = opts.socket_timeout
    params.stack_timeout = opts.stack_timeout
    params.connection_attempts = 1
    params.retry_delay = 0
    params.client_properties = {"connection_name": opts.name, "product": "toolkit"}
    return params


def connect(url: str, options: ConnectionOptions | None = None) -> pika.BlockingConnection:
    """A blocking connection; Unavailable (naming the broker) when it cannot be made."""
    try:
        return pika.BlockingConnection(parameters(url, options))
    except (TimeoutError, pex.AMQPError, OSError) as exc:
        raise Unavailable(f"RabbitMQ at {mask_password(url)} unreachable: {describe(exc)}") from exc


def describe(exc: BaseException) -> str:
    """A one-line description of a pika or socket error."""
    if isinstance(exc, pex.AMQPConnectionError) and exc.args:
        inner = exc.args[0]
        if isinstance(inner, BaseException):
            return describe(inner)
    text = str(exc) or repr(exc)
    name = type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}"


CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pex.AMQPConnectionError,
    pex.ConnectionClosed,
    pex.StreamLostError,
    pex.ChannelWrongStateError,
    pex.ConnectionWrongStateError,
    pex.ChannelClosed,
    pex.ConnectionBlockedTimeout,
    OSError,
)
"""Errors after which a connection or channel is unusable and must be replaced."""


def translate(exc: BaseException, context: str) -> ToolkitError:
    """The toolkit exception for a pika error raised while doing ``context``."""
    if isinstance(exc, ToolkitError):
        return exc
    if isinstance(exc, pex.ConnectionBlockedTimeout):
        return Unavailable(
            f"{context}: the broker blocked the connection longer than allowed "
            "(a memory or disk alarm); nothing more was sent"
        )
    return Unavailable(f"{context}: RabbitMQ connection lost ({describe(exc)})")


def close_quietly(connection: pika.BlockingConnection | None) -> None:
    """Close a blocking connection, ignoring errors of one already dead."""
    if connection is None:
        return
    try:
        if connection.is_open:
            connection.close()
    except Exception:
        log.debug("closing a dead RabbitMQ connection", exc_info=True)
