"""The agents routes against the real database: paging, ETags, If-Match, errors."""

from __future__ import annotations

import uuid

import httpx
import pytest
from agents_api import create_app
from agents_api.settings import AppSettings
from apptest import serve, unreachable

from toolkit.config import Settings

pytestmark = pytest.mark.asyncio

PROBLEM = "application/problem+json"


async def new_agent(
    client: httpx.AsyncClient, owner_id: str, name: str = "helper"
) -> httpx.Response:
    response = await client.post(
        "/agents",
        json={"owner_id": owner_id, "name": name, "type": "assistant", "config": {"model": "m"}},
    )
    assert response.status_code == 201, response.text
    return response


async def test_create_returns_201_with_location_and_etag(
    client: httpx.AsyncClient, owner_id: str
) -> None:
    created = await new_agent(client, owner_id)
    body = created.json()
    assert created.headers["location"] == f"/agents/{body['id']}"
    assert created.headers["etag"] == '"1"' and body["version"] == 1
    fetched = await client.get(created.headers["location"])
    assert fetched.status_code == 200
    assert fetched.json() == body and fetched.headers["etag"] == '"1"'


async def test_get_with_the_current_etag_is_not_modified(
    client: httpx.AsyncClient, owner_id: str
) -> None:
    created = await new_agent(client, owner_id)
    again = await client.get(created.headers["location"], headers={"If-None-Match": '"1"'})
    assert again.status_code == 304 and again.headers["etag"] == '"1"' and not again.content
    other = await client.get(created.headers["location"], headers={"If-None-Match": '"9"'})
    assert other.status_code == 200


async def test_list_pages_through_every_agent_once(
    client: httpx.AsyncClient, owner_id: str
) -> None:
    made = {(await new_agent(client, owner_id, f"agent {i}")).json()["id"] for i in range(7)}
    seen: list[str] = []
    pages = 0
    params: dict[str, str | int] = {"limit": 3}
    while True:
        response = await client.get("/agents", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 3
        seen.extend(item["id"] for item in page["items"])
        pages += 1
        if page["next_cursor"] is None:
            break
        params = {"limit": 3, "cursor": page["next_cursor"]}
    assert pages == 3
    assert len(seen) == len(set(seen)) and set(seen) == made


async def test_list_filters_by_owner(client: httpx.AsyncClient, owner_id: str) -> None:
    await new_agent(client, owner_id)
    other = await client.post(
        "/users", json={"email": f"{uuid.uuid4().hex}@example.com", "display_name": "Other"}
    )
    page = (await client.get("/agents", params={"owner_id": other.json()["id"]})).json()
    assert page == {"items": [], "next_cursor": None}


async def test_a_malformed_cursor_is_422_naming_it(client: httpx.AsyncClient) -> None:
    response = await client.get("/agents", params={"cursor": "not-a-cursor"})
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["field"] == "cursor"


async def test_a_limit_out_of_range_is_422_naming_it(client: httpx.AsyncClient) -> None:
    response = await client.get("/agents", params={"limit": 0})
    assert response.status_code == 422 and response.json()["field"] == "limit"


async def test_patch_with_the_current_etag_updates_and_moves_the_etag(
    client: httpx.AsyncClient, owner_id: str
) -> None:
    created = await new_agent(client, owner_id)
    url = created.headers["location"]
    patched = await client.patch(
        url, json={"name": "renamed", "description": None}, headers={"If-Match": '"1"'}
    )
    assert patched.status_code == 200, patched.text
    assert patched.headers["etag"] == '"2"'
    assert patched.json()["name"] == "renamed" and patched.json()["version"] == 2
    assert patched.json()["config"] == created.json()["config"]  # fields left out are kept
    assert (await client.get(url)).json() == patched.json()


async def test_patch_with_a_stale_etag_is_412_and_changes_nothing(
    client: httpx.AsyncClient, owner_id: str
) -> None:
    created = await new_agent(client, owner_id)
    url = created.headers["location"]
    first = await client.patch(url, json={"name": "first"}, headers={"If-Match": '"1"'})
    assert first.status_code == 200
    late = await client.patch(url, json={"name": "late"}, headers={"If-Match": '"1"'})
    assert late.status_code == 412
    assert late.headers["content-type"] == PROBLEM
    assert late.headers["etag"] == '"2"' and late.json()["current_version"] == 2
    assert (await client.get(url)).json()["name"] == "first"


async def test_patch_without_if_match_is_428(client: httpx.AsyncClient, owner_id: str) -> None:
    created = await new_agent(client, owner_id)
    response = await client.patch(created.headers["location"], json={"name": "blind"})
    assert response.status_code == 428
    assert (await client.get(created.headers["location"])).json()["version"] == 1


@pytest.mark.parametrize("header", ["*", "1", '"1", "2"', "W/"])
async def test_patch_with_an_if_match_that_names_no_version_is_422(
    client: httpx.AsyncClient, owner_id: str, header: str
) -> None:
    created = await new_agent(client, owner_id)
    response = await client.patch(
        created.headers["location"], json={"name": "x"}, headers={"If-Match": header}
    )
    assert response.status_code == 422 and response.json()["field"] == "If-Match"


async def test_patch_with_a_bad_field_is_422_naming_it(
    client: httpx.AsyncClient, owner_id: str
) -> None:
    created = await new_agent(client, owner_id)
    url = created.headers["location"]
    for body, field in (
        ({"name": None}, "name"),
        ({"type": "Not A Slug"}, "type"),
        ({"config": {"temperature": 5}}, "config.temperature"),
        ({"colour": "red"}, "colour"),
    ):
        response = await client.patch(url, json=body, headers={"If-Match": '"1"'})
        assert response.status_code == 422, (body, response.text)
        assert response.json()["field"] == field, body
    assert (await client.get(url)).json()["version"] == 1


async def test_a_malformed_id_is_422_naming_it(client: httpx.AsyncClient) -> None:
    for call in (
        client.get("/agents/not-a-uuid"),
        client.patch("/agents/not-a-uuid", json={}, headers={"If-Match": '"1"'}),
        client.delete("/agents/not-a-uuid"),
    ):
        response = await call
        assert response.status_code == 422
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["field"] == "agent_id"


async def test_an_unknown_agent_is_404(client: httpx.AsyncClient) -> None:
    missing = f"/agents/{uuid.uuid4()}"
    assert (await client.get(missing)).status_code == 404
    patched = await client.patch(missing, json={"name": "x"}, headers={"If-Match": '"1"'})
    assert patched.status_code == 404
    deleted = await client.delete(missing)
    assert deleted.status_code == 404 and deleted.headers["content-type"] == PROBLEM


async def test_delete_removes_the_agent(client: httpx.AsyncClient, owner_id: str) -> None:
    created = await new_agent(client, owner_id)
    deleted = await client.delete(created.headers["location"])
    assert deleted.status_code == 204 and not deleted.content
    assert (await client.get(created.headers["location"])).status_code == 404


async def test_create_with_an_unknown_owner_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/agents", json={"owner_id": str(uuid.uuid4()), "name": "orphan", "type": "assistant"}
    )
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM


