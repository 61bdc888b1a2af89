"""The connection and transaction dependencies: what a route wrote commits before 2xx."""

from __future__ import annotations

import contextlib
import uuid

import psycopg
import pytest
from agents_api import create_app
from agents_api.deps import Transaction
from agents_api.settings import AppSettings
from apptest import serve
from fastapi import HTTPException

from toolkit.aio.repositories import users
from toolkit.config import Settings
from toolkit.db import Database
from toolkit.repositories import users as sync_users

pytestmark = pytest.mark.asyncio


def emails(db: Database) -> set[str]:
    with db.connection() as conn:
        return {u.email for u in sync_users.list(conn, limit=100).items}


async def test_a_failed_commit_is_an_error_response_never_a_2xx(
    settings: Settings, toolkit_db: Database
) -> None:
    app = create_app(settings, app_settings=AppSettings(cache=False, storage=False))
    email = f"{uuid.uuid4().hex}@example.com"

    @app.post("/swallowing")
    async def swallowing(tx: Transaction) -> dict[str, bool]:
        await users.create(tx, {"email": email, "display_name": "Lost"})
        with contextlib.suppress(psycopg.Error):  # a route hiding an error: no COMMIT possible
            await tx.execute("SELECT 1 / 0")
        return {"ok": True}

    async with serve(app) as client:
        response = await client.post("/swallowing")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert email not in emails(toolkit_db)


async def test_a_route_that_raises_rolls_its_transaction_back(
    settings: Settings, toolkit_db: Database
) -> None:
    app = create_app(settings, app_settings=AppSettings(cache=False, storage=False))
    email = f"{uuid.uuid4().hex}@example.com"

    @app.post("/refusing")
    async def refusing(tx: Transaction) -> None:
        await users.create(tx, {"email": email, "display_name": "Refused"})
        raise HTTPException(status_code=403, detail="no")

    async with serve(app) as client:
        response = await client.post("/refusing")
    assert response.status_code == 403
    assert email not in emails(toolkit_db)


async def test_the_pool_is_closed_when_the_app_stops(settings: Settings) -> None:
    app = create_app(settings, app_settings=AppSettings(cache=False, storage=False))
    async with serve(app) as client:
        assert (await client.get("/agents")).status_code == 200
        db = app.state.services.db
        assert db.stats()["pool_size"] >= 1
    assert db._pool.closed
