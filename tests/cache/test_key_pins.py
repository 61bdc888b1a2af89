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

from toolkit.cache import RequestFingerprinter

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
