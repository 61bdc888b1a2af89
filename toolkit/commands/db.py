"""``toolkit migrate``, ``rollback``, ``maintain``, ``queries`` and ``verify``: the schema,
its partitions and the queries."""

from __future__ import annotations

import argparse
import itertools
import sys
from typing import TYPE_CHECKING

import psycopg

from toolkit.commands.base import Subcommands, add_command
from toolkit.config import settings_from_options
from toolkit.errors import InvalidInput

if TYPE_CHECKING:
    from toolkit.db.registry import NamedQuery


def _migration_url(args: argparse.Namespace) -> str:
    return str(args.database_url or settings_from_options(args).effective_migration_url)


def migrate_command(args: argparse.Namespace) -> int:
    """Create the database if missing and apply pending migrations (or, ``--status``, list them)."""
    from toolkit.db.migrations import migrate, status

    if args.status:
        states = status(_migration_url(args))
        for state in states:
            print(f"{'applied' if state.applied else 'pending'}  {state.origin:<7}  {state.id}")
        pending = sum(not state.applied for state in states)
        print(f"{len(states) - pending} applied, {pending} pending")
        return 0
    # Each line as it happens (flushed: stdout may be a pipe), not when the batch ends.
    result = migrate(
        _migration_url(args),
        on_created=lambda: print("created the database", flush=True),
        on_applied=lambda migration_id: print(f"applied {migration_id}", flush=True),
    )
    if not result.applied:
        print("nothing to apply: the schema is up to date")
    return 0


def rollback_command(args: argparse.Namespace) -> int:
    """Revert the newest applied migration(s)."""
    from toolkit.db.migrations import rollback

    result = rollback(_migration_url(args), None if args.all else args.count)
    for migration_id in result.rolled_back:
        print(f"rolled back {migration_id}")
    if not result.rolled_back:
        print("nothing to roll back")
    return 0


def maintain_command(args: argparse.Namespace) -> int:
    """Create the coming partitions and drop the expired ones (as the migration role)."""
    from toolkit.db.partitions import maintain

    report = maintain(_migration_url(args))
    for name in report.created:
        print(f"created {name}")
    for parent, rows in report.carried.items():
        print(f"carried {rows} row(s) of {parent} forward, out of its expired partitions")
    for name in report.dropped:
        print(f"dropped {name}")
    for name in report.kept:
        print(f"kept {name}: expired, but it holds rows still to keep (see its policy)")
    for name in report.awaiting_drop:
        print(f"detached {name}: dropped by the next run (a lock was not free)")
    print(f"maintain: {report.summary()}")
    return 0


def queries_command(args: argparse.Namespace) -> int:
    """List the named queries, or show one's SQL."""
    from toolkit.db.bind import registry

    queries = registry()
    if args.action == "show":
        if not args.name:
            raise InvalidInput(
                "queries show needs a query name, e.g. 'toolkit queries show agents.get'",
                field="name",
            )
        query = queries[args.name]
        print(f"-- {query.location}\n-- name: {query.name} :{query.kind.value}\n-- {query.doc}")
        print(query.source)
        _print_variants(query)
        return 0
    width = max(len(q.name) for q in queries)
    for query in queries:
        print(f"{query.name:<{width}}  {query.origin:<7}  :{query.kind.value:<9}  {query.doc}")
    return 0


def _print_variants(query: NamedQuery) -> None:
    """The statements a sortable query runs as, one per combination of the filters and
    cursor a call gives (see :meth:`~toolkit.db.registry.NamedQuery.variant`)."""
    from toolkit.db.registry import CURSOR_PARAMS

    keys = query.variant_keys
    if not keys:
        return
    combinations = [
        combination
        for size in range(len(keys) + 1)
        for combination in itertools.combinations(keys, size)
    ]
    print(
        f"\n-- Sent as one of {len(combinations)} variants, by the filters a call gives "
        "(each can be prepared on its own; {order} as above, {keyset} without its NULL guard):"
    )
    for combination in combinations:
        filters = [name for name in combination if name != CURSOR_PARAMS[1]]
        given = ", ".join(filters) if filters else "no filter"
        page = "after a cursor" if CURSOR_PARAMS[1] in combination else "first page"
        print(f"\n-- variant: {given}; {page}")
        print(query.variant(combination))


def verify_command(args: argparse.Namespace) -> int:
    """Check every query against the schema and its record: 1 with the problems printed."""
    from toolkit.catalog import load_bindings
    from toolkit.db.database import connect
    from toolkit.db.errors import raise_translated
    from toolkit.db.verify import verify

    settings = settings_from_options(args)
    bindings = load_bindings(settings)
    conn = connect(
        settings.database_url, connect_timeout=settings.connect_timeout, context="connecting"
    )
    try:
        with conn:
            problems = verify(conn, bindings)
    except psycopg.Error as exc:
        raise_translated(exc, "verify")
    for problem in problems:
        print(problem)
    if problems:
        print(f"verify: {len(problems)} problem(s) in {len(bindings)} queries", file=sys.stderr)
        return 1
    print(f"verify: {len(bindings)} queries agree with the schema and their records")
    return 0


def register(commands: Subcommands) -> None:
    """Add ``migrate``, ``rollback``, ``maintain``, ``queries`` and ``verify``."""
    migrate = add_command(
        commands,
        "migrate",
        "create the database if missing and apply pending migrations",
        migrate_command,
    )
    migrate.add_argument(
        "--status", action="store_true", help="list applied and pending migrations, change nothing"
    )
    rollback = add_command(
        commands, "rollback", "revert the newest applied migration(s)", rollback_command
    )
    how_many = rollback.add_mutually_exclusive_group()
    how_many.add_argument("--count", type=int, default=1, help="revert the newest N migrations")
    how_many.add_argument("--all", action="store_true", help="revert every applied migration")
    add_command(
        commands,
        "maintain",
        "create the coming time partitions and drop the expired ones (idempotent)",
        maintain_command,
    )
    queries = add_command(
        commands, "queries", "list the named queries, or show one's SQL", queries_command
    )
    queries.add_argument(
        "action", nargs="?", choices=["list", "show"], default="list", help="what to do"
    )
    queries.add_argument(
        "name", nargs="?", help="the query to show, e.g. agents.get (needed by show)"
    )
    add_command(
        commands,
        "verify",
        "check every query against the schema and its record",
        verify_command,
    )
