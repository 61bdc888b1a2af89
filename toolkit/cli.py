"""The ``toolkit`` console script (also ``python -m toolkit``).

Commands: ``migrate``, ``rollback``, ``queries`` (``queries show NAME``),
``verify``, ``demo``, ``relay``, ``worker``, ``storage sweep`` and ``audit
anchor``/``audit verify``. Settings
come from the ``TOOLKIT_*`` environment; ``--database-url`` overrides the
database for one run. Errors are printed on one line, without a traceback.

Exit codes (:data:`EXIT_CODES`): 0 on success; 1 when the command ran and
failed (a service unreachable, a statement or migration the database refused,
a broken audit chain) or when ``verify`` or ``audit verify`` finds problems;
2 when it was called or configured wrongly: a bad option, a bad ``TOOLKIT_*``
setting (:class:`~toolkit.errors.ConfigurationError`), an argument the toolkit
rejected before running anything (:class:`~toolkit.errors.InvalidInput` not
translated from the database), or malformed SQL or migration files.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import psycopg

from toolkit import DISTRIBUTION, __version__
from toolkit.config import UnknownSettingWarning, settings_from_options
from toolkit.errors import ConfigurationError, InvalidInput, QueryDefinitionError, ToolkitError

FAILED = 1
"""The exit code of a command that ran and failed (or whose check found problems)."""
USAGE = 2
"""The exit code of a command called or configured wrongly (argparse uses it too)."""

EXIT_CODES = (
    "exit codes: 0 success; 1 the command ran and failed (a service unreachable, the database "
    "refused a statement or migration), or verify / audit verify found problems; 2 a usage or "
    "configuration error (a bad option or argument, a bad TOOLKIT_* setting, malformed SQL or "
    "migration files)"
)


def exit_code(error: ToolkitError) -> int:
    """``USAGE`` when ``error`` says the command was called or configured wrongly, else ``FAILED``.

    An InvalidInput translated from the database (it has a ``driver_error``)
    is about the data, not the arguments: a runtime failure.
    """
    if isinstance(error, (ConfigurationError, QueryDefinitionError)):
        return USAGE
    if isinstance(error, InvalidInput) and error.driver_error is None:
        return USAGE
    return FAILED


class HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default after its help, unless the help already says it.

    A default of None, False or an empty list means "not given": the help
    says in words what happens then.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        shows_default = (
            "default" not in text
            and default is not argparse.SUPPRESS
            and default not in (None, False, [])
            and (
                action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)
            )
        )
        return f"{text} (default: %(default)s)" if shows_default else text


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with the toolkit's help formatter, inherited by every subcommand."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def _migration_url(args: argparse.Namespace) -> str:
    return str(args.database_url or settings_from_options(args).effective_migration_url)


def _cmd_migrate(args: argparse.Namespace) -> int:
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


def _cmd_rollback(args: argparse.Namespace) -> int:
    from toolkit.db.migrations import rollback

    result = rollback(_migration_url(args), None if args.all else args.count)
    for migration_id in result.rolled_back:
        print(f"rolled back {migration_id}")
    if not result.rolled_back:
        print("nothing to roll back")
    return 0


def _cmd_queries(args: argparse.Namespace) -> int:
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
        return 0
    width = max(len(q.name) for q in queries)
    for query in queries:
        print(f"{query.name:<{width}}  {query.origin:<7}  :{query.kind.value:<9}  {query.doc}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
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


def _cmd_relay(args: argparse.Namespace) -> int:
    from toolkit.workflows.commands import relay_command

    return relay_command(args)


def _cmd_worker(args: argparse.Namespace) -> int:
    from toolkit.workflows.commands import worker_command

    return worker_command(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from toolkit.workflows.demo import run_demo

    return run_demo(settings_from_options(args), embedded=args.embedded)


def version_line() -> str:
    """What ``toolkit --version`` prints: the command, the version and the distribution."""
    return f"toolkit {__version__} ({DISTRIBUTION})"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``toolkit`` command."""
    parser = ArgumentParser(
        prog="toolkit",
        description="Migrate, inspect and run the agent persistence toolkit: PostgreSQL, "
        "Redis, RabbitMQ and file storage. Settings come from the TOOLKIT_* environment.",
        epilog=EXIT_CODES,
    )
    parser.add_argument(
        "--version", action="version", version=version_line(), help="print the version and exit"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], text: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--database-url", help="override TOOLKIT_DATABASE_URL for this run")
        sub.set_defaults(handler=handler)
        return sub

    migrate = command(
        "migrate", _cmd_migrate, "create the database if missing and apply pending migrations"
    )
    migrate.add_argument(
        "--status", action="store_true", help="list applied and pending migrations, change nothing"
    )
    rollback = command("rollback", _cmd_rollback, "revert the newest applied migration(s)")
    how_many = rollback.add_mutually_exclusive_group()
    how_many.add_argument("--count", type=int, default=1, help="revert the newest N migrations")
    how_many.add_argument("--all", action="store_true", help="revert every applied migration")
    queries = command("queries", _cmd_queries, "list the named queries, or show one's SQL")
    queries.add_argument(
        "action", nargs="?", choices=["list", "show"], default="list", help="what to do"
    )
    queries.add_argument(
        "name", nargs="?", help="the query to show, e.g. agents.get (needed by show)"
    )
    command("verify", _cmd_verify, "check every query against the schema and its record")
    demo = command("demo", _cmd_demo, "migrate and walk one story through the toolkit")
    demo.add_argument(
        "--embedded",
        action="store_true",
        help=f"run on an embedded PostgreSQL (needs pgserver, the embedded extra of "
        f"{DISTRIBUTION}: pip install pgserver, or pip install '.[embedded]' in a checkout)",
    )
    from toolkit.storage.cli import add_storage_commands
    from toolkit.workflows.commands import add_relay_arguments, add_worker_arguments

    add_relay_arguments(
        command("relay", _cmd_relay, "publish committed outbox messages to RabbitMQ until SIGTERM")
    )
    add_worker_arguments(
        command(
            "worker",
            _cmd_worker,
            "consume workflow.execute, notification.send and audit.log until SIGTERM",
        )
    )

    add_storage_commands(commands)
    from toolkit.audit_anchors import add_audit_commands

    add_audit_commands(commands)
    return parser


