"""``toolkit audit anchor`` and ``toolkit audit verify``: the audit chain's tamper evidence.

What an anchor is and what verify checks: :mod:`toolkit.audit_anchors`.
Run ``anchor`` periodically and ``verify`` from a host the database owner does
not control. Each run is one tenant's chain: the default tenant's, or with
``--tenant`` that tenant's, read in a transaction of that tenant (so as a
login role in toolkit_app: the door refuses a superuser with a tenant).
"""

from __future__ import annotations

import argparse

import psycopg

from toolkit.audit_anchors import (
    DEFAULT_RETENTION_DAYS,
    anchor_store_url,
    verify,
    write_anchor,
)
from toolkit.commands.base import Subcommands, add_command, add_group
from toolkit.config import Settings, settings_from_options


def _settings(args: argparse.Namespace) -> Settings:
    return settings_from_options(
        args, {"database_url": "database_url", "anchor_url": "audit_anchor_url"}
    )


def _run(args: argparse.Namespace, action: str) -> int:
    from toolkit.db.database import connect, transaction_on
    from toolkit.db.errors import raise_translated
    from toolkit.storage.backends import open_storage

    settings = _settings(args)
    setting = "TOOLKIT_AUDIT_ANCHOR_URL" if settings.audit_anchor_url else "TOOLKIT_STORAGE_URL"
    with open_storage(anchor_store_url(settings), setting) as storage:
        conn = connect(
            settings.database_url, connect_timeout=settings.connect_timeout, context="connecting"
        )
        try:
            with conn, transaction_on(conn, tenant=args.tenant) as tx:
                if action == "anchor":
                    result = write_anchor(
                        tx,
                        storage,
                        retention_days=args.retention_days,
                        retention_mode=args.retention_mode,
                    )
                else:
                    report = verify(tx, storage, latest=args.latest)
        except psycopg.Error as exc:
            raise_translated(exc, f"audit {action}")
    if action == "anchor":
        if result is None:
            print("audit anchor: the audit chain is empty; nothing to anchor")
        else:
            written = result.anchor
            print(
                f"audit anchor: seq {written.sequence} hash {written.hash} written to "
                f"{written.key} ({result.protection})"
            )
        return 0
    for finding in report.findings:
        print(finding)
    print(f"audit verify: {report.summary()}")
    return 0 if report.ok else 1


def anchor_command(args: argparse.Namespace) -> int:
    """``toolkit audit anchor``: write one anchor now; prints where."""
    return _run(args, "anchor")


def verify_command(args: argparse.Namespace) -> int:
    """``toolkit audit verify``: 0 when intact, 1 with the findings printed."""
    return _run(args, "verify")


def register(commands: Subcommands) -> None:
    """Add ``audit anchor`` and ``audit verify``."""
    actions = add_group(
        commands,
        "audit",
        "tamper evidence for the audit chain",
        description="anchor the audit chain outside the database, and verify it against anchors",
    )
    texts = {
        "anchor": "write the chain head to the anchor store now (create-only; S3 Object Lock)",
        "verify": "recompute the chain in Python and check it against the anchors; exit 1 if not",
    }
    for name, handler in (("anchor", anchor_command), ("verify", verify_command)):
        sub = add_command(actions, name, texts[name], handler)
        sub.add_argument(
            "--anchor-url", help="override TOOLKIT_AUDIT_ANCHOR_URL (the anchor store) for this run"
        )
        sub.add_argument(
            "--tenant",
            metavar="UUID",
            help="this tenant's chain and anchors instead of the default tenant's; connect as a "
            "login role in toolkit_app (a superuser, BYPASSRLS role or table owner is refused)",
        )
        if name == "anchor":
            sub.add_argument(
                "--retention-days",
                type=int,
                default=DEFAULT_RETENTION_DAYS,
                help="S3 Object Lock retention when the bucket has Object Lock",
            )
            sub.add_argument(
                "--retention-mode",
                choices=["COMPLIANCE", "GOVERNANCE"],
                default="COMPLIANCE",
                help="S3 Object Lock mode (GOVERNANCE can be lifted by a privileged user)",
            )
        else:
            sub.add_argument(
                "--latest", type=int, help="check only the newest N anchors (default: all)"
            )
