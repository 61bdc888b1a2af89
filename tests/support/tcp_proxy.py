"""A fault-injecting TCP proxy for reliability tests, loopback only.

:class:`TcpProxy` listens on a loopback port and forwards every connection
to one upstream loopback address (Redis, PostgreSQL, RabbitMQ, anything
that speaks TCP). While it runs, a test can inject faults and take them back:

=====================  ====================================================
``add_latency(s)``     delay every chunk of bytes, both directions, by ``s``
``stall()``            hold all bytes, on open and new connections: peers
                       see a connection that is up but silent (a partition)
``cut_all()``          reset every open connection (RST, not a clean FIN)
``refuse_new()``       stop listening: new connects get ECONNREFUSED
``restore()``          undo all of the above; held bytes flow again
=====================  ====================================================

Faults compose: ``cut_all()`` plus ``refuse_new()`` is a dead server,
``stall()`` alone is a black hole. Every control method returns only once the
proxy's I/O thread has applied it, so a test can assert right after the call.

Design: one daemon thread runs a :mod:`selectors` loop over the listening
socket, both sockets of every connection and a wake-up socket pair; control
methods post a command and wait for the loop to run it. No third-party code,
no asyncio, so it works from any test, synchronous or not.

Example::

    with TcpProxy(upstream_port=6379) as proxy:
        client = connect_somehow(port=proxy.port)
        proxy.stall()
        ...  # the client times out
        proxy.restore()

The proxy refuses non-loopback addresses on both sides, so it can never be
pointed at (or exposed to) another machine.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import queue
import random
import selectors
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TypeVar

__all__ = ["ProxyStats", "TcpProxy"]

T = TypeVar("T")
_log = logging.getLogger(__name__)

_CHUNK = 65536
# Stop reading from a side while this many bytes wait to go to the other.
_HIGH_WATER = 4 * 1024 * 1024


def _require_loopback(host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"TcpProxy only works on loopback addresses, not {host!r}") from None
    if not address.is_loopback:
        raise ValueError(f"TcpProxy only works on loopback addresses, not {host!r}")
    return host


@dataclass
class ProxyStats:
    """Counters of a :class:`TcpProxy` since it started."""

    accepted: int = 0
    """Client connections accepted."""
    upstream_failures: int = 0
    """Accepted connections closed because the upstream refused them."""
    cut: int = 0
    """Connections reset by :meth:`TcpProxy.cut_all`."""
    closed_cleanly: int = 0
    """Connections that ended with an EOF passed on both ways (no reset)."""
    bytes_up: int = 0
    """Bytes forwarded from clients to the upstream."""
    bytes_down: int = 0
    """Bytes forwarded from the upstream to clients."""


@dataclass
class _Direction:
    """Bytes read from ``src`` waiting to be written to ``dst``."""

    src: socket.socket
    dst: socket.socket
    pending: deque[tuple[float, memoryview]] = field(default_factory=deque)
    pending_bytes: int = 0
    eof: bool = False  # src closed its write side
    up: bool = True  # client -> upstream


@dataclass
class _Connection:
    client: socket.socket
    upstream: socket.socket
    up: _Direction
    down: _Direction
    closed: bool = False


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _bind_outside_the_ephemeral_range(listener: socket.socket, host: str) -> None:
    """Bind to a free port the kernel never hands out as a client's local port.

    refuse_new() closes the listener and restore() binds the same port again; a
    port from the ephemeral range may meanwhile have become some client
    connection's local port ("Address already in use").
    """
    low, _ = _ephemeral_range()
    candidates = list(range(max(1024, low - 12_000), low))
    random.shuffle(candidates)
    for port in candidates[:200]:
        try:
            listener.bind((host, port))
            return
        except OSError:
            continue
    listener.bind((host, 0))


class TcpProxy:
    """A loopback TCP proxy with fault injection; see the module docstring.

    ``listen_port=0`` picks a free port (read it from :attr:`port` after
    :meth:`start`). ``connect_timeout`` bounds the proxy's own connect to the
    upstream; a refused upstream connection resets the client connection.
    """

    def __init__(
        self,
        upstream_port: int,
        upstream_host: str = "127.0.0.1",
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        connect_timeout: float = 1.0,
    ) -> None:
        self.upstream = (_require_loopback(upstream_host), upstream_port)
        self._listen_host = _require_loopback(listen_host)
        self._listen_port = listen_port
        self._connect_timeout = connect_timeout
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._connections: list[_Connection] = []
        self._latency = 0.0
        self._stalled = False
        self._refusing = False
        self._commands: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = (
            queue.SimpleQueue()
        )
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._thread: threading.Thread | None = None
        self._running = False
        self.stats = ProxyStats()

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> TcpProxy:
        """Bind the listening port and start forwarding."""
        if self._thread is not None:
            raise RuntimeError("TcpProxy already started")
        self._listen()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="TcpProxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close every connection and the listener, and stop the thread."""
        if self._thread is None:
            return
        self._call(self._shutdown)
        self._thread.join(timeout=5)
        self._thread = None
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def host(self) -> str:
        """The address clients connect to."""
        return self._listen_host

    @property
    def port(self) -> int:
        """The port clients connect to (fixed at the first :meth:`start`)."""
        return self._listen_port

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` clients connect to."""
        return self._listen_host, self._listen_port

    @property
    def active_connections(self) -> int:
        """How many client connections are open now."""
        return self._call(lambda: len(self._connections))

    # -- faults --------------------------------------------------------------

    def add_latency(self, seconds: float) -> None:
        """Delay every chunk by ``seconds`` in each direction (0 removes it)."""
        if seconds < 0:
            raise ValueError("latency must be >= 0")

        def apply() -> None:
            self._latency = seconds

        self._call(apply)

    def stall(self) -> None:
        """Hold every byte on open and new connections until :meth:`restore`.

        Connections stay open and new ones are accepted, so peers see a
        silent peer rather than an error: their reads time out.
        """

        def apply() -> None:
            self._stalled = True

        self._call(apply)

    def cut_all(self) -> int:
        """Reset every open connection; returns how many there were."""
        return self._call(self._cut_all)

    def refuse_new(self) -> None:
        """Stop listening: new connections are refused until :meth:`restore`.

        Open connections are not touched; combine with :meth:`cut_all` for
        a server that died.
        """
        self._call(self._close_listener)

    def restore(self) -> None:
        """Remove every fault: no latency, no stall, listening again.

        Bytes held by a stall are forwarded now (like a healed partition).
        """

        def apply() -> None:
            self._latency = 0.0
            self._stalled = False
            if self._refusing:
                self._listen()
                self._refusing = False

        self._call(apply)

    # -- the I/O thread ------------------------------------------------------

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the I/O thread and return its result (or raise its error)."""
        if self._thread is None or not self._thread.is_alive():
            return fn()
        done = threading.Event()
        box: list[T] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                box.append(fn())
            except BaseException as exc:  # handed to the calling thread
                errors.append(exc)

        self._commands.put((run, done))
        self._wake_w.send(b"\0")
        if not done.wait(timeout=10):
            raise RuntimeError("TcpProxy I/O thread did not answer")
        if errors:
            raise errors[0]
        return box[0]

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self._listen_port:
            listener.bind((self._listen_host, self._listen_port))
        else:
            _bind_outside_the_ephemeral_range(listener, self._listen_host)
        listener.listen(128)
        listener.setblocking(False)
        self._listen_port = listener.getsockname()[1]
        self._listener = listener
        self._selector.register(listener, selectors.EVENT_READ, None)

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._selector.unregister(self._listener)
            self._listener.close()
            self._listener = None
        self._refusing = True

    def _shutdown(self) -> None:
        self._cut_all(count=False)
        if self._listener is not None:
            self._selector.unregister(self._listener)
            self._listener.close()
            self._listener = None
        self._running = False

    def _cut_all(self, count: bool = True) -> int:
        cut = len(self._connections)
        for conn in list(self._connections):
            self._close(conn, reset=True)
        if count:
            self.stats.cut += cut
        return cut

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        self.stats.accepted += 1
        try:
            upstream = socket.create_connection(self.upstream, timeout=self._connect_timeout)
        except OSError:
            self.stats.upstream_failures += 1
            _reset(client)
            return
        for sock in (client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Connection(
            client,
            upstream,
            up=_Direction(client, upstream, up=True),
            down=_Direction(upstream, client, up=False),
        )
        self._connections.append(conn)

    def _loop(self) -> None:
        while self._running:
            self._sync_interest()
            timeout = self._next_due()
            for key, events in self._selector.select(timeout):
                sock = key.fileobj
                if sock is self._wake_r:
                    self._run_commands()
                elif sock is self._listener:
                    self._accept()
                else:
                    conn = key.data
                    if conn is None or conn.closed:
                        continue  # the listener, closed by refuse_new() earlier in this batch
                    try:
                        if events & selectors.EVENT_READ:
                            self._read(conn, sock)
                        if events & selectors.EVENT_WRITE and not conn.closed:
                            self._flush(conn, conn.up if sock is conn.upstream else conn.down)
                    except Exception:  # one broken connection must not stop the proxy
                        _log.exception("TcpProxy: dropping a connection after an error")
                        self._close(conn, reset=True)
            self._flush_due()
        self._run_commands()  # release callers waiting on the shutdown

    def _run_commands(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass
        while True:
            try:
                fn, done = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                fn()
            finally:
                done.set()

    def _sync_interest(self) -> None:
        """Register each socket for what it should wait for now."""
        now = time.monotonic()
        for conn in self._connections:
            for sock, inbound, outbound in (
                (conn.client, conn.up, conn.down),
                (conn.upstream, conn.down, conn.up),
            ):
                events = 0
                if not self._stalled and not inbound.eof and inbound.pending_bytes < _HIGH_WATER:
                    events |= selectors.EVENT_READ
                if not self._stalled and outbound.pending and outbound.pending[0][0] <= now:
                    events |= selectors.EVENT_WRITE
                try:
                    registered = self._selector.get_key(sock).events
                except KeyError:
                    registered = 0
                if events == registered:
                    continue
                if not events:
                    self._selector.unregister(sock)
                elif registered:
                    self._selector.modify(sock, events, conn)
                else:
                    self._selector.register(sock, events, conn)

    def _next_due(self) -> float | None:
        if self._stalled:
            return None
        due = [d.pending[0][0] for c in self._connections for d in (c.up, c.down) if d.pending]
        if not due:
            return None
        return max(0.0, min(due) - time.monotonic())

    def _read(self, conn: _Connection, sock: object) -> None:
        direction = conn.up if sock is conn.client else conn.down
        try:
            data = direction.src.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn, reset=True)
            return
        if not data:
            direction.eof = True
            if not direction.pending:
                self._half_close(conn, direction)
            return
        direction.pending.append((time.monotonic() + self._latency, memoryview(data)))
        direction.pending_bytes += len(data)
        self._flush(conn, direction)

    def _flush_due(self) -> None:
        if self._stalled:
            return
        for conn in list(self._connections):
            for direction in (conn.up, conn.down):
                if not conn.closed and direction.pending:
                    self._flush(conn, direction)

    def _flush(self, conn: _Connection, direction: _Direction) -> None:
        if self._stalled:
            return
        now = time.monotonic()
        while direction.pending and direction.pending[0][0] <= now:
            due, chunk = direction.pending[0]
            try:
                sent = direction.dst.send(chunk)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(conn, reset=True)
                return
            if direction.up:
                self.stats.bytes_up += sent
            else:
                self.stats.bytes_down += sent
            direction.pending_bytes -= sent
            if sent < len(chunk):
                direction.pending[0] = (due, chunk[sent:])
                return
            direction.pending.popleft()
        if direction.eof and not direction.pending:
            self._half_close(conn, direction)

    def _half_close(self, conn: _Connection, direction: _Direction) -> None:
        """Pass an EOF on; close the pair once both sides are done."""
        with contextlib.suppress(OSError):
            direction.dst.shutdown(socket.SHUT_WR)
        if conn.up.eof and conn.down.eof:
            self.stats.closed_cleanly += 1
            self._close(conn, reset=False)

    def _close(self, conn: _Connection, *, reset: bool) -> None:
        if conn.closed:
            return
        conn.closed = True
        for sock in (conn.client, conn.upstream):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            if reset:
                _reset(sock)
            else:
                sock.close()
        self._connections.remove(conn)


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a crashed peer or a middlebox would."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    try:
        sock.close()
    except OSError as exc:  # pragma: no cover - close on a dead socket
        if exc.errno != errno.EBADF:
            raise
