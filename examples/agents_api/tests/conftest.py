"""Fixtures: the app on this test's own database, driven in-process by httpx.

The toolkit's pytest plugin gives each test a freshly migrated database
(``toolkit_settings``), a Redis namespace and a queue prefix of its own;
storage is a folder under the test's ``tmp_path``. The app's lifespan runs
around each client, as a server would run it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import redis
from agents_api import create_app
from agents_api.settings import AppSettings
from apptest import MAX_UPLOAD, serve

from toolkit.config import Settings
from toolkit.db import Database
from toolkit.repositories import users, workflows


@pytest.fixture
def storage_root(tmp_path: Path) -> Path:
    root = tmp_path / "files"
    root.mkdir()
    return root


@pytest.fixture
def settings(toolkit_settings: Settings, storage_root: Path) -> Iterator[Settings]:
    """The plugin's settings (own database, namespace, prefix) with storage in tmp_path.

    The test's Redis namespace is emptied afterwards.
    """
    yield toolkit_settings.model_copy(update={"storage_url": f"file://{storage_root}"})
    with redis.Redis.from_url(toolkit_settings.redis_url) as raw:
        keys = list(raw.scan_iter(match=f"{toolkit_settings.cache_namespace}:*", count=1000))
        if keys:
            raw.unlink(*keys)


@pytest.fixture
def app_settings() -> AppSettings:
    return AppSettings(max_upload_bytes=MAX_UPLOAD, retry_after_seconds=7, ready_timeout=3)


@pytest_asyncio.fixture
async def client(settings: Settings, app_settings: AppSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(settings, app_settings=app_settings)) as client:
        yield client


@pytest.fixture
def owner_id(toolkit_db: Database) -> str:
    """A user to own agents and workflows (made with the sync API: setup only)."""
    with toolkit_db.connection() as conn:
        user = users.create(
            conn, {"email": f"{uuid.uuid4().hex}@example.com", "display_name": "Owner"}
        )
    return str(user.id)


@pytest.fixture
def workflow_id(toolkit_db: Database, owner_id: str) -> str:
    with toolkit_db.connection() as conn:
        workflow = workflows.create(conn, {"owner_id": owner_id, "name": "summarise"})
    return str(workflow.id)
