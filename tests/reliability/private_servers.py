"""Private PostgreSQL clusters and RabbitMQ nodes that a test may restart.

The machine's shared servers serve everyone's tests, so a scenario that
restarts a server starts one of its own on free loopback ports, under a
temporary directory, and always stops and removes it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pika
from psycopg.conninfo import make_conninfo

PG_BIN = Path(os.environ.get("TOOLKIT_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
RABBITMQ_BIN = Path(os.environ.get("TOOLKIT_TEST_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _system_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def postgres_available() -> bool:
    """Whether a private cluster can be made here (root, the postgres user, the binaries)."""
    return os.geteuid() == 0 and _system_user("postgres") and (PG_BIN / "initdb").exists()


def rabbitmq_available() -> bool:
    """Whether a private node can be started here (root, the rabbitmq user, the scripts)."""
    return (
        os.geteuid() == 0
        and _system_user("rabbitmq")
        and (RABBITMQ_BIN / "rabbitmq-server").exists()
    )


def _owned_tempdir(prefix: str, user: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    shutil.chown(path, user, user)
    path.chmod(0o700)
    return path


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on a free port, trust auth, user postgres."""

    def __init__(self) -> None:
        self.root = _owned_tempdir("toolkit-pg-", "postgres")
        self.data = self.root / "data"
        self.port = free_port()
        self.log = self.root / "server.log"

    def url(self, dbname: str = "toolkit") -> str:
        return make_conninfo(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname)

    def _run(self, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            check=True,
            capture_output=True,
            timeout=timeout,
            cwd=self.root,
        )

    def _pg_ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run(
            str(PG_BIN / "pg_ctl"), action, "-D", str(self.data), "-l", str(self.log),
            "-o", options, "-w", *extra,
        )  # fmt: skip

    def start(self) -> None:
        self._run(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
            "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        self._pg_ctl("start")

    def restart(self, mode: str = "fast", down_for: float = 0.0) -> None:
        """Stop with ``pg_ctl stop -m mode``, stay down ``down_for`` seconds, start again;
        returns once the server accepts connections. A small cluster restarts in a
        fraction of a second, which a workload may never notice: the pause makes
        the outage one it must ride through."""
        self._pg_ctl("stop", "-m", mode)
        time.sleep(down_for)
        self._pg_ctl("start")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError):
                self._run(str(PG_BIN / "pg_ctl"), "stop", "-D", str(self.data), "-m", "immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started private cluster, stopped and removed on the way out."""
    cluster = PrivatePostgres()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


class PrivateRabbitMQ:
    """A throwaway RabbitMQ node (no plugins) on free ports, guest/guest from loopback."""

    def __init__(self) -> None:
        self.root = _owned_tempdir("toolkit-rmq-", "rabbitmq")
        self.root.chmod(0o755)
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"toolkit{secrets.token_hex(4)}@localhost"
        self.home = self.root / "home"
        self.home.mkdir()
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        (self.root / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        (self.root / "rabbitmq-env.conf").write_text("")
        (self.root / "enabled_plugins").write_text("[].\n")
        for path in (self.root, cookie, *self.root.iterdir()):
            shutil.chown(path, "rabbitmq", "rabbitmq")
        self._server: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def _env(self) -> list[str]:
        settings = {
            "HOME": self.home,
            "RABBITMQ_CONF_ENV_FILE": self.root / "rabbitmq-env.conf",
            "RABBITMQ_CONFIG_FILE": self.root / "rabbitmq.conf",
            "RABBITMQ_ENABLED_PLUGINS_FILE": self.root / "enabled_plugins",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": self.port,
            "RABBITMQ_DIST_PORT": self.dist_port,
            "RABBITMQ_MNESIA_BASE": self.root / "mnesia",
            "RABBITMQ_LOG_BASE": self.root / "log",
            "RABBITMQ_PID_FILE": self.root / "node.pid",
        }
        return [
            "runuser",
            "-u",
            "rabbitmq",
            "--",
            "env",
            *(f"{k}={v}" for k, v in settings.items()),
        ]

    def ctl(self, *args: str) -> None:
        subprocess.run(
            [*self._env(), str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, *args],
            check=True,
            capture_output=True,
            timeout=60,
            cwd=self.root,
        )

    def _answers(self) -> bool:
        try:
            pika.BlockingConnection(pika.URLParameters(self.url)).close()
        except pika.exceptions.AMQPError:
            return False
        return True

    def wait_until_up(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._server is not None and self._server.poll() is not None:
                output = (self.root / "server.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the private RabbitMQ node exited:\n{output}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the private RabbitMQ node did not answer in {timeout:.0f} s")
            time.sleep(0.2)

    def start(self) -> None:
        with (self.root / "server.out").open("wb") as out:
            self._server = subprocess.Popen(
                [*self._env(), str(RABBITMQ_BIN / "rabbitmq-server")],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,  # so a stuck node can be killed as a group
            )
        self.wait_until_up()

    def stop(self) -> None:
        if self._server is not None and self._server.poll() is None:
            with contextlib.suppress(subprocess.SubprocessError):
                self.ctl("stop")
            try:
                self._server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._server.pid, signal.SIGKILL)
                self._server.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def private_rabbitmq() -> Iterator[PrivateRabbitMQ]:
    """A started private node, stopped and removed on the way out."""
    node = PrivateRabbitMQ()
    try:
        node.start()
        yield node
    finally:
        node.stop()
