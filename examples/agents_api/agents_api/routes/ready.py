"""Readiness: is each service this app uses answering?

``GET /ready`` checks every service at once, each within
``AGENTS_API_READY_TIMEOUT`` seconds, and reports each. The status is 503
when a service the app cannot work without is down (PostgreSQL; storage
when it is switched on), else 200; Redis and RabbitMQ are reported but not
required: the LLM cache fails open (completions are computed), and outbox
messages wait in PostgreSQL until the relay reaches the broker. Taking the
service out of a load balancer for those would turn a degraded service
into an outage.

A 503 is a problem (``application/problem+json``) like every other error
of the app, with each service's state in ``services``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from agents_api.deps import Services, ServicesDep
from agents_api.errors import Problem, problem_response, problem_responses
from toolkit.messaging.connection import ConnectionOptions, close_quietly, connect

router = APIRouter(tags=["health"])


class ServiceState(BaseModel):
    """One service's answer."""

    up: bool
    required: bool
    error: str | None = None


class Readiness(BaseModel):
    """Every service's answer (200); ``status`` is ``ready`` or ``degraded``."""

    status: Literal["ready", "degraded"]
    services: dict[str, ServiceState]


class ReadinessProblem(Problem):
    """503: a required service is down; every service's answer is in ``services``."""

    services: dict[str, ServiceState]


Check = Callable[[], Awaitable[object]]


def _checks(services: Services) -> dict[str, tuple[Check, bool]]:
    """The checks of the services this app opened: name -> (check, required)."""

    async def postgres() -> None:
        async with services.db.connection() as conn:
            await conn.execute("SELECT 1")

    checks: dict[str, tuple[Check, bool]] = {"postgres": (postgres, True)}
    if services.cache is not None:
        cache = services.cache

        async def redis() -> None:
            if not await cache.client.ping():
                raise ConnectionError("no answer to PING")

        checks["redis"] = (redis, False)
    if services.files is not None:
        files = services.files

        async def storage() -> None:
            # The back end answers (a listing of the root would be slow on big buckets).
            await files.storage.exists("ready/probe")

        checks["storage"] = (storage, True)
    if services.settings.broker_check:
        timeout = services.settings.ready_timeout
        options = ConnectionOptions(
            socket_timeout=timeout, stack_timeout=timeout, name="agents-api-ready"
        )

        async def rabbitmq() -> None:
            # pika is blocking: one short-lived connection on a thread.
            connection = await asyncio.to_thread(connect, services.toolkit.amqp_url, options)
            await asyncio.to_thread(close_quietly, connection)

        checks["rabbitmq"] = (rabbitmq, False)
    return checks


async def _state(check: Check, required: bool, timeout: float) -> ServiceState:
    try:
        await asyncio.wait_for(check(), timeout)
    except TimeoutError:
        return ServiceState(up=False, required=required, error=f"no answer within {timeout}s")
    except Exception as exc:  # any failure means "down"; the probe itself must answer
        return ServiceState(up=False, required=required, error=type(exc).__name__)
    return ServiceState(up=True, required=required)


@router.get(
    "/ready",
    response_model=Readiness,
    responses=problem_responses(503, schema=ReadinessProblem.__name__),
)
async def ready(services: ServicesDep) -> JSONResponse:
    """200 when every required service answers (``degraded`` if an optional one does not)."""
    checks = _checks(services)
    timeout = services.settings.ready_timeout
    states = await asyncio.gather(
        *(_state(check, required, timeout) for check, required in checks.values())
    )
    report = dict(zip(checks, states, strict=True))
    down = [name for name, state in report.items() if state.required and not state.up]
    if down:
        unavailable = ReadinessProblem(
            title="Service Unavailable",
            status=503,
            detail=f"required services down: {', '.join(down)}",
            services=report,
        )
        retry_after = str(services.settings.retry_after_seconds)
        return problem_response(unavailable, headers={"Retry-After": retry_after})
    status: Literal["ready", "degraded"] = "ready" if all(s.up for s in states) else "degraded"
    return JSONResponse(Readiness(status=status, services=report).model_dump())


@router.get("/live")
async def live() -> dict[str, str]:
    """Liveness: the process answers; nothing else, so an outage elsewhere never restarts it."""
    return {"status": "alive"}
