"""``toolkit storage sweep``: remove staged or orphaned objects older than a grace period.

Wired into the ``toolkit`` command by :func:`add_storage_commands`.
"""

from __future__ import annotations

import argparse
from typing import Any

from toolkit.config import settings_from_options
from toolkit.db.database import Database
from toolkit.storage.backends import open_storage
from toolkit.storage.filestore import DEFAULT_GRACE_SECONDS, FileStore


def sweep_command(args: argparse.Namespace) -> int:
    """Run one sweep against the configured database and storage; prints what it did."""
    settings = settings_from_options(
        args, {"database_url": "database_url", "storage_url": "storage_url"}
    )
    with open_storage(settings.storage_url) as storage, Database(settings) as database:
        store = FileStore(storage)
        with database.connection() as conn:
            report = store.sweep(conn, grace_seconds=args.grace_seconds)
    print(f"sweep: {report.summary()}")
    return 0


def add_storage_commands(commands: Any) -> argparse.ArgumentParser:
    """Add ``storage sweep`` to the ``toolkit`` command's subparsers; returns the parser."""
    storage = commands.add_parser(
        "storage", help="file storage maintenance", description="file storage maintenance"
    )
    actions = storage.add_subparsers(dest="storage_command", required=True, metavar="ACTION")
    text = "remove staged or orphaned objects older than a grace period; finish promotions"
    sweep = actions.add_parser("sweep", help=text, description=text)
    sweep.add_argument("--database-url", help="override TOOLKIT_DATABASE_URL for this run")
    sweep.add_argument("--storage-url", help="override TOOLKIT_STORAGE_URL for this run")
    sweep.add_argument(
        "--grace-seconds",
        type=float,
        default=DEFAULT_GRACE_SECONDS,
        help="only touch objects older than this many seconds",
    )
    sweep.set_defaults(handler=sweep_command)
    parser: argparse.ArgumentParser = storage
    return parser
