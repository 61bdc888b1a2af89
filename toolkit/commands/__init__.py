"""Every ``toolkit`` command, one module per group, registered one way.

Each module's ``register(commands)`` adds its commands to the ``toolkit``
parser's subcommands with :func:`~toolkit.commands.base.add_command` (and
:func:`~toolkit.commands.base.add_group` for a command with actions), which
gives each the ``--database-url`` override and its handler: a function of
the parsed arguments returning the exit code. :data:`REGISTRATIONS` lists
them in the order ``toolkit --help`` shows them; :mod:`toolkit.cli` builds
the parser from it and runs the chosen handler.
"""

from __future__ import annotations

from collections.abc import Callable

from toolkit.commands import audit, db, demo, messaging, storage
from toolkit.commands.base import Subcommands

REGISTRATIONS: tuple[Callable[[Subcommands], None], ...] = (
    db.register,
    demo.register,
    messaging.register,
    storage.register,
    audit.register,
)
"""Each command group's ``register``, in the order of ``toolkit --help``."""

__all__ = ["REGISTRATIONS"]
