"""The one way a ``toolkit`` command is added: :func:`add_command`, or :func:`add_group`
for a command with actions (``toolkit storage sweep``); and the parser they are added to.

Every command and action gets the ``--database-url`` override and its handler
(``args.handler``): a function of the parsed arguments that returns the exit code.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeAlias


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


Subcommands: TypeAlias = "argparse._SubParsersAction[ArgumentParser]"
"""The subparsers a command group registers into (``parser.add_subparsers()``)."""

Handler: TypeAlias = Callable[[argparse.Namespace], int]
"""Runs a command on its parsed arguments; returns the exit code."""


def add_command(commands: Subcommands, name: str, text: str, handler: Handler) -> ArgumentParser:
    """Add the command (or a group's action) ``name``, running ``handler``; returns its parser."""
    sub = commands.add_parser(name, help=text, description=text)
    sub.add_argument("--database-url", help="override TOOLKIT_DATABASE_URL for this run")
    sub.set_defaults(handler=handler)
    return sub


def add_group(
    commands: Subcommands, name: str, text: str, *, description: str | None = None
) -> Subcommands:
    """Add the command ``name`` whose actions are its own commands; returns their subparsers.

    The chosen action's name is ``args.<name>_command``.
    """
    group = commands.add_parser(name, help=text, description=description or text)
    return group.add_subparsers(dest=f"{name}_command", required=True, metavar="ACTION")
