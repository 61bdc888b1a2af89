"""Request fingerprints: what changes a key, what does not, and bad requests."""

from __future__ import annotations

import copy
import enum
import json
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit.cache import CacheClient, LLMCache, RequestFingerprinter
from toolkit.errors import InvalidInput

from .redis_env import free_port

BASE: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "provider": "openai",
    "base_url": "https://api.openai.com/v1",
    "messages": [
        {"role": "system", "content": "You are terse.", "id": "m0"},
        {"role": "user", "content": "What is 2+2?", "id": "m1", "created_at": "2024-01-01T00:00Z"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "add",
                "parameters": {"type": "object", "properties": {"a": {"type": "number"}}},
            },
        }
    ],
    "tool_choice": "auto",
    "response_format": {"type": "json_object"},
    "temperature": 0,
    "top_p": 1,
    "max_tokens": 64,
    "seed": 7,
    "stop": ["\n\n"],
    "n": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logit_bias": {"50256": -100},
}


def variant(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    request = copy.deepcopy(BASE)
    change(request)
    return request


def _set(field: str, value: object) -> Callable[[dict[str, Any]], object]:
    return lambda r: r.__setitem__(field, value)


def _message(index: int, field: str, value: object) -> Callable[[dict[str, Any]], object]:
    return lambda r: r["messages"][index].__setitem__(field, value)


# Each changes one thing that can change the answer: each must miss.
DIFFERENT: dict[str, Callable[[dict[str, Any]], object]] = {
    "model": _set("model", "gpt-4o"),
    "provider": _set("provider", "azure"),
    "base_url": _set("base_url", "https://other.example/v1"),
    "system prompt": _message(0, "content", "You are verbose."),
    "user content": _message(1, "content", "What is 2+3?"),
    "content whitespace": _message(1, "content", "What is 2+2? "),
    "role": _message(1, "role", "assistant"),
    "message name": _message(1, "name", "alice"),
    "content parts": _message(1, "content", [{"type": "text", "text": "What is 2+2?"}]),
    "extra message": lambda r: r["messages"].append({"role": "user", "content": "and?"}),
    "message order": lambda r: r["messages"].reverse(),
    "dropped system": lambda r: r["messages"].pop(0),
    "tools": lambda r: r["tools"][0]["function"]["parameters"]["properties"]["a"].update(
        type="integer"
    ),
    "no tools": lambda r: r.pop("tools"),
    "tool_choice": _set("tool_choice", "none"),
    "response_format": _set("response_format", {"type": "text"}),
    "temperature": _set("temperature", 0.5),
    "top_p": _set("top_p", 0.9),
    "max_tokens": _set("max_tokens", 65),
    "seed": _set("seed", 8),
    "stop": _set("stop", ["\n"]),
    "n": _set("n", 2),
    "presence_penalty": _set("presence_penalty", 0.1),
    "frequency_penalty": _set("frequency_penalty", 0.1),
    "logit_bias": _set("logit_bias", {"50256": -99}),
    "stream": _set("stream", True),
    "user": _set("user", "end-user-1"),
    "unknown new parameter": _set("reasoning_effort", "high"),
    "bool is not int": _set("n", True),
    "string is not number": _set("max_tokens", "64"),
    "null is not absent": _set("stop", None),
}


def _reorder(request: dict[str, Any]) -> None:
    items = list(request.items())
    request.clear()
    request.update(reversed(items))


# Each changes nothing that can change the answer: each must hit.
SAME: dict[str, Callable[[dict[str, Any]], object]] = {
    "top-level key order": _reorder,
    "nested key order": lambda r: r.__setitem__(
        "response_format", OrderedDict(reversed(list(r["response_format"].items())))
    ),
    "message ids dropped": lambda r: [m.pop("id") for m in r["messages"]],
    "message ids changed": _message(0, "id", "another-id"),
    "timestamps changed": _message(1, "created_at", "2025-06-01T12:00Z"),
    "int as float": lambda r: r.update(top_p=1.0, max_tokens=64.0, temperature=0.0),
    "negative zero": _set("presence_penalty", -0.0),
    "request id": _set("request_id", "req-123"),
    "metadata": _set("metadata", {"trace": "abc"}),
    "sensitive false": _set("sensitive", False),
    "base_url trailing slash": _set("base_url", "https://api.openai.com/v1/"),
    "tuple messages": lambda r: r.__setitem__("messages", tuple(r["messages"])),
    "int key is the JSON string key": _set("logit_bias", {50256: -100}),
}


@pytest.fixture
def cache(client: CacheClient) -> LLMCache:
    return LLMCache(client)


def test_key_is_namespaced_versioned_and_never_holds_the_prompt(cache: LLMCache) -> None:
    key = cache.key(BASE)
    assert re.fullmatch(rf"{cache.client.namespace}:llm:v1:\{{shared\}}:[0-9a-f]{{64}}", key)
    for word in ("terse", "2+2", "gpt-4o-mini", "openai"):
        assert word not in key


@pytest.mark.parametrize("name", sorted(DIFFERENT))
def test_changing_one_field_misses(cache: LLMCache, name: str) -> None:
    changed = variant(DIFFERENT[name])
    assert cache.key(changed) != cache.key(BASE)
    assert cache.set(BASE, "four")
    assert cache.get(changed) is None
    hit = cache.get(BASE)
    assert hit is not None and hit.response == "four"


@pytest.mark.parametrize("name", sorted(SAME))
def test_non_semantic_changes_hit(cache: LLMCache, name: str) -> None:
    same = variant(SAME[name])
    assert cache.key(same) == cache.key(BASE)
    assert cache.set(BASE, "four")
    hit = cache.get(same)
    assert hit is not None and hit.response == "four"


def test_explain_key(cache: LLMCache) -> None:
    request = variant(lambda r: r.update(sensitive=False, request_id="r1"))
    explanation = cache.explain_key(request)
    assert explanation.key == cache.key(BASE)
    assert explanation.version == "v1"
    assert explanation.fingerprint == explanation.key.rsplit(":", 1)[1]
    assert explanation.fields == tuple(sorted(BASE))
    assert set(explanation.dropped) == {
        "sensitive",
        "request_id",
        "messages[0].id",
        "messages[1].id",
        "messages[1].created_at",
    }
    canonical = json.loads(explanation.canonical_json)
    assert canonical["messages"][1] == {"content": "What is 2+2?", "role": "user"}


def test_enum_and_mapping_subclasses_normalise() -> None:
    # str() of a (str, Enum) member is 'Role.USER', not 'user': the walk must not use it.
    class Role(str, enum.Enum):  # noqa: UP042
        USER = "user"

    class Count(enum.IntEnum):
        ONE = 1

    fingerprinter = RequestFingerprinter()
    plain = {"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 1}
    fancy = {
        "model": "m",
        "messages": [OrderedDict(role=Role.USER, content="x")],
        "n": Count.ONE,
    }
    assert fingerprinter.canonical(plain).fingerprint == fingerprinter.canonical(fancy).fingerprint


def test_custom_ignored_fields() -> None:
    fingerprinter = RequestFingerprinter(ignored_fields={"user"}, ignored_message_fields=())
    a = {"model": "m", "user": "u1", "messages": [{"role": "user", "content": "x", "id": 1}]}
    b = {"model": "m", "user": "u2", "messages": [{"role": "user", "content": "x", "id": 1}]}
    c = {"model": "m", "messages": [{"role": "user", "content": "x", "id": 2}]}
    assert fingerprinter.canonical(a).fingerprint == fingerprinter.canonical(b).fingerprint
    assert fingerprinter.canonical(a).fingerprint != fingerprinter.canonical(c).fingerprint


# -- property tests ------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False, width=64)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
        | st.dictionaries(st.integers(-5, 5), children, max_size=3)
    ),
    max_leaves=12,
)
requests = st.fixed_dictionaries(
    {
        "model": st.text(min_size=1, max_size=10).filter(str.strip),
        "messages": st.lists(
            st.fixed_dictionaries(
                {
                    "role": st.sampled_from(["system", "user", "assistant"]),
                    "content": st.text(max_size=60),
                }
            ),
            max_size=3,
        ),
    },
    optional={"temperature": json_values, "extra": json_values, "tools": json_values},
)


