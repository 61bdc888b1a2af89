"""One error language: every error is application/problem+json, as /openapi.json says."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import httpx
import pytest
from agents_api import create_app
from agents_api.settings import AppSettings
from apptest import MAX_UPLOAD

from toolkit.config import Settings

pytestmark = pytest.mark.asyncio

PROBLEM = "application/problem+json"
PROBLEM_MEMBERS = {"type", "title", "status", "detail"}
# What PostgreSQL and the toolkit's queries call things; none belongs in a response.
DATABASE_WORDS = ("fkey", "_key", "constraint", "table", "relation", "insert", ".create", "agents")


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response is a problem of ``status``; its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body.keys() >= PROBLEM_MEMBERS and body["status"] == status
    return body


def assert_no_database_words(response: httpx.Response) -> None:
    text = response.text.lower()
    assert not [word for word in DATABASE_WORDS if word in text], response.text


async def test_a_path_with_no_route_is_a_404_problem(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/nope"), 404)


async def test_a_method_the_path_does_not_have_is_a_405_problem_with_allow(
    client: httpx.AsyncClient,
) -> None:
    response = await client.put("/agents")
    body = assert_problem(response, 405)
    assert set(response.headers["allow"].split(", ")) == {"GET", "POST"}
    assert "PUT" in body["detail"]


def resolve(document: Mapping[str, Any], schema: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The name and definition of the component ``schema`` refers to."""
    name = str(schema["$ref"]).removeprefix("#/components/schemas/")
    return name, document["components"]["schemas"][name]


async def test_every_error_in_the_openapi_document_is_a_problem(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/openapi.json")).json()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    declared: dict[str, set[int]] = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for code, response in operation["responses"].items():
                if int(code) < 400:
                    continue
                where = f"{method.upper()} {path} {code}"
                assert set(response.get("content", {})) == {PROBLEM}, where
                name, schema = resolve(document, response["content"][PROBLEM]["schema"])
                assert schema["properties"].keys() >= PROBLEM_MEMBERS, where
                if code == "422":
                    assert name == "Problem" and "errors" in schema["properties"], where
                declared.setdefault(f"{method.upper()} {path}", set()).add(int(code))
    assert {404, 412, 428} <= declared["PATCH /agents/{agent_id}"]
    assert 409 in declared["POST /users"] and 413 in declared["POST /files"]
    assert 503 in declared["GET /ready"] and 503 in declared["GET /agents"]
    every = set().union(*declared.values())
    assert {404, 409, 412, 413, 422, 428, 500, 503} <= every
    # 404 and 405 of paths and methods no operation has: said in the API's description.
    assert "405" in document["info"]["description"]


async def test_every_invalid_field_of_a_body_is_listed(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/agents",
        json={"owner_id": "nobody", "name": "", "type": "Not A Slug", "config": {"model": "m"}},
    )
    body = assert_problem(response, 422)
    listed = {(e["field"], e["in"], e["pointer"]) for e in body["errors"]}
    assert listed == {
        ("owner_id", "body", "#/owner_id"),
        ("name", "body", "#/name"),
        ("type", "body", "#/type"),
    }
    assert all(e["detail"] for e in body["errors"])
    assert body["field"] == body["errors"][0]["field"]


async def test_a_nested_invalid_field_is_listed_with_its_path(
    client: httpx.AsyncClient, owner_id: str
) -> None:
    response = await client.post(
        "/agents",
        json={"owner_id": owner_id, "name": "n", "type": "t", "config": {"temperature": 5}},
    )
    (error,) = assert_problem(response, 422)["errors"]
    assert error["field"] == "config.temperature" and error["pointer"] == "#/config/temperature"


async def test_a_body_that_is_not_json_says_so_and_where(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/agents", content=b'{"name": ', headers={"Content-Type": "application/json"}
    )
    body = assert_problem(response, 422)
    assert "not valid JSON" in body["detail"]
    (error,) = body["errors"]
    assert error["in"] == "body" and error["position"] == 9
    assert "field" not in body and "field" not in error


@pytest.mark.parametrize("route", ["/agents", "/executions", "/files"])
async def test_a_reference_to_nothing_names_the_field_and_no_database_object(
    client: httpx.AsyncClient, owner_id: str, route: str
) -> None:
    missing = str(uuid.uuid4())
    if route == "/agents":
        call = client.post(route, json={"owner_id": missing, "name": "orphan", "type": "t"})
        field = "owner_id"
    elif route == "/executions":
        call = client.post(route, json={"workflow_id": missing, "input": {}})
        field = "workflow_id"
    else:
        call = client.post(route, params={"owner_id": missing}, content=b"some bytes")
        field = "owner_id"
    response = await call
    body = assert_problem(response, 422)
    assert body["field"] == field and [e["field"] for e in body["errors"]] == [field]
    assert_no_database_words(response)


async def test_a_taken_email_is_a_409_naming_the_field_and_no_constraint(
    client: httpx.AsyncClient,
) -> None:
    user = {"email": f"{uuid.uuid4().hex}@example.com", "display_name": "Ada"}
    assert (await client.post("/users", json=user)).status_code == 201
    response = await client.post("/users", json=user)
    body = assert_problem(response, 409)
    assert body["field"] == "email"
    assert_no_database_words(response)
    assert "users" not in response.text and user["email"] not in response.text


async def test_412_413_and_428_are_problems(client: httpx.AsyncClient, owner_id: str) -> None:
    created = await client.post(
        "/agents", json={"owner_id": owner_id, "name": "a", "type": "t", "config": {}}
    )
    url = created.headers["location"]
    assert_problem(await client.patch(url, json={"name": "b"}), 428)
    assert (await client.patch(url, json={"name": "b"}, headers={"If-Match": '"1"'})).is_success
    stale = assert_problem(
        await client.patch(url, json={"name": "c"}, headers={"If-Match": '"1"'}), 412
    )
    assert stale["current_version"] == 2
    too_large = await client.post(
        "/files", params={"owner_id": owner_id}, content=b"x" * (MAX_UPLOAD + 1)
    )
    assert_problem(too_large, 413)


async def test_an_unexpected_exception_is_a_500_problem(settings: Settings) -> None:
    async def broken_model(request: Mapping[str, Any]) -> dict[str, Any]:
        raise RuntimeError("the model's secret internals")

    app = create_app(
        settings, app_settings=AppSettings(cache=False, storage=False), llm=broken_model
    )
    async with app.router.lifespan_context(app):
        # As a server would: the exception is logged, the client gets the response.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://agents.test") as client:
            response = await client.post("/completions", json={"prompt": "hi"})
    assert_problem(response, 500)
    assert "secret" not in response.text


async def test_the_problem_schemas_are_what_is_sent(client: httpx.AsyncClient) -> None:
    """The members a problem is sent with are those its schema declares."""
    document = (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    response = await client.post("/agents", json={"owner_id": "x", "name": "", "type": "t"})
    body = assert_problem(response, 422)
    assert body.keys() <= schemas["Problem"]["properties"].keys()
    errors = schemas["Problem"]["properties"]["errors"]["anyOf"][0]
    _, item = resolve(document, errors["items"])
    for error in body["errors"]:
        assert error.keys() <= item["properties"].keys()
