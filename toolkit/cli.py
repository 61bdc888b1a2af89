"""The ``toolkit`` console script (also ``python -m toolkit``): the parser and :func:`main`.

Commands: ``migrate``, ``rollback``, ``queries`` (``queries show NAME``),
``verify``, ``demo``, ``relay``, ``worker``, ``storage sweep`` and ``audit
anchor``/``audit verify``, each defined in :mod:`toolkit.commands`. Settings
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
from typing import TextIO

from toolkit import DISTRIBUTION, __version__
from toolkit.config import UnknownSettingWarning
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


def version_line() -> str:
    """What ``toolkit --version`` prints: the command, the version and the distribution."""
    return f"toolkit {__version__} ({DISTRIBUTION})"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``toolkit`` command."""
    # Imported here, not at the top: importing the commands binds queries, which reads
    # the settings, and a bad setting is reported by main() on one line.
    from toolkit.commands import REGISTRATIONS
    from toolkit.commands.base import ArgumentParser

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
    for register in REGISTRATIONS:
        register(commands)
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