def _shuffled(value: Any, seed: int) -> Any:
    """The same value with every dict's keys in another order and integral ints as floats."""
    if isinstance(value, dict):
        items = [(k, _shuffled(v, seed)) for k, v in value.items()]
        rotate = seed % len(items) if items else 0
        return dict(items[rotate:] + items[:rotate])
    if isinstance(value, list):
        return [_shuffled(v, seed) for v in value]
    if type(value) is int and abs(value) < 2**53:
        return float(value)
    return value


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(request=requests, seed=st.integers(0, 10))
def test_fingerprint_ignores_key_order_and_int_float(request: dict[str, Any], seed: int) -> None:
    fingerprinter = RequestFingerprinter()
    original = fingerprinter.canonical(request)
    assert fingerprinter.canonical(_shuffled(request, seed)).fingerprint == original.fingerprint
    assert len(original.fingerprint) == 64


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(request=requests, seed=st.integers(0, 10))
def test_fast_and_slow_paths_agree(request: dict[str, Any], seed: int) -> None:
    """The encoder-only fast path gives exactly the walk's text, or steps aside."""
    fingerprinter = RequestFingerprinter()
    for candidate in (request, _shuffled(request, seed)):
        try:
            fast = fingerprinter.canonical(candidate)
        except InvalidInput:  # e.g. int and str keys in one object: both paths refuse
            with pytest.raises(InvalidInput):
                fingerprinter.canonical(candidate, dropped=[])
            continue
        slow = fingerprinter.canonical(candidate, dropped=[])  # forces the walk
        assert fast.canonical_json == slow.canonical_json
        assert fast.fingerprint == slow.fingerprint


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(request=requests, other=st.text(min_size=1, max_size=40))
def test_fingerprint_changes_with_any_message_content(request: dict[str, Any], other: str) -> None:
    fingerprinter = RequestFingerprinter()
    changed = copy.deepcopy(request)
    changed["messages"] = [*changed["messages"], {"role": "user", "content": other}]
    assert (
        fingerprinter.canonical(changed).fingerprint != fingerprinter.canonical(request).fingerprint
    )


