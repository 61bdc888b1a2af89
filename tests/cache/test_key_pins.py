"""Known request -> fingerprint pairs, computed before the hit path was optimised.

Entries already in Redis are found by these exact keys: any change to how a
request becomes its key (a memo, a faster encoder) must give the same bytes.
Each request is looked up several ways (first call, repeated call, an equal
copy, through ``LLMCache.key`` and a lookup) since a memo may answer a repeat.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import redis

from toolkit.cache import CacheClient, LLMCache, RequestFingerprinter

PINNED: dict[str, tuple[dict[str, Any], str]] = {
    "chat": (
        {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
                {"role": "user", "content": "the model returns a short answer"},
            ],
            "temperature": 0,
            "max_tokens": 512,
        },
        "adf5619d8a54ad771decf62d4e78ff1ba9e98176425f2d419fa37913ceeb1295",
    ),
    "floats": (
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": 1.0,
            "top_p": 0.5,
            "seed": -0.0,
            "presence_penalty": 1e20,
        },
        "36b079f608f311e052cec9c93e3e12686e48d3ae454cec352086d68826272d06",
    ),
    "bools": (
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": False,
            "stream": True,
            "n": 1,
        },
        "548ca760ce2b86b022d46e2baf1a3ad04f86920afd27cdf1d91c859ca9c67d00",
    ),
    "ints_as_bools": (
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0,
            "stream": 1,
            "n": True,
        },
        "2ddb0c0422c1aa46e8c2a1a48de51ada6004f311099c45b84389b2e9bb3637a2",
    ),
    "ignored": (
        {
            "model": "m",
            "request_id": "r1",
            "sensitive": False,
            "messages": [{"role": "user", "content": "hi", "id": "x", "created_at": "t"}],
            "base_url": "https://x/v1/",
        },
        "8a631c249e062c25ad836ffab93392b5a589d48847108b391501ceb157be97ae",
    ),
    "unicode": (
        {
            "model": "m\u00e9",
            "messages": [{"role": "user", "content": 'caf\u00e9 \U0001f600 "q" \\ \n\t\u2028'}],
            "temperature": 0,
        },
        "7c4470f65554083cd5b85a8726cbec0a067502ea21a90dc33606592a9ed01f13",
    ),
    "tools": (
        {
            "model": "m",
            "messages": (
                {
                    "role": "user",
                    "content": None,
                    "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}],
                },
            ),
            "tools": [
                {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
            ],
            "logit_bias": {50256: -100},
            "stop": ("a", "b"),
            "temperature": 0,
        },
        "6f06a0836d989eb44cebbc2b1c7f31f38ae5cd378edc49aa6aec834b84f29945",
    ),
    "no_messages": (
        {"model": "m", "prompt": "x", "temperature": 0.0},
        "0f94e792e51df889aff81aac52acbe275dddc6807c1fac86565ccd5a68df2105",
    ),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_a_request_keeps_its_pinned_fingerprint(name: str) -> None:
    request, pinned = PINNED[name]
    fingerprinter = RequestFingerprinter()
    assert fingerprinter.canonical(request).fingerprint == pinned
    assert fingerprinter.canonical(request).fingerprint == pinned  # a repeat (memos warm)
    assert fingerprinter.canonical(copy.deepcopy(request)).fingerprint == pinned
    assert RequestFingerprinter().canonical(request).fingerprint == pinned


# -- the memo of requests seen before (RequestFingerprinter.recall) -------------------


def _remembered(fingerprinter: RequestFingerprinter, request: dict[str, Any]) -> None:
    """As LLMCache does for a clean request: a chat request is imaged the second time."""
    canonical = fingerprinter.canonical(request)
    token, _ = fingerprinter.recall(request)
    fingerprinter.remember(token, canonical)
    if type(token) is int:
        token, _ = fingerprinter.recall(request)
        fingerprinter.remember(token, canonical)
    assert type(token) is bytes


def test_a_chat_request_is_imaged_from_its_second_sighting() -> None:
    request = PINNED["chat"][0]
    fingerprinter = RequestFingerprinter()
    canonical = fingerprinter.canonical(request)
    first, found = fingerprinter.recall(request)
    assert type(first) is int and found is None  # a hash only: no image of a fresh request
    fingerprinter.remember(first, canonical)
    assert not fingerprinter.remembers(canonical)
    second, found = fingerprinter.recall(request)
    assert type(second) is bytes and found is None
    fingerprinter.remember(second, canonical)
    assert fingerprinter.recall(request) == (second, canonical)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_a_recalled_request_gives_its_pinned_fingerprint(name: str) -> None:
    request, pinned = PINNED[name]
    fingerprinter = RequestFingerprinter()
    _remembered(fingerprinter, request)
    for same in (request, copy.deepcopy(request)):
        _, canonical = fingerprinter.recall(same)
        assert canonical is not None and canonical.fingerprint == pinned


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # Equal in Python, different keys: the memo must tell them apart.
        ("ints_as_bools", "bools"),
        ("bools", "ints_as_bools"),
    ],
)
def test_equal_but_differently_typed_requests_are_told_apart(first: str, second: str) -> None:
    assert PINNED[first][0]["messages"] == PINNED[second][0]["messages"]
    fingerprinter = RequestFingerprinter()
    _remembered(fingerprinter, PINNED[first][0])
    _, canonical = fingerprinter.recall(PINNED[second][0])
    assert canonical is None or canonical.fingerprint == PINNED[second][1]


def test_a_float_key_is_not_recalled_as_an_int_key() -> None:
    with_int = {"model": "m", "logit_bias": {1: -100}, "temperature": 0}
    with_float = {"model": "m", "logit_bias": {1.0: -100}, "temperature": 0}
    assert with_int == with_float  # equal dicts, but JSON writes the keys "1" and "1.0"
    fingerprinter = RequestFingerprinter()
    _remembered(fingerprinter, with_int)
    _, canonical = fingerprinter.recall(with_float)
    assert canonical is None or canonical == fingerprinter.canonical(with_float)
    assert fingerprinter.canonical(with_float) != fingerprinter.canonical(with_int)


def test_a_request_changed_in_place_is_not_recalled() -> None:
    request = copy.deepcopy(PINNED["chat"][0])
    fingerprinter = RequestFingerprinter()
    _remembered(fingerprinter, request)
    request["messages"][1]["content"] = "another question"
    _, canonical = fingerprinter.recall(request)
    assert canonical is None
    request["messages"][1]["content"] = "the model returns a short answer"
    _, canonical = fingerprinter.recall(request)  # back as it was: recalled again
    assert canonical is not None and canonical.fingerprint == PINNED["chat"][1]


def test_objects_marshal_cannot_tell_apart_are_never_recalled() -> None:
    class Text(str):
        __slots__ = ()

        def __eq__(self, other: object) -> bool:  # claims to equal anything
            return True

        __hash__ = str.__hash__

    request = {"model": "m", "messages": [{"role": "user", "content": Text("hi")}]}
    fingerprinter = RequestFingerprinter()
    _remembered(fingerprinter, {"model": "m", "messages": [{"role": "user", "content": "yo"}]})
    assert fingerprinter.recall(request) == (None, None)


def test_forget_drops_every_image_of_a_text() -> None:
    fingerprinter = RequestFingerprinter()
    request = PINNED["chat"][0]
    reordered = dict(reversed(list(request.items())))  # same key, another image
    _remembered(fingerprinter, request)
    _remembered(fingerprinter, reordered)
    canonical = fingerprinter.canonical(request)
    assert fingerprinter.remembers(canonical)
    fingerprinter.forget(canonical)
    assert not fingerprinter.remembers(canonical)
    assert fingerprinter.recall(request)[1] is None
    assert fingerprinter.recall(reordered)[1] is None


# -- through LLMCache: the keys its lookups read -------------------------------------


@pytest.mark.parametrize("name", ["chat", "floats", "bools", "ints_as_bools", "unicode", "tools"])
def test_repeated_lookups_read_the_pinned_key(
    client: CacheClient, raw_redis: redis.Redis, name: str
) -> None:
    request, pinned = PINNED[name]
    llm = LLMCache(client, cache_nondeterministic=True)
    assert llm.set(request, f"answer to {name}")
    entry = f"{client.namespace}:llm:v1:{{shared}}:{pinned}"
    assert raw_redis.exists(entry)
    for _ in range(3):  # the first lookup remembers the request, the next recall it
        found = llm.get(copy.deepcopy(request))
        assert found is not None and found.response == f"answer to {name}"
        assert llm.get(request) == found
    raw_redis.set(entry + "-moved", raw_redis.get(entry) or b"")
    raw_redis.delete(entry)
    assert llm.get(request) is None  # read from the pinned key, not from a memo of the answer


def test_a_request_changed_in_place_reads_its_new_key(client: CacheClient) -> None:
    llm = LLMCache(client, cache_nondeterministic=True)  # temperature False is looked up too
    request = copy.deepcopy(PINNED["chat"][0])
    assert llm.set(request, "first")
    assert llm.get(request) is not None and llm.get(request).response == "first"
    request["messages"][1]["content"] = "a second question"
    assert llm.get(request) is None
    assert llm.set(request, "second")
    assert llm.get(request).response == "second"
    request["temperature"] = False  # == 0 in Python, another key
    assert llm.get(request) is None


def test_a_sensitive_request_leaves_the_fingerprinters_memo(client: CacheClient) -> None:
    fingerprinter = RequestFingerprinter()
    llm = LLMCache(client, fingerprinter=fingerprinter)
    plain = copy.deepcopy(PINNED["chat"][0])
    canonical = fingerprinter.canonical(plain)
    llm.get(plain)
    llm.get(plain)  # the second sighting remembers it
    assert fingerprinter.remembers(canonical)
    llm.get({**plain, "sensitive": True})
    assert not fingerprinter.remembers(canonical)
    llm.get({**plain, "sensitive": True})
    assert not fingerprinter.remembers(canonical)


def test_replacing_the_ignored_fields_empties_the_memo() -> None:
    request = {**PINNED["chat"][0], "user": "u1"}
    fingerprinter = RequestFingerprinter()
    _remembered(fingerprinter, request)
    assert fingerprinter.recall(request)[1] is not None
    fingerprinter.ignored_fields = fingerprinter.ignored_fields | {"user"}
    _, canonical = fingerprinter.recall(request)
    assert canonical is None  # "user" is out of the key now: the old answer is gone
    assert fingerprinter.canonical(request).fingerprint == PINNED["chat"][1]
