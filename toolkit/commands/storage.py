"""``toolkit storage sweep``: remove staged or orphaned objects older than a grace period."""

from __future__ import annotations

import argparse

from toolkit.commands.base import Subcommands, add_command, add_group
from toolkit.config import settings_from_options
from toolkit.db.database import Database
from toolkit.storage.backends import open_storage
from toolkit.storage.filestore import DEFAULT_GRACE_SECONDS, FileStore


def sweep_command(args: argparse.Namespace) -> int:
    """Run one sweep against the configured database and storage; prints what it did.

    One tenant's area and rows at a time: the default tenant's, or with
    ``--tenant`` that tenant's (in a transaction of that tenant, so as a
    login role in toolkit_app).
    """
    settings = settings_from_options(
        args, {"database_url": "database_url", "storage_url": "storage_url"}
    )
    with open_storage(settings.storage_url) as storage, Database(settings) as database:
        store = FileStore(storage, tenant=args.tenant)
        with database.connection(tenant=store.tenant) as conn:
            report = store.sweep(conn, grace_seconds=args.grace_seconds)
    print(f"sweep: {report.summary()}")
    return 0


def register(commands: Subcommands) -> None:
    """Add ``storage sweep``."""
    actions = add_group(commands, "storage", "file storage maintenance")
    sweep = add_command(
        actions,
        "sweep",
        "remove staged or orphaned objects older than a grace period; finish promotions",
        sweep_command,
    )
    sweep.add_argument("--storage-url", help="override TOOLKIT_STORAGE_URL for this run")
    sweep.add_argument(
        "--grace-seconds",
        type=float,
        default=DEFAULT_GRACE_SECONDS,
        help="only touch objects older than this many seconds",
    )
    sweep.add_argument(
        "--tenant",
        help="sweep this tenant's files (its UUID; connect as a login role in toolkit_app) "
        "instead of the default tenant's",
    )
