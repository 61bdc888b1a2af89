"""The fault-injecting TCP proxy of tests/support, against a plain echo server."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.tcp_proxy import TcpProxy


class EchoServer:
    """Echoes every byte back; closes its side when the client does."""

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[TcpProxy]:
    with TcpProxy(upstream_port=echo.port) as running:
        yield running


def connect(proxy: TcpProxy, timeout: float = 1.0) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=timeout)


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def test_forwards_both_ways(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock, b"hello") == b"hello"
        big = bytes(range(256)) * 8192  # 2 MiB, more than any socket buffer
        assert roundtrip(sock, big) == big
    assert proxy.stats.accepted == 1
    assert proxy.stats.bytes_up >= len(big) + 5
    wait_for(lambda: proxy.stats.bytes_down >= len(big) + 5)


def test_latency_delays_each_direction(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        proxy.add_latency(0.1)
        began = time.monotonic()
        assert roundtrip(sock, b"ping") == b"ping"
        assert 0.2 <= time.monotonic() - began < 1.0
        proxy.add_latency(0)
        began = time.monotonic()
        roundtrip(sock, b"ping")
        assert time.monotonic() - began < 0.1
    with pytest.raises(ValueError):
        proxy.add_latency(-1)


def test_stall_holds_bytes_until_restore(proxy: TcpProxy) -> None:
    with connect(proxy, timeout=0.2) as sock:
        assert roundtrip(sock, b"a") == b"a"
        proxy.stall()
        sock.sendall(b"held")
        with pytest.raises(TimeoutError):
            sock.recv(16)
        with connect(proxy, timeout=0.2) as fresh:  # new connections are accepted...
            fresh.sendall(b"x")
            with pytest.raises(TimeoutError):  # ...and stalled too
                fresh.recv(16)
        proxy.restore()
        sock.settimeout(1.0)
        assert sock.recv(16) == b"held"  # the partition healed: bytes flow


def test_cut_all_resets_open_connections(proxy: TcpProxy) -> None:
    first, second = connect(proxy), connect(proxy)
    roundtrip(first, b"1")
    roundtrip(second, b"2")
    assert proxy.active_connections == 2
    assert proxy.cut_all() == 2
    for sock in (first, second):
        assert_reset(sock)
        sock.close()
    assert proxy.active_connections == 0
    assert proxy.stats.cut == 2
    assert proxy.stats.closed_cleanly == 0
    with connect(proxy) as sock:  # new connections still work
        assert roundtrip(sock, b"ok") == b"ok"


def test_refuse_new_then_restore(proxy: TcpProxy) -> None:
    kept = connect(proxy)
    roundtrip(kept, b"k")
    proxy.refuse_new()
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    assert roundtrip(kept, b"still") == b"still"  # open connections are untouched
    proxy.restore()
    with connect(proxy) as sock:
        assert roundtrip(sock, b"back") == b"back"
    kept.close()


def test_eof_is_passed_on(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(64):
            received += chunk
        assert received == b"last words"
    wait_for(lambda: proxy.active_connections == 0)
    assert (proxy.stats.closed_cleanly, proxy.stats.cut) == (1, 0)


def test_a_clean_close_is_not_taken_for_a_reset(proxy: TcpProxy) -> None:
    """The reset check itself: an orderly EOF from the peer must fail it."""
    with connect(proxy) as sock:
        sock.shutdown(socket.SHUT_WR)  # the echo server closes its side in turn
        with pytest.raises(AssertionError, match="clean EOF"):
            assert_reset(sock)


def test_upstream_down_resets_the_client() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    with TcpProxy(upstream_port=dead_port) as proxy:
        try:
            sock = connect(proxy)
        except ConnectionResetError:
            pass  # the reset beat connect() back to the client: a reset all the same
        else:
            with sock:
                assert_reset(sock)
        wait_for(lambda: proxy.stats.upstream_failures == 1)


@pytest.mark.parametrize("host", ["10.0.0.1", "example.com", "0.0.0.0", "192.168.1.1"])
def test_loopback_only(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        TcpProxy(upstream_port=6379, upstream_host=host)
    with pytest.raises(ValueError, match="loopback"):
        TcpProxy(upstream_port=6379, listen_host=host)


def test_stop_is_idempotent_and_frees_the_port(echo: EchoServer) -> None:
    proxy = TcpProxy(upstream_port=echo.port).start()
    port = proxy.port
    proxy.stop()
    proxy.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)


def assert_reset(sock: socket.socket) -> None:
    """The peer reset ``sock`` (RST): reading raises ECONNRESET, not a clean EOF."""
    try:
        data = sock.recv(1)
    except ConnectionResetError:
        return
    raise AssertionError(
        "clean EOF, not a reset" if data == b"" else f"data, not a reset: {data!r}"
    )


def wait_for(condition: object, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)
