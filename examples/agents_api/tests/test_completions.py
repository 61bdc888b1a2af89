"""Completions through the LLM cache on the real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from agents_api import create_app
from agents_api.llm import echo_model
from agents_api.settings import AppSettings
from apptest import serve, unreachable

from toolkit.config import Settings

pytestmark = pytest.mark.asyncio


class CountingModel:
    """The example's model, counting its calls."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.calls = 0
        self.seconds = seconds

    async def __call__(self, request: Mapping[str, Any]) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(self.seconds)  # a slow provider: the others wait for it
        return await echo_model(request)


async def test_the_second_identical_call_is_a_cache_hit(settings: Settings) -> None:
    model = CountingModel()
    async with serve(
        create_app(settings, app_settings=AppSettings(storage=False), llm=model)
    ) as client:
        request = {"prompt": "the quick brown fox", "temperature": 0}
        first = await client.post("/completions", json=request)
        second = await client.post("/completions", json=request)
        other = await client.post("/completions", json={**request, "prompt": "another"})
    assert first.status_code == second.status_code == 200, first.text
    assert first.json()["from_cache"] is False and second.json()["from_cache"] is True
    assert second.json()["text"] == first.json()["text"]
    assert first.json()["text"].endswith("fox brown quick the")
    assert second.json()["usage"] == {"prompt_tokens": 4, "completion_tokens": 4}
    assert other.json()["from_cache"] is False
    assert model.calls == 2


async def test_concurrent_identical_requests_call_the_model_once(settings: Settings) -> None:
    model = CountingModel(seconds=0.3)
    app = create_app(settings, app_settings=AppSettings(storage=False), llm=model)
    async with serve(app) as client:
        request = {"prompt": "everyone asks this at once"}
        responses = await asyncio.gather(
            *(client.post("/completions", json=request) for _ in range(8))
        )
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["text"] for r in responses}) == 1
    assert sorted(r.json()["from_cache"] for r in responses) == [False] + [True] * 7
    assert model.calls == 1


async def test_a_sampling_request_is_never_cached(settings: Settings) -> None:
    model = CountingModel()
    async with serve(
        create_app(settings, app_settings=AppSettings(storage=False), llm=model)
    ) as client:
        for _ in range(2):
            response = await client.post("/completions", json={"prompt": "hi", "temperature": 0.7})
            assert response.json()["from_cache"] is False
    assert model.calls == 2


async def test_with_redis_down_the_model_still_answers(settings: Settings) -> None:
    model = CountingModel()
    app = create_app(
        unreachable(settings, "redis_url"), app_settings=AppSettings(storage=False), llm=model
    )
    async with serve(app) as client:
        for _ in range(2):
            response = await client.post("/completions", json={"prompt": "hi"})
            assert response.status_code == 200 and response.json()["from_cache"] is False
    assert model.calls == 2


async def test_a_bad_request_is_422_naming_the_field(client: Any) -> None:
    response = await client.post("/completions", json={"prompt": "", "temperature": 0})
    assert response.status_code == 422 and response.json()["field"] == "prompt"
