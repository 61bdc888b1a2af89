"""Private PostgreSQL clusters and RabbitMQ nodes that a test may restart.

The machine's shared servers serve everyone's tests, so a scenario that
restarts a server starts one of its own on free loopback ports, under a
temporary directory, and always stops and removes it afterwards.
"""

from __future__ import annotations

import contextlib
import json
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
import redis
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


class PrivateStandby(PrivatePostgres):
    """A streaming hot standby of a private primary, on a free port of its own.

    Made by ``pg_basebackup -R -X stream --checkpoint=fast`` from the primary
    (initdb's pg_hba trusts replication from 127.0.0.1), so it follows the
    primary from the moment it starts and serves reads meanwhile.
    """

    def __init__(self, primary: PrivatePostgres) -> None:
        super().__init__()
        self.primary = primary

    def start(self) -> None:
        self._run(
            str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.primary.port),
            "-U", "postgres", "-D", str(self.data), "-R", "-X", "stream", "--no-sync",
            "--checkpoint=fast",  # a spread checkpoint would take minutes
            timeout=180,
        )  # fmt: skip
        self._pg_ctl("start")

    def kill(self) -> None:
        """Stop at once, as a crash does (``pg_ctl stop -m immediate``): clients are cut."""
        self._pg_ctl("stop", "-m", "immediate")

    def start_again(self) -> None:
        """Start the killed standby; returns once it accepts connections (hot standby)."""
        self._pg_ctl("start")


class PrivateRabbitMQ:
    """A throwaway RabbitMQ node (no plugins) on free ports, guest/guest from loopback.

    Nodes meant to form a cluster share ``cookie`` (the Erlang cookie the
    nodes and ``rabbitmqctl`` authenticate each other with)."""

    def __init__(self, cookie: str | None = None) -> None:
        self.root = _owned_tempdir("toolkit-rmq-", "rabbitmq")
        self.root.chmod(0o755)
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"toolkit{secrets.token_hex(4)}@localhost"
        self.home = self.root / "home"
        self.home.mkdir()
        cookie_file = self.home / ".erlang.cookie"
        cookie_file.write_text(cookie or secrets.token_hex(16))
        cookie_file.chmod(0o400)
        (self.root / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        (self.root / "rabbitmq-env.conf").write_text("")
        (self.root / "enabled_plugins").write_text("[].\n")
        for path in (self.root, cookie_file, *self.root.iterdir()):
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

    def ctl(self, *args: str, tool: str = "rabbitmqctl", timeout: float = 60) -> str:
        """Run ``tool -n <this node> args`` (``rabbitmqctl``, ``rabbitmq-queues``);
        its output. CalledProcessError (with the tool's output) when it fails."""
        done = subprocess.run(
            [*self._env(), str(RABBITMQ_BIN / tool), "-n", self.node, *args],
            check=True,
            capture_output=True,
            timeout=timeout,
            cwd=self.root,
            text=True,
        )
        return done.stdout

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
        self.launch()
        self.wait_until_up()

    def launch(self) -> None:
        """Start the node's server without waiting for it (see :meth:`wait_until_up`)."""
        with (self.root / "server.out").open("wb") as out:
            self._server = subprocess.Popen(
                [*self._env(), str(RABBITMQ_BIN / "rabbitmq-server")],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,  # so a stuck node can be killed as a group
            )

    @property
    def running(self) -> bool:
        """Whether the node's server process is alive."""
        return self._server is not None and self._server.poll() is None

    def kill(self) -> None:
        """Kill the node at once (SIGKILL to its process group): a crash, no goodbye to
        its clients or its cluster."""
        if self.running:
            assert self._server is not None
            os.killpg(self._server.pid, signal.SIGKILL)
            self._server.wait(timeout=30)

    def rss_bytes(self) -> int:
        """Resident memory of the node's processes (the Erlang VM and its helpers)."""
        if not self.running:
            return 0
        assert self._server is not None
        total = 0
        for status in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = status.read_text().rsplit(")", 1)[1].split()
                # After "(command)": state, ppid, pgrp, session (index 3) ... rss (21, pages).
                if int(fields[3]) == self._server.pid:
                    total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        return total

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


class PrivateRabbitMQCluster:
    """``size`` private RabbitMQ nodes (see :class:`PrivateRabbitMQ`) joined into one
    cluster: the first node is started, the others join it with ``rabbitmqctl
    stop_app / join_cluster / start_app``. Each has its own node name, AMQP and
    distribution ports and data folder; they share one Erlang cookie.

    Every wait is bounded (``node_timeout`` seconds per step) and fails naming the
    node and the step: an Erlang node takes 5 to 15 s to start on a loaded machine.
    """

    def __init__(self, size: int = 3, node_timeout: float = 90.0) -> None:
        cookie = secrets.token_hex(16)
        self.nodes = [PrivateRabbitMQ(cookie=cookie) for _ in range(size)]
        self.node_timeout = node_timeout
        self.started_in: float | None = None
        """Seconds from launching the nodes to the formed cluster."""

    @property
    def urls(self) -> list[str]:
        """Every node's AMQP URL, in node order."""
        return [node.url for node in self.nodes]

    def node(self, name: str) -> PrivateRabbitMQ:
        """The node named ``name`` (``toolkit...@localhost``)."""
        for node in self.nodes:
            if node.node == name:
                return node
        raise KeyError(f"{name} is no node of this private cluster")

    def live(self) -> PrivateRabbitMQ:
        """A node whose server runs (to ask the cluster about itself)."""
        for node in self.nodes:
            if node.running:
                return node
        raise RuntimeError("no node of the private RabbitMQ cluster is running")

    def _step(self, node: PrivateRabbitMQ, what: str, *args: str) -> None:
        try:
            node.ctl(*args, timeout=self.node_timeout)
        except subprocess.SubprocessError as exc:
            output = getattr(exc, "stderr", "") or getattr(exc, "output", "") or ""
            raise RuntimeError(
                f"private RabbitMQ cluster: {what} on {node.node} failed: {exc}\n{output[-2000:]}"
            ) from exc

    def start(self) -> None:
        """Start every node (in parallel), join them to the first, and wait until the
        first node reports all of them running."""
        began = time.monotonic()
        for node in self.nodes:
            node.launch()
        for node in self.nodes:
            node.wait_until_up(self.node_timeout)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self._step(node, "stop_app", "stop_app")
            self._step(node, f"join_cluster {first.node}", "join_cluster", first.node)
            self._step(node, "start_app", "start_app")
            node.wait_until_up(self.node_timeout)
        deadline = time.monotonic() + self.node_timeout
        while set(self.running_nodes()) != {node.node for node in self.nodes}:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"private RabbitMQ cluster: {first.node} sees {self.running_nodes()} "
                    f"running, not all {len(self.nodes)} nodes, after {self.node_timeout:.0f} s"
                )
            time.sleep(0.5)
        self.started_in = time.monotonic() - began

    def running_nodes(self) -> list[str]:
        """The nodes a live node reports running (``cluster_status``)."""
        status = json.loads(self.live().ctl("cluster_status", "--formatter", "json"))
        return [str(name) for name in status.get("running_nodes", [])]

    def queue_replicas(self, queue: str) -> tuple[str, list[str], list[str]]:
        """(leader, members, online members) of quorum queue ``queue``, as a live node
        sees them."""
        rows = json.loads(
            self.live().ctl(
                "list_queues", "name", "leader", "members", "online", "--formatter", "json"
            )
        )
        for row in rows:
            if row.get("name") == queue:
                return (
                    str(row.get("leader", "")),
                    [str(m) for m in row.get("members") or []],
                    [str(m) for m in row.get("online") or []],
                )
        raise RuntimeError(f"private RabbitMQ cluster: no queue named {queue!r}")

    def rss_bytes(self) -> int:
        """Resident memory of every running node."""
        return sum(node.rss_bytes() for node in self.nodes)

    def stop(self) -> None:
        """Stop every node (a killed one is already gone) and remove its folder."""
        for node in self.nodes:
            node.stop()