def _one_line_setting_warnings(shown_by_python: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` that puts an unknown-setting warning on one stderr line."""

    def show(  # noqa: PLR0917 - the signature of warnings.showwarning
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if issubclass(category, UnknownSettingWarning):
            print(f"toolkit: warning: {message}", file=sys.stderr)
        else:
            shown_by_python(message, category, filename, lineno, file, line)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``toolkit`` command; returns the exit code."""
    # Python's default filter shows each setting warning once; catch_warnings restores
    # showwarning, so a caller of main() (a test) keeps its own.
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_setting_warnings(warnings.showwarning)
        return _run(sys.argv[1:] if argv is None else list(argv))


def _run(arguments: list[str]) -> int:
    leading_options = itertools.takewhile(lambda argument: argument.startswith("-"), arguments)
    if "--version" in leading_options:
        # Answered before the parser is built, which reads the settings: a bad
        # setting must not hide which version is installed.
        print(version_line())
        return 0
    try:
        # Building the parser imports the modules that bind queries, which
        # reads the settings: a bad one is reported like any other error.
        parser = build_parser()
    except ToolkitError as exc:
        print(f"toolkit: {exc}", file=sys.stderr)
        return exit_code(exc)
    args = parser.parse_args(arguments)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.handler(args)
    except ToolkitError as exc:
        print(f"toolkit {args.command}: {exc}", file=sys.stderr)
        return exit_code(exc)
    return code


if __name__ == "__main__":
    sys.exit(main())
