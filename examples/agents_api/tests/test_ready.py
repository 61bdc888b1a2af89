"""The readiness probe reports each service, and 503 only for a required one."""

from __future__ import annotations

import httpx
import pytest
from agents_api import create_app
from agents_api.settings import AppSettings
from apptest import serve, unreachable

from toolkit.config import Settings

pytestmark = pytest.mark.asyncio


def states(response: httpx.Response) -> dict[str, bool]:
    return {name: state["up"] for name, state in response.json()["services"].items()}


async def test_every_service_up_is_ready(client: httpx.AsyncClient) -> None:
    response = await client.get("/ready")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ready"
    assert states(response) == {"postgres": True, "redis": True, "storage": True, "rabbitmq": True}


async def test_optional_services_down_is_degraded_but_still_200(
    settings: Settings, app_settings: AppSettings
) -> None:
    app = create_app(unreachable(settings, "redis_url", "amqp_url"), app_settings=app_settings)
    async with serve(app) as client:
        response = await client.get("/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "degraded"
    assert states(response) == {
        "postgres": True,
        "redis": False,
        "storage": True,
        "rabbitmq": False,
    }
    assert body["services"]["redis"]["required"] is False and body["services"]["redis"]["error"]


async def test_the_database_down_is_503(settings: Settings, app_settings: AppSettings) -> None:
    app = create_app(unreachable(settings, "database_url"), app_settings=app_settings)
    async with serve(app) as client:
        response = await client.get("/ready")
        live = await client.get("/live")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "7"
    assert response.json()["status"] == 503 and "postgres" in response.json()["detail"]
    assert states(response)["postgres"] is False and states(response)["redis"] is True
    assert live.status_code == 200  # liveness does not depend on the database


async def test_only_the_services_the_app_opened_are_checked(settings: Settings) -> None:
    app = create_app(
        settings, app_settings=AppSettings(cache=False, storage=False, broker_check=False)
    )
    async with serve(app) as client:
        response = await client.get("/ready")
    assert response.status_code == 200 and states(response) == {"postgres": True}