@contextlib.contextmanager
def private_rabbitmq_cluster(size: int = 3) -> Iterator[PrivateRabbitMQCluster]:
    """A started private RabbitMQ cluster, every node stopped and removed on the way out."""
    cluster = PrivateRabbitMQCluster(size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def redis_cluster_available() -> bool:
    """Whether a private Redis Cluster can be started here (the server and the cli)."""
    return Path(REDIS_SERVER).exists() and Path(REDIS_CLI).exists()


class PrivateRedisCluster:
    """Six ``redis-server --cluster-enabled yes`` nodes on free loopback ports, three
    masters with one replica each, under a temporary directory. No persistence:
    a node that dies comes back empty, which is what a cache expects.

    ``node_timeout_ms`` is the cluster's failure-detection time (``cluster-node-timeout``):
    a master stays failed for about that long before its replica is promoted.
    """

    def __init__(self, size: int = 6, node_timeout_ms: int = 1000) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="toolkit-redis-cluster-"))
        self.node_timeout_ms = node_timeout_ms
        self.ports: list[int] = []
        while len(self.ports) < size:
            port = free_port()
            # The cluster bus listens on port + 10000: both must be free.
            if port not in self.ports and port + 10000 < 65536 and _port_free(port + 10000):
                self.ports.append(port)
        self._servers: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """The toolkit's cluster URL naming every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports) + "/0"

    def cli(self, port: int, *args: str, timeout: float = 10) -> str:
        """``redis-cli -p port args`` and its output."""
        done = subprocess.run(
            [REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True,
            timeout=timeout,
            check=False,
            text=True,
        )
        return done.stdout

    def _start_node(self, port: int) -> None:
        folder = self.root / str(port)
        folder.mkdir(exist_ok=True)
        with (folder / "server.out").open("ab") as out:
            self._servers[port] = subprocess.Popen(
                [
                    REDIS_SERVER,
                    "--port", str(port),
                    "--bind", "127.0.0.1",
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(folder / "nodes.conf"),
                    "--cluster-node-timeout", str(self.node_timeout_ms),
                    "--dir", str(folder),
                    "--save", "",
                    "--appendonly", "no",
                    "--daemonize", "no",
                    "--enable-debug-command", "local",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=folder,
            )  # fmt: skip

    def _wait(self, what: str, test: object, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not test():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise RuntimeError(f"the private Redis Cluster: {what} not reached in {timeout} s")
            time.sleep(0.1)

    def start(self) -> None:
        for port in self.ports:
            self._start_node(port)
        for port in self.ports:
            self._wait(f"node {port} up", lambda p=port: "PONG" in self.cli(p, "PING"), 20)
        created = subprocess.run(
            [
                REDIS_CLI,
                "--cluster", "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas", "1",
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=60,
            check=False,
            text=True,
        )  # fmt: skip
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout[-2000:]}")
        self.wait_ok()

    def cluster_ok(self, port: int) -> bool:
        """Whether ``port`` reports cluster_state:ok."""
        return "cluster_state:ok" in self.cli(port, "CLUSTER", "INFO")

    def wait_ok(self, timeout: float = 30) -> None:
        """Wait until every live node reports cluster_state:ok and knows every live master."""

        def settled() -> bool:
            live = [p for p in self.ports if self.alive(p)]
            return all(self.cluster_ok(p) for p in live)

        self._wait("cluster_state:ok", settled, timeout)

    def alive(self, port: int) -> bool:
        server = self._servers.get(port)
        return server is not None and server.poll() is None

    def master_of(self, slot: int) -> int:
        """The port of the master serving ``slot`` now, as the first live node sees it."""
        for port in self.ports:
            if not self.alive(port):
                continue
            with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2) as node:
                for start, end, master, *_ in node.execute_command("CLUSTER SLOTS"):
                    if int(start) <= slot <= int(end):
                        return int(master[1])
            raise RuntimeError(f"slot {slot} has no owner in CLUSTER SLOTS")
        raise RuntimeError("no live node in the private Redis Cluster")

    def kill(self, port: int) -> None:
        """Kill one node at once (SIGKILL): its clients see refused connections."""
        server = self._servers[port]
        server.kill()
        server.wait(timeout=10)

    def stop(self) -> None:
        for server in self._servers.values():
            if server.poll() is None:
                server.kill()
        for server in self._servers.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def private_redis_cluster(node_timeout_ms: int = 1000) -> Iterator[PrivateRedisCluster]:
    """A started private Redis Cluster, killed and removed on the way out."""
    cluster = PrivateRedisCluster(node_timeout_ms=node_timeout_ms)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def pgbouncer_available() -> bool:
    """Whether a private PgBouncer can be started here (root, the postgres user, the binary)."""
    return os.geteuid() == 0 and _system_user("postgres") and Path(PGBOUNCER).exists()


class PrivatePgBouncer:
    """A throwaway PgBouncer in transaction mode on a free loopback port, in front of
    ``server_host:server_port``; trust auth, every role known to the server accepted
    (looked up through ``auth_query`` as ``postgres``). Runs as the postgres user:
    PgBouncer refuses to run as root."""

    def __init__(
        self, server_host: str = "127.0.0.1", server_port: int = 5432, pool_size: int = 20
    ) -> None:
        self.root = _owned_tempdir("toolkit-pgbouncer-", "postgres")
        self.port = free_port()
        self.log = self.root / "pgbouncer.log"
        self.pidfile = self.root / "pgbouncer.pid"
        (self.root / "userlist.txt").write_text('"postgres" ""\n')
        (self.root / "pgbouncer.ini").write_text(
            f"""[databases]
