"""Connecting to RabbitMQ with bounded waits, and translating pika's errors.

A client may be given several broker addresses (the nodes of a RabbitMQ
cluster): :class:`Brokers` tries them in turn, starting after the node of
its last connection, so a client whose node died reconnects to a live one.

Every connection sets a heartbeat (a dead peer is noticed), a socket and
handshake timeout, and ``blocked_connection_timeout``: a broker under a
memory or disk alarm blocks publishers, and after that many seconds pika
closes the connection instead of hanging the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import pika
import pika.exceptions as pex

from toolkit.config import mask_password, split_amqp_urls
from toolkit.errors import InvalidInput, ToolkitError, Unavailable

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


BrokerUrls = str | Sequence[str]
"""One broker URL, several separated by commas (or semicolons, as Celery writes them),
or a sequence of URLs: the addresses of one broker or of a cluster's nodes."""


def broker_urls(urls: BrokerUrls) -> tuple[str, ...]:
    """Each broker URL in ``urls``, in order; InvalidInput when there is none."""
    given = [urls] if isinstance(urls, str) else list(urls)
    found = tuple(url for text in given for url in split_amqp_urls(text))
    if not found:
        raise InvalidInput("no RabbitMQ URL given", field="amqp_url")
    return found


class Brokers:
    """The addresses of one RabbitMQ deployment, and which to try first.

    :meth:`connect` tries each address once, starting with the one after the
    address of its last connection: a client that lost its node (stopped,
    crashed, cut off) tries the other nodes before that one. A single address
    behaves as before: the one URL, every time. Not thread-safe: each client
    (publisher, worker, relay) holds its own.
    """

    def __init__(self, urls: BrokerUrls) -> None:
        self.urls = broker_urls(urls)
        self._last: int | None = None

    @property
    def current(self) -> str:
        """The URL of the last connection made (the first URL before any)."""
        return self.urls[self._last or 0]

    def order(self) -> list[str]:
        """The URLs in the order the next connection tries them."""
        start = 0 if self._last is None else (self._last + 1) % len(self.urls)
        return [*self.urls[start:], *self.urls[:start]]

    def connected(self, url: str) -> None:
        """Remember that a connection to ``url`` was made (the next one starts after it)."""
        self._last = self.urls.index(url)

    def connect(self, options: ConnectionOptions | None = None) -> pika.BlockingConnection:
        """A blocking connection to the first address that answers.

        Raises Unavailable naming every address tried (passwords masked) and
        why each failed.
        """
        failures: list[tuple[str, str]] = []
        for url in self.order():
            try:
                connection = pika.BlockingConnection(parameters(url, options))
            except (TimeoutError, pex.AMQPError, OSError) as exc:
                failures.append((mask_password(url), describe(exc)))
                log.info("RabbitMQ at %s unreachable: %s", mask_password(url), describe(exc))
                continue
            self.connected(url)
            return connection
        raise Unavailable(unreachable(failures))


def unreachable(failures: Sequence[tuple[str, str]]) -> str:
    """The message for brokers that did not answer, from (masked address, reason) pairs."""
    if len(failures) == 1:
        address, reason = failures[0]
        return f"RabbitMQ at {address} unreachable: {reason}"
    each = "; ".join(f"{address} ({reason})" for address, reason in failures)
    return f"RabbitMQ unreachable at each of {len(failures)} addresses: {each}"


def connect(urls: BrokerUrls, options: ConnectionOptions | None = None) -> pika.BlockingConnection:
    """A blocking connection to the first of ``urls`` that answers; Unavailable (naming
    each broker tried) when none does."""
    return Brokers(urls).connect(options)


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
