"""The suite through PgBouncer: ``TOOLKIT_TEST_THROUGH_PGBOUNCER=1``.

In that mode tests/conftest.py starts a private PgBouncer in transaction mode
for the session (stopped at its end), hands each test a ``database_url``
that reaches its own database through it, and sets the settings a platform
behind such a pooler needs: ``TOOLKIT_PREPARE_THRESHOLD=off`` (a statement
prepared on one server connection is missing on the next transaction's) and
``TOOLKIT_STATEMENT_TIMEOUT_MS=0`` (PgBouncer 1.18 refuses the ``options``
startup parameter that carries it). The template database is migrated
directly, as migrations are meant to run. Tests that need what a
transaction-mode pooler cannot give (session state, a server connection of
their own) are skipped in that mode only, with :func:`needs_session`.
"""

from __future__ import annotations

import os

import pytest

THROUGH_PGBOUNCER = os.environ.get("TOOLKIT_TEST_THROUGH_PGBOUNCER", "") not in ("", "0")
"""Whether this run routes the tests' database URLs through a private PgBouncer."""

POOLER_SETTINGS = {"TOOLKIT_PREPARE_THRESHOLD": "off", "TOOLKIT_STATEMENT_TIMEOUT_MS": "0"}
"""What the toolkit is configured with behind a transaction-mode pooler."""


def needs_session(reason: str) -> pytest.MarkDecorator:
    """Skip the test through the pooler only, saying which session state it needs."""
    return pytest.mark.skipif(
        THROUGH_PGBOUNCER, reason=f"through a transaction-mode PgBouncer: {reason}"
    )


OPTIONS_REFUSED = (
    "statement_timeout travels in the options startup parameter, which PgBouncer 1.18 refuses "
    "(TOOLKIT_STATEMENT_TIMEOUT_MS=0 behind it; tests/cluster/test_pgbouncer.py checks the error)"
)
OWN_BACKEND = (
    "the test kills the server backend by the pid psycopg reports, and behind a pooler a "
    "client has no backend of its own (the pid is PgBouncer's)"
)
