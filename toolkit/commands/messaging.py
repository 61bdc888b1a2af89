"""``toolkit relay`` and ``toolkit worker``: the outbox relay and the queue worker.

Both read the ``TOOLKIT_*`` settings (``amqp_url``, one URL or a cluster's
nodes comma-separated; ``queue_prefix``; ``amqp_quorum_replicas``;
``database_url``), declare the topology, and run until SIGTERM or SIGINT,
then stop gracefully. Exit code 0 after a clean stop.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import signal
import socket
import threading
from datetime import timedelta
from types import FrameType

from toolkit.aio.db.database import AsyncDatabase
from toolkit.aio.workflows import service as async_service
from toolkit.commands.base import Subcommands, add_command
from toolkit.config import settings_from_options
from toolkit.db.database import Database
from toolkit.errors import TenantRequired
from toolkit.messaging.consumer import AsyncHandler, Handler, Periodic, Worker, run_worker
from toolkit.messaging.relay import Relay
from toolkit.messaging.topology import WORK_QUEUES, Topology
from toolkit.workflows.handlers import default_handlers, echo_work, load_callable
from toolkit.workflows.service import sweep_expired

log = logging.getLogger(__name__)


def add_relay_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``toolkit relay``."""
    parser.add_argument("--batch-size", type=int, default=500, help="rows per claim")
    parser.add_argument(
        "--poll-interval", type=float, default=1.0, help="seconds between polls without NOTIFY"
    )
    parser.add_argument("--no-listen", action="store_true", help="poll only, no LISTEN/NOTIFY")
    parser.add_argument(
        "--retention-days", type=float, default=7.0, help="prune sent rows after this many days"
    )
    parser.add_argument("--once", action="store_true", help="publish what is due now, then exit")


def relay_command(args: argparse.Namespace) -> int:
    """Run the outbox relay until SIGTERM/SIGINT (or, with ``--once``, until drained)."""
    settings = settings_from_options(args)
    topology = Topology(prefix=settings.queue_prefix, replicas=settings.amqp_quorum_replicas)
    with Database(settings) as db:
        relay = Relay(
            db,
            settings.amqp_url,
            topology,
            batch_size=args.batch_size,
            poll_interval=args.poll_interval,
            listen=not args.no_listen,
            retention=timedelta(days=args.retention_days),
        )
        with relay:
            if args.once:
                count = relay.drain()
                print(f"relay: published {count} message(s)")
                return 0
            stop = threading.Event()

            def on_signal(signum: int, _frame: FrameType | None) -> None:
                log.info("relay: signal %s, stopping after the current batch", signum)
                stop.set()

            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
            relay.run(stop)
            print(
                f"relay: stopped after publishing {relay.stats.published} message(s) "
                f"({relay.stats.broker_outages} broker outage(s))"
            )
    return 0


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``toolkit worker``."""
    parser.add_argument(
        "--queue",
        dest="queues",
        action="append",
        choices=WORK_QUEUES,
        help="a queue to consume (repeatable; default: all)",
    )
    parser.add_argument("--prefetch", type=int, default=10, help="unacked messages per queue")
    parser.add_argument("--concurrency", type=int, default=4, help="handler threads")
    parser.add_argument(
        "--lease-seconds", type=float, default=60.0, help="execution lease, renewed every third"
    )
    parser.add_argument(
        "--sweep-interval",
        type=float,
        default=30.0,
        help="seconds between sweeps for executions whose lease expired (0: never)",
    )
    parser.add_argument(
        "--grace-period", type=float, default=30.0, help="seconds to finish work on SIGTERM"
    )
    parser.add_argument(
        "--work",
        help="the workflow work function, as module:function (a coroutine function runs "
        "on the worker's event loop with an AsyncDatabase; default: echo the input back)",
    )
    # dest "handlers": "handler" is the subcommand's function in the namespace.
    parser.add_argument(
        "--handler",
        dest="handlers",
        action="append",
        default=[],
        metavar="QUEUE=MODULE:FUNCTION",
        help="replace a queue's handler (repeatable; default: the built-in handlers)",
    )


_OPERATOR = (
    "a login role row-level security does not bind (BYPASSRLS, like the relay's) and that "
    "is a member of toolkit_app"
)

_SWEEP_ADVICE = (
    "sweeping requeues every tenant's executions, which the policies keep from this "
    f"role; run toolkit.workflows.service.sweep_expired(db) as {_OPERATOR}, or "
    "sweep_expired(db, tenant=...) per tenant; this worker stops trying and keeps working"
)


def maintenance_jobs(db: Database, *, sweep_interval: float) -> list[Periodic]:
    """A worker's periodic jobs: the lease sweeper, unless ``sweep_interval`` is 0.

    It works on every tenant's rows at once, which only a role the policies
    do not bind may do. As a role they bind (a toolkit_app login), it logs
    once what to run instead and ends; the worker goes on handling messages.
    The inbox is forgotten by ``toolkit maintain`` (a partition drop), not here.
    """
    if sweep_interval <= 0:
        return []
    return [
        Periodic(
            "lease sweeper",
            sweep_interval,
            lambda: sweep_expired(db),
            give_up_on=(TenantRequired,),
            advice=_SWEEP_ADVICE,
        )
    ]


def worker_command(args: argparse.Namespace) -> int:
    """Run a worker until SIGTERM/SIGINT, with the lease sweeper alongside."""
    settings = settings_from_options(args)
    topology = Topology(prefix=settings.queue_prefix, replicas=settings.amqp_quorum_replicas)
    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    with Database(settings) as db:
        work = load_callable(args.work) if args.work else None
        async_db = AsyncDatabase(settings) if inspect.iscoroutinefunction(work) else None
        handlers: dict[str, Handler | AsyncHandler] = {
            **default_handlers(
                db,
                worker_id=worker_id,
                work=echo_work if work is None or async_db is not None else work,
                lease_seconds=args.lease_seconds,
            )
        }
        if work is not None and async_db is not None:
            # Its pool opens on the worker's event loop and is closed there (async_cleanup).
            handlers["workflow.execute"] = async_service.workflow_handler(
                async_db, work, worker_id=worker_id, lease_seconds=args.lease_seconds
            )
        for spec in args.handlers:
            queue, _, target = spec.partition("=")
            topology.check(queue)
            handlers[queue] = load_callable(target)
        queues = args.queues or list(WORK_QUEUES)
        worker = Worker(
            settings.amqp_url,
            topology,
            {queue: handlers[queue] for queue in queues},
            prefetch=args.prefetch,
            concurrency=args.concurrency,
            grace_period=args.grace_period,
            async_cleanup=async_db.close if async_db is not None else None,
        )
        run_worker(worker, periodic=maintenance_jobs(db, sweep_interval=args.sweep_interval))
        print(
            f"worker {worker_id}: stopped after {worker.stats.handled} message(s), "
            f"{worker.stats.retried} retried, {worker.stats.parked} parked"
        )
    return 0


def register(commands: Subcommands) -> None:
    """Add ``relay`` and ``worker``."""
    add_relay_arguments(
        add_command(
            commands,
            "relay",
            "publish committed outbox messages to RabbitMQ until SIGTERM",
            relay_command,
        )
    )
    add_worker_arguments(
        add_command(
            commands,
            "worker",
            "consume workflow.execute, notification.send and audit.log until SIGTERM",
            worker_command,
        )
    )
