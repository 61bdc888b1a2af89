"""Hostile input, fuzzed, through storage keys and uploads and the LLM-cache request
(sync and async), and every number the cache takes refusing NaN, infinity and bool."""

from __future__ import annotations

import copy
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cache.conftest import Api
from tests.cache.redis_env import REDIS_URL
from tests.reliability.test_fuzz_repositories import (
    EXAMPLES,
    NON_FINITE,
    anything,
    hostile_text,
    json_values,
)
from tests.support.modes import Mode
from toolkit.cache import CircuitBreaker
from toolkit.errors import Conflict, InvalidInput
from toolkit.storage.backends import LocalStorage
from toolkit.storage.keys import check_key

FUZZ = settings(
    max_examples=EXAMPLES * 4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)

# Path-like strings built from the pieces traversal attacks use.
path_pieces = st.sampled_from(
    [
        "..",
        ".",
        "/",
        "\\",
        "%2e%2e",
        "%2f",
        "%00",
        "\x00",
        "C:",
        "~",
        "a",
        "b.txt",
        "\n",
        "..%c0%af",
        "NUL",
        "con",
        " ",
        "\u202e",
        "\uff0e\uff0e",
        "\ud800",
    ]
)
keys = st.one_of(
    hostile_text,
    st.lists(path_pieces, min_size=1, max_size=8).map("".join),
    st.lists(path_pieces, min_size=1, max_size=6).map("/".join),
    anything,
)


@FUZZ
@given(key=keys)
def test_check_key_accepts_only_the_grammar(key: Any) -> None:
    try:
        checked = check_key(key)
    except InvalidInput:
        return
    assert isinstance(checked, str) and checked == key
    parts = checked.split("/")
    assert all(part not in ("", ".", "..") for part in parts)
    assert not any(ch in checked for ch in "\\%\x00:") and checked.isascii()
    assert all(ch.isprintable() for ch in checked)


@pytest.fixture
def local_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside.txt").write_text("must not change")
    return root


def outside(root: Path) -> set[Path]:
    """Everything beside the storage root (where a traversal would land)."""
    return {p for p in root.parent.rglob("*") if p != root and root not in p.parents}


@FUZZ
@given(
    key=keys,
    data=st.binary(max_size=2048),
    limit=st.integers(min_value=0, max_value=4096),
    claimed=st.one_of(st.none(), hostile_text),
)
def test_local_put_never_writes_outside_its_root(
    local_root: Path, key, data, limit, claimed
) -> None:
    storage = LocalStorage(local_root)
    before = outside(local_root)
    try:
        result = storage.put(key, data, max_bytes=limit, allowed_types=None, claimed_type=claimed)
    except (InvalidInput, Conflict):
        pass
    else:
        assert result.size == len(data) <= limit
        assert (local_root / result.key).read_bytes() == data
    assert outside(local_root) == before
    assert (local_root.parent / "outside.txt").read_text() == "must not change"
    assert not any(name.startswith(".tmp") for name in os.listdir(local_root))


@pytest.fixture
def api(mode: Mode) -> Api:
    """The cache constructors of the running mode (sync, or async through sync calls)."""
    return Api(mode)


@pytest.fixture
def llm(api: Api) -> Any:
    client = api.client(REDIS_URL, namespace=f"fz-{uuid.uuid4().hex[:8]}")
    cache = api.llm(client, cache_nondeterministic=True)
    yield cache
    cache.invalidate_all()
    client.clear()
    client.close()


@FUZZ
@given(
    request=st.one_of(
        anything,
        st.dictionaries(hostile_text, json_values, max_size=6),
        st.fixed_dictionaries({"model": hostile_text, "messages": json_values}),
    ),
    response=json_values,
)
def test_llm_cache_requests_raise_only_invalid_input(llm, request, response) -> None:
    try:
        key = llm.key(request)
    except InvalidInput:
        return
    assert llm.key(copy.deepcopy(request)) == key  # stable: an equal request, the same key
    assert isinstance(request, dict)
    for text in _strings(request):
        if len(text) >= 8:
            assert text not in key  # the prompt never appears in a key
    try:
        stored = llm.set(request, response)
    except InvalidInput:
        return
    if stored:
        assert llm.get(request) is not None, "a stored response did not read back"


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


# Not numbers of seconds: NaN, sNaN, infinities (float and Decimal), bool, text,
# and an int too large for a float (float() of it raises OverflowError).
NOT_SECONDS = [*NON_FINITE, True, "1", 10**400, 0, -1]


@pytest.mark.parametrize("bad", NOT_SECONDS, ids=repr)
def test_cache_seconds_refuse_nan_infinity_and_bool(api: Api, bad: Any) -> None:
    """Every TTL and timeout of the cache client, the LLM cache and the breaker."""
    client = api.client(REDIS_URL, namespace=f"fz-{uuid.uuid4().hex[:8]}")
    try:
        for build in (
            lambda: api.client(REDIS_URL, connect_timeout=bad),
            lambda: api.client(REDIS_URL, socket_timeout=bad),
            lambda: api.client(REDIS_URL, default_ttl=bad),
            lambda: client.set("k", "v", ttl=bad),
            lambda: client.set_json("k", 1, ttl=bad),
            lambda: client.set_many({"k": "v"}, ttl=bad),
            lambda: api.llm(client, ttl=bad),
            lambda: api.llm(client, lease_ttl=bad),
            lambda: api.llm(client, wait_timeout=bad),
            lambda: api.llm(client, poll_interval=bad),
            lambda: api.llm(client).set({"model": "m", "messages": []}, "r", ttl=bad),
            lambda: api.llm(client).get_or_compute(
                {"model": "m", "messages": []}, lambda: "r", lease_ttl=bad
            ),
            lambda: api.llm(client).get_or_compute(
                {"model": "m", "messages": []}, lambda: "r", wait_timeout=bad
            ),
            lambda: CircuitBreaker(recovery_timeout=bad),
        ):
            with pytest.raises(InvalidInput):
                build()
    finally:
        client.clear()
        client.close()


@pytest.mark.parametrize("bad", [*NON_FINITE, True, 1, 1.5, -0.1, "0.1", 10**400], ids=repr)
def test_llm_cache_counts_and_fractions_refuse_non_numbers(api: Api, bad: Any) -> None:
    """ttl_jitter is a number in [0, 1); compress_threshold and max_entry_bytes whole
    numbers: anything else (a Decimal NaN, whose comparison raises, included) is
    InvalidInput."""
    client = api.client(REDIS_URL, namespace=f"fz-{uuid.uuid4().hex[:8]}")
    try:
        with pytest.raises(InvalidInput):
            api.llm(client, ttl_jitter=bad)
        if not (isinstance(bad, int) and not isinstance(bad, bool) and bad >= 1):
            with pytest.raises(InvalidInput):
                api.llm(client, compress_threshold=bad)
            with pytest.raises(InvalidInput):
                api.llm(client, max_entry_bytes=bad)
    finally:
        client.close()
