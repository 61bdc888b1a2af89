"""The application factory and its lifespan.

::

    uvicorn --factory agents_api.app:create_app

:func:`create_app` builds the app from settings (the environment's unless
given); the lifespan opens the services when the server starts and closes
them when it stops. Nothing is opened at import time, so tests and
benchmarks build as many apps as they like, each on its own database.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from agents_api import errors
from agents_api.deps import CompletionModel, Services
from agents_api.llm import echo_model
from agents_api.routes import agents, completions, executions, files, ready, users
from agents_api.settings import AppSettings
from toolkit.aio.cache.client import AsyncCacheClient
from toolkit.aio.cache.llm import AsyncLLMCache
from toolkit.aio.db.database import AsyncDatabase
from toolkit.aio.storage.filestore import AsyncFileStore
from toolkit.config import Settings, load_settings
from toolkit.errors import Unavailable
from toolkit.storage.backends import open_storage

log = logging.getLogger(__name__)

ERRORS_DESCRIPTION = (
    "Every error is `application/problem+json` (RFC 9457, schema `Problem`), "
    "those of no operation included: a path with no route is 404, a method "
    "the path does not have is 405 with `Allow`."
)


def create_app(
    toolkit_settings: Settings | None = None,
    *,
    app_settings: AppSettings | None = None,
    llm: CompletionModel = echo_model,
) -> FastAPI:
    """The application, on the toolkit's settings (``TOOLKIT_*``) and its own (``AGENTS_API_*``).

    ``llm`` is the model ``/completions`` calls. ``app_settings=AppSettings(
    cache=False, storage=False, broker_check=False)`` gives an app that needs
    PostgreSQL only (the ``/files`` routes are then absent and completions
    uncached).
    """
    toolkit = toolkit_settings if toolkit_settings is not None else load_settings()
    settings = app_settings if app_settings is not None else AppSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            app.state.services = await _open_services(stack, toolkit, settings, llm)
            yield

    app = FastAPI(
        title="Agents API",
        version="1.0",
        description=ERRORS_DESCRIPTION,
        lifespan=lifespan,
    )
    errors.install(app, retry_after=settings.retry_after_seconds, schemas=[ready.ReadinessProblem])
    app.include_router(ready.router)
    app.include_router(users.router)
    app.include_router(agents.router)
    app.include_router(executions.router)
    app.include_router(completions.router)
    if settings.storage:
        app.include_router(files.router)
    return app


async def _open_services(
    stack: AsyncExitStack, toolkit: Settings, settings: AppSettings, llm: CompletionModel
) -> Services:
    """Open what the app uses, each closed by ``stack`` in reverse order."""
    db = AsyncDatabase(toolkit)
    stack.push_async_callback(db.close)
    try:
        await db.open()
    except Unavailable as exc:
        # Start anyway: /ready reports it and requests get 503 until it answers
        # (the pool opens on first use). A bad URL or password still fails here.
        log.warning("PostgreSQL unavailable at startup: %s", exc)
    cache = None
    if settings.cache:
        # redis.asyncio connects on first use; Redis down means misses, not errors.
        client = AsyncCacheClient.from_settings(toolkit)
        stack.push_async_callback(client.close)
        cache = AsyncLLMCache(client)
    store = None
    if settings.storage:
        storage = open_storage(toolkit.storage_url)
        stack.callback(storage.close)
        store = AsyncFileStore(storage, max_bytes=settings.max_upload_bytes)
        stack.push_async_callback(store.aclose)
    return Services(settings=settings, toolkit=toolkit, db=db, llm=llm, cache=cache, files=store)
