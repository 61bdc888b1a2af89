"""Helpers of the example's tests: an in-process client with the lifespan, unreachable URLs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from toolkit.config import Settings

MAX_UPLOAD = 64 * 1024
CLOSED_PORT = 1  # nothing listens on port 1 of the loopback interface


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``app``, in-process, with the app's lifespan around it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://agents.test") as client:
            yield client


def unreachable(settings: Settings, *names: str) -> Settings:
    """``settings`` with the named services' URLs pointing at a closed port."""
    urls = {
        "database_url": f"postgresql://postgres@127.0.0.1:{CLOSED_PORT}/nowhere",
        "redis_url": f"redis://127.0.0.1:{CLOSED_PORT}/0",
        "amqp_url": f"amqp://guest:guest@127.0.0.1:{CLOSED_PORT}/%2F",
    }
    return settings.model_copy(update={name: urls[name] for name in names})
