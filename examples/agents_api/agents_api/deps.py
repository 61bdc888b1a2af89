"""What routes depend on: the services opened by the lifespan, a connection, a transaction.

::

    @router.get("/agents/{agent_id}")
    async def get_agent(agent_id: UUID, conn: Connection) -> ...:
        return await agents.get(conn, agent_id)

:data:`Connection` is a pooled autocommit connection: one statement is one
round trip, and a repository function that writes an audit event opens its
own transaction. :data:`Transaction` is ``BEGIN ... COMMIT`` around the whole
route: everything the route wrote, outbox messages included, commits or
rolls back together. Both dependencies use ``scope="function"`` (FastAPI
0.121 and later), so the connection goes back to the pool (and the COMMIT
happens, or fails into the error handlers) when the route returns, before
the response is sent: a client never sees 2xx for a change that did not
commit. (By default FastAPI runs a dependency's exit code after the
response is sent.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from agents_api.settings import AppSettings
from toolkit.aio.cache.llm import AsyncLLMCache
from toolkit.aio.db.database import AsyncConnection, AsyncDatabase
from toolkit.aio.storage.filestore import AsyncFileStore
from toolkit.config import Settings

CompletionModel = Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]]
"""The model the ``/completions`` route calls: a request mapping in, a response dict out."""


@dataclass(frozen=True)
class Services:
    """What the lifespan opened; one per application, shared by every request."""

    settings: AppSettings
    toolkit: Settings
    db: AsyncDatabase
    llm: CompletionModel
    cache: AsyncLLMCache | None
    """None when the cache is switched off (``AGENTS_API_CACHE=false``)."""
    files: AsyncFileStore | None
    """None when storage is switched off (``AGENTS_API_STORAGE=false``)."""


def services_of(request: Request) -> Services:
    """The application's services (set by the lifespan), for a route that takes the request."""
    services: Services = request.app.state.services
    return services


async def get_services(request: Request) -> Services:
    """The application's services, as a dependency.

    ``async`` although it awaits nothing: FastAPI runs a plain ``def``
    dependency in a worker thread, a cost paid on every request.
    """
    return services_of(request)


ServicesDep = Annotated[Services, Depends(get_services)]


async def connection(services: ServicesDep) -> AsyncIterator[AsyncConnection]:
    """A pooled autocommit connection for the duration of the route."""
    async with services.db.connection() as conn:
        yield conn


async def transaction(services: ServicesDep) -> AsyncIterator[AsyncConnection]:
    """A transaction around the route: committed when it returns, rolled back if it raises."""
    async with services.db.transaction() as tx:
        yield tx


Connection = Annotated[AsyncConnection, Depends(connection, scope="function")]
Transaction = Annotated[AsyncConnection, Depends(transaction, scope="function")]
