"""The entry format, without Redis: round trips, stale entries, strict parsing."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit.cache import codec

GENS = (b"0123456789abcdef", b"fedcba9876543210")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    # Long strings, built cheaply (drawing thousands of characters is slow).
    | st.text(min_size=1, max_size=4).map(lambda t: t * (codec.SPLIT_MIN_CHARS // len(t) + 1)),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)


def entry(response: Any, *, threshold: int | None = None, usage: Any = None) -> bytes:
    return codec.encode_entry(
        codec.encode_body(response),
        generations=GENS,
        model="m",
        created_at=1.5,
        usage=usage,
        compress_threshold=threshold,
    )


@settings(max_examples=80, deadline=None, derandomize=True, database=None)
@given(response=json_values, compress=st.booleans())
def test_every_json_response_round_trips(response: Any, compress: bool) -> None:
    data = entry(response, threshold=0 if compress else None, usage={"total_tokens": 3})
    assert codec.decode(data, *GENS) == ("m", 1.5, {"total_tokens": 3}, response)


def test_body_kinds() -> None:
    assert entry("text")[33:34] == b"s"
    assert entry({"a": "short"})[33:34] == b"j"
    assert entry({"a": "x" * codec.SPLIT_MIN_CHARS})[33:34] == b"p"
    assert entry(["x" * codec.SPLIT_MIN_CHARS])[33:34] == b"p"
    assert entry(["x" * (codec.SPLIT_MIN_CHARS - 1)])[33:34] == b"j"


def test_other_generations_are_stale() -> None:
    data = entry("text")
    assert codec.decode(data, GENS[0], b"x" * 16) is None
    assert codec.decode(data, b"y" * 16, GENS[1]) is None
    assert codec.decode(data, None, GENS[1]) is None


def test_compression_only_at_the_threshold() -> None:
    assert entry("a" * 10_000, threshold=0)[0] == codec.MARK_ZLIB
    assert entry("a" * 10_000, threshold=20_000)[0] == codec.MARK_PLAIN
    assert entry("a" * 10_000, threshold=None)[0] == codec.MARK_PLAIN
    assert entry("ab", threshold=0)[0] == codec.MARK_PLAIN  # zlib would not save 10 %


@pytest.mark.parametrize("text", ["", " 1", "1 ", "[1", "{}x", "nul", "tru"])
def test_loads_is_strict(text: str) -> None:
    with pytest.raises(ValueError):
        codec.loads(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", 1), ("-2.5", -2.5), ('"s"', "s"), ("null", None), ('{"a":[1,{}]}', {"a": [1, {}]})],
)
def test_loads(text: str, value: Any) -> None:
    assert codec.loads(text) == value


def test_bad_generations_are_refused() -> None:
    with pytest.raises(ValueError):
        codec.encode_entry(
            codec.encode_body("x"),
            generations=(b"short", GENS[1]),
            model="m",
            created_at=0.0,
            usage=None,
            compress_threshold=None,
        )


def test_usage_is_stored_once() -> None:
    response = {"choices": [], "usage": {"total_tokens": 9}}
    same = entry(response, usage={"total_tokens": 9})
    assert b'"u"' not in same  # the response carries it
    assert codec.decode(same, *GENS) == ("m", 1.5, {"total_tokens": 9}, response)
    other = entry(response, usage={"total_tokens": 10})
    assert b'"u":{"total_tokens":10}' in other
    assert codec.decode(other, *GENS) == ("m", 1.5, {"total_tokens": 10}, response)
    assert codec.decode(entry(response, usage=None), *GENS) == ("m", 1.5, None, response)


def test_usage_left_out_needs_one_in_the_response() -> None:
    data = entry({"choices": [], "usage": {"t": 1}}, usage={"t": 1})
    broken = data.replace(b'"usage":{"t":1}', b'"usage":7')
    with pytest.raises(codec.CorruptEntryError):
        codec.decode(broken, *GENS)
