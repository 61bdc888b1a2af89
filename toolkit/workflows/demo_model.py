"""The model of ``toolkit demo``: the request an agent sends and a deterministic stand-in LLM.

Shared by the demo's story and its two workspaces, which send the same
request through the LLM cache.
"""

from __future__ import annotations

from typing import Any

from toolkit.repositories.records import Agent

PAPER = "On Computable Numbers"
"""What every demo agent is asked to summarise."""

AGENT: dict[str, Any] = {
    "name": "Research helper",
    "type": "researcher",
    "config": {"model": "demo-model", "temperature": 0.0, "tools": ["search"]},
}
"""Every demo agent but its owner: agents made from it send identical requests."""


def llm_request(agent: Agent) -> dict[str, Any]:
    """The chat request ``agent`` sends its model: agents alike send identical requests."""
    return {
        "model": agent.config.model,
        "temperature": agent.config.temperature,
        "messages": [
            {"role": "system", "content": f"You are {agent.name}."},
            {"role": "user", "content": PAPER},
        ],
    }


def fake_model(request: dict[str, Any]) -> str:
    """A deterministic stand-in for an LLM: the same request, the same answer."""
    question = request["messages"][-1]["content"]
    return f"Summary of {question!r}: machines can compute what is computable."