# -- bad input -----------------------------------------------------------------

CYCLE: dict[str, Any] = {"model": "m", "tools": []}
CYCLE["tools"].append(CYCLE)

BAD_REQUESTS: dict[str, object] = {
    "not a dict": [("model", "m")],
    "a string": "gpt-4o",
    "None": None,
    "no model": {"messages": []},
    "empty model": {"model": "", "messages": []},
    "blank model": {"model": "  ", "messages": []},
    "model not str": {"model": 4, "messages": []},
    "a set": {"model": "m", "stop": {"a", "b"}},
    "bytes": {"model": "m", "messages": [{"role": "user", "content": b"hi"}]},
    "an object": {"model": "m", "tools": [object()]},
    "NaN": {"model": "m", "temperature": float("nan")},
    "infinity": {"model": "m", "top_p": float("inf")},
    "tuple key": {"model": "m", "logit_bias": {(1, 2): -100}},
    "mixed key types": {"model": "m", "logit_bias": {1: 1, "a": 2}},
    "a cycle": CYCLE,
    "messages not a list": {"model": "m", "messages": "hello"},
    "message not a dict": {"model": "m", "messages": ["hello"]},
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_request_is_invalid_input_everywhere(cache: LLMCache, name: str) -> None:
    request: Any = BAD_REQUESTS[name]
    calls: list[Callable[[], object]] = [
        lambda: cache.get(request),
        lambda: cache.set(request, "r"),
        lambda: cache.get_or_compute(request, lambda: "r"),
        lambda: cache.invalidate(request),
        lambda: cache.explain_key(request),
        lambda: cache.key(request),
    ]
    for call in calls:
        with pytest.raises(InvalidInput):
            call()


def test_bad_input_raises_even_while_redis_is_down(namespace: str) -> None:
    down = CacheClient.from_url(f"redis://127.0.0.1:{free_port()}/0", namespace=namespace)
    cache = LLMCache(down)
    with pytest.raises(InvalidInput):
        cache.get({"model": ""})
    with pytest.raises(InvalidInput):
        cache.set({"model": "m", "temperature": 0}, {"not": {"json"}})
    with pytest.raises(InvalidInput):
        cache.set({"model": "m", "temperature": 0}, "ok", ttl=0)
    with pytest.raises(InvalidInput):
        cache.invalidate_model("")
    assert cache.get({"model": "m", "temperature": 0}) is None  # and no exception
    down.close()