async def test_create_with_a_bad_body_is_422_naming_the_field(
    client: httpx.AsyncClient, owner_id: str
) -> None:
    response = await client.post(
        "/agents", json={"owner_id": owner_id, "name": "", "type": "assistant"}
    )
    assert response.status_code == 422 and response.json()["field"] == "name"


async def test_agents_have_no_unique_rule_so_a_duplicate_email_shows_409(
    client: httpx.AsyncClient,
) -> None:
    """Agents may share a name; users may not share an email: that is the 409."""
    user = {"email": f"{uuid.uuid4().hex}@example.com", "display_name": "Ada"}
    assert (await client.post("/users", json=user)).status_code == 201
    again = await client.post("/users", json=user)
    assert again.status_code == 409 and again.headers["content-type"] == PROBLEM
    assert user["email"] not in again.text  # the server's DETAIL (the value) is not sent


async def test_an_unreachable_database_is_503_with_retry_after(settings: Settings) -> None:
    app = create_app(
        unreachable(settings, "database_url"),
        app_settings=AppSettings(retry_after_seconds=7, cache=False, storage=False),
    )
    async with serve(app) as client:
        for call in (client.get(f"/agents/{uuid.uuid4()}"), client.get("/agents")):
            response = await call
            assert response.status_code == 503
            assert response.headers["retry-after"] == "7"
            assert response.headers["content-type"] == PROBLEM
            assert "127.0.0.1" not in response.text  # where it failed is for the log


async def test_an_unknown_query_parameter_is_422(client: httpx.AsyncClient) -> None:
    response = await client.get("/agents", params={"owner": "typo"})
    assert response.status_code == 422 and response.json()["field"] == "owner"
