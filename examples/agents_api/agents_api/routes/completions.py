"""A model call through the LLM cache.

The same request (model, prompt, temperature, seed, max_tokens) is answered
from Redis after the first call; concurrent first calls compute once (the
cache's lease). A sampling request (temperature above zero, no seed) is
not cached. While Redis is down the model is simply called: the cache
fails open, and the response says ``from_cache: false``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from agents_api.deps import ServicesDep
from agents_api.errors import SERVICE_ERRORS
from agents_api.llm import CompletionRequest, CompletionResponse

router = APIRouter(tags=["completions"], responses=SERVICE_ERRORS)


@router.post("/completions", response_model=CompletionResponse)
async def complete(body: CompletionRequest, services: ServicesDep) -> CompletionResponse:
    """The model's completion of ``prompt``, from the cache when it has it."""
    request = body.model_dump()

    async def call_model() -> dict[str, Any]:
        return await services.llm(request)

    if services.cache is None:
        answer = await call_model()
        return CompletionResponse(
            model=body.model, text=answer["text"], usage=answer.get("usage"), from_cache=False
        )
    cached = await services.cache.get_or_compute(request, call_model)
    return CompletionResponse(
        model=cached.model,
        text=cached.response["text"],
        usage=cached.usage,
        from_cache=cached.from_cache,
    )
