"""The application role reads and writes rows but cannot ALTER, DROP or TRUNCATE."""

from __future__ import annotations

import os

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.core.factories import make_agent
from toolkit.config import load_settings
from toolkit.db import Database
from toolkit.repositories import agents, audit_events, users

APP_LOGIN = f"toolkit_app_login_{os.getpid()}"


@pytest.fixture
def app_url(database_url, superuser):
    superuser.execute(
        sql.SQL(
            "DO $$ BEGIN CREATE ROLE {} LOGIN IN ROLE toolkit_app; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        ).format(sql.Identifier(APP_LOGIN))
    )
    params = conninfo_to_dict(database_url)
    params["user"] = APP_LOGIN
    return make_conninfo(**params)


def test_the_application_role_reads_and_writes(app_url, superuser) -> None:
    with Database(load_settings(database_url=app_url, pool_min_size=0)) as db:
        with db.transaction() as tx:
            agent = make_agent(tx, description="as the app")
            audit_events.record(tx, {"action": "agent.checked", "entity": "agent"})
        with db.connection() as conn:
            assert conn.info.user == APP_LOGIN
            assert agents.get(conn, agent.id).description == "as the app"
            users.delete(conn, agent.owner_id)
            assert audit_events.verify_chain(conn).ok


@pytest.mark.parametrize(
    "statement",
    [
        "ALTER TABLE agents ADD COLUMN sneaky text",
        "DROP TABLE sessions",
        "TRUNCATE agents",
        "CREATE TABLE scratch (id int)",
        "DELETE FROM _yoyo_migration",
        "ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update",
    ],
)
def test_the_application_role_cannot_change_the_schema(app_url, statement) -> None:
    with (
        psycopg.connect(app_url, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(statement)
