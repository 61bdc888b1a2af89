"""The workspaces part of ``toolkit demo`` on logins other than the superuser.

(The superuser's run, the usual one, is checked from the command's output in
test_demo_first_run.py.) A login that cannot become toolkit_app is told in one
line what to do and nothing is made; an application login (a member of
toolkit_app) runs the part as toolkit_app too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from tests.conftest import url_as
from toolkit.config import load_settings
from toolkit.db.database import Database
from toolkit.workflows.demo_workspaces import run_demo_workspaces

DEMO_TENANTS = "SELECT count(*) FROM tenants WHERE name IN ('Acme', 'Globex')"


def _run_as(database_url: str, role: str) -> tuple[bool, list[str]]:
    settings = load_settings(database_url=url_as(database_url, role), pool_min_size=0)
    lines: list[str] = []
    with Database(settings, warn_if_privileged=False) as database:
        kept_apart = run_demo_workspaces(database, echo=lines.append)
    return kept_apart, lines


def _demo_tenants(superuser: psycopg.Connection[Any]) -> int:
    row = superuser.execute(DEMO_TENANTS).fetchone()
    assert row is not None
    return int(row[0])


def test_a_login_that_cannot_become_toolkit_app_gets_one_line_and_nothing_is_made(
    database_url: str, make_role: Callable[..., str], superuser: psycopg.Connection[Any]
) -> None:
    outsider = make_role("LOGIN", member_of=())
    kept_apart, lines = _run_as(database_url, outsider)
    assert kept_apart, "a skipped part is not a failure"
    (line,) = lines
    assert line.startswith(f"skipped: the role '{outsider}' cannot become toolkit_app"), line
    assert f'GRANT toolkit_app TO "{outsider}"' in line, line
    assert _demo_tenants(superuser) == 0


def test_an_application_login_runs_the_workspaces_as_toolkit_app(
    database_url: str, make_role: Callable[..., str], superuser: psycopg.Connection[Any]
) -> None:
    member = make_role("LOGIN")
    kept_apart, lines = _run_as(database_url, member)
    assert kept_apart, lines
    assert lines[0].startswith("run as the role toolkit_app (") and f"'{member}'" in lines[0]
    assert "it is the application role, which row-level security binds" in lines[0]
    assert "each lists only its own agents: 'Acme' yes, 'Globex' yes" in lines, lines
    assert not any(line.startswith(f"as '{member}'") for line in lines), (
        "a login the policies bind cannot show every tenant's rows"
    )
    assert _demo_tenants(superuser) == 2
