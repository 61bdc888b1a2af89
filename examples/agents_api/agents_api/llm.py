"""The "LLM" of the example: a deterministic local coroutine, no network.

Replace :func:`echo_model` with a call to your provider (any coroutine
function taking the request mapping and returning a JSON-able dict); the
route and the cache around it stay as they are.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints


class CompletionRequest(BaseModel):
    """A completion request; every field goes into the cache key."""

    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, StringConstraints(min_length=1, max_length=200)] = "echo-1"
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=20_000)]
    temperature: float = Field(default=0.0, ge=0, le=2)
    """Above zero without a ``seed`` the request samples, and is not cached."""
    seed: int | None = None
    max_tokens: int = Field(default=256, ge=1, le=100_000)


class CompletionResponse(BaseModel):
    """The completion, and whether it came from the cache."""

    model: str
    text: str
    usage: dict[str, Any] | None
    from_cache: bool


async def echo_model(request: Mapping[str, Any]) -> dict[str, Any]:
    """A fake model: the same prompt always gets the same answer.

    It yields to the event loop once, like a network call would.
    """
    await asyncio.sleep(0)
    prompt = str(request["prompt"])
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:12]
    words = prompt.split()
    text = f"[{request.get('model', 'echo-1')}:{digest}] " + " ".join(reversed(words))
    return {
        "text": text,
        "usage": {"prompt_tokens": len(words), "completion_tokens": len(words)},
    }