* = host={server_host} port={server_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir = {self.root}
pool_mode = transaction
auth_type = trust
auth_file = {self.root / "userlist.txt"}
auth_user = postgres
max_client_conn = 2000
default_pool_size = {pool_size}
server_lifetime = 3600
server_idle_timeout = 60
logfile = {self.log}
pidfile = {self.pidfile}
"""
        )
        for name in ("userlist.txt", "pgbouncer.ini"):
            shutil.chown(self.root / name, "postgres", "postgres")
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, dbname: str, user: str = "postgres") -> str:
        return make_conninfo(host="127.0.0.1", port=self.port, user=user, dbname=dbname)

    def start(self, timeout: float = 15.0) -> None:
        """Start it in the foreground (a child of this process); return once it listens."""
        self._process = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", PGBOUNCER, str(self.root / "pgbouncer.ini")],
            cwd=self.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while _port_free(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                log = self.log.read_text() if self.log.exists() else ""
                self.stop()
                raise RuntimeError(f"pgbouncer did not start:\n{log[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the PgBouncer this object started (by its own pid file) and remove its folder."""
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(self.pidfile.read_text().strip()), signal.SIGTERM)
        if self._process is not None:
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def private_pgbouncer(
    server_host: str = "127.0.0.1", server_port: int = 5432, pool_size: int = 20
) -> Iterator[PrivatePgBouncer]:
    """A started private PgBouncer (transaction mode), stopped and removed on the way out."""
    bouncer = PrivatePgBouncer(server_host, server_port, pool_size)
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.stop()
