"""Where the cache tests find Redis, and a private redis-server they can kill."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import redis

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"

# The shared Redis is healthy in these tests; generous timeouts keep a busy
# CI machine from turning into spurious misses. Outage tests use short ones.
HEALTHY_TIMEOUT = 2.0


def unlink_namespace(client: redis.Redis, namespace: str) -> int:
    """Delete every key of ``namespace`` with SCAN + UNLINK."""
    keys = list(client.scan_iter(match=f"{namespace}:*", count=500))
    return int(client.unlink(*keys)) if keys else 0


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((REDIS_HOST, 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A throwaway redis-server on its own port, which a test may stop and restart."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://{REDIS_HOST}:{port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH; the outage tests need it")
        self._process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", REDIS_HOST, "--save", "",
             "--appendonly", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        probe = redis.Redis(host=REDIS_HOST, port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    probe.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self._process.poll() is not None:
                        raise RuntimeError(
                            f"redis-server did not start on port {self.port}"
                        ) from None
                    time.sleep(0.02)
        finally:
            probe.close()

    def stop(self) -> None:
        """Kill the server (SIGKILL: no goodbye to its clients) and wait for it."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None
