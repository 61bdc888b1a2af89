"""``toolkit demo``: migrate, walk one story through the toolkit, then two workspaces."""

from __future__ import annotations

import argparse

from toolkit import DISTRIBUTION
from toolkit.commands.base import Subcommands, add_command
from toolkit.config import settings_from_options


def demo_command(args: argparse.Namespace) -> int:
    """Run the demo on the configured (or, ``--embedded``, an embedded) PostgreSQL."""
    from toolkit.workflows.demo import run_demo

    return run_demo(settings_from_options(args), embedded=args.embedded)


def register(commands: Subcommands) -> None:
    """Add ``demo``."""
    demo = add_command(
        commands,
        "demo",
        "migrate, walk one story through the toolkit, then two workspaces side by side",
        demo_command,
    )
    demo.add_argument(
        "--embedded",
        action="store_true",
        help=f"run on an embedded PostgreSQL (needs pgserver, the embedded extra of "
        f"{DISTRIBUTION}: pip install pgserver, or pip install '.[embedded]' in a checkout)",
    )
