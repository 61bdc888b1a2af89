"""The cache holds no secrets and trusts nothing it reads (issue 13, item 5).

Against the real Redis, one namespace per test: secret shapes and dict keys,
the in-process memos, a zlib bomb written straight into Redis, and HMAC
integrity of entries under ``TOOLKIT_CACHE_HMAC_KEY`` (the setting here; the
entries themselves, in both modes, in test_integrity.py).
"""

from __future__ import annotations

import tracemalloc
import zlib
from typing import Any

import pytest
import redis

from toolkit.cache import BypassReason, CacheClient, LLMCache, SecretDetector, codec, fingerprint
from toolkit.config import load_settings
from toolkit.errors import ConfigurationError, InvalidInput

from .redis_env import HEALTHY_TIMEOUT, REDIS_URL
from .test_llm_cache import request, stored_keys

# Planted test secrets, assembled at run time so no scanner mistakes this file for a leak.
NEW_SECRETS = {
    "stripe_key": "sk_" + "live_" + "4eC39HqLyjWDarjtT1zdp7dc",
    "hugging_face_token": "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz01234567",
    "gitlab_token": "glpat" + "-" + "xZ4y1B7c2D8e3F9g0H5i",
    "azure_shared_key": "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey="
    + "Zm9vYmFyYmF6cXV4" * 5
    + "AbCdEfGh==;EndpointSuffix=core.windows.net",
    "azure_sas_signature": "https://acme.blob.core.windows.net/c/b.txt?sv=2022-11-02&sp=r&sig="
    + "pQ3%2BzX9kLm0nOp1qRs2tUv3wXy4zA5bC6dE7fG8h%3D",
    "azure_client_secret": "kT48Q~" + "aBcD-eFgH.iJkL_mNoP~qRsTuVwXyZ0123",
    "url_password": "connect to postgresql://app:Tr0ub4dor3@db.internal:5432/prod",
}
MORE_SHAPES = {
    "rk_test": ("stripe_key", "rk_" + "test_" + "51Hq2bC3dE4fG5hI6jK7lM8n"),
    "redis_url_password_only": ("url_password", "redis://:s3cr3tpass@cache:6379/0"),
    "service_bus": (
        "azure_shared_key",
        "Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=Root;"
        "SharedAccessKey=" + "q1W2e3R4t5Y6u7I8o9P0aSdFgHjKlZxCvBnM1234567=",
    ),
}
HARMLESS = [
    "postgresql://app:***@db.internal:5432/prod",  # masked by mask_password
    "https://user@example.com/path",  # a user, no password
    "https://api.openai.com/v1/chat/completions",
    "write to alice@example.com about the sig=short thing",
    "the skate_live_stream and sk_live_ without a key",
    "shelf_life is a field name",
]

INTEGRITY_KEY = "k" * 32
OTHER_KEY = "z" * 32


def make_client(namespace: str, hmac_key: str | None) -> CacheClient:
    return CacheClient.from_url(
        REDIS_URL,
        namespace=namespace,
        connect_timeout=HEALTHY_TIMEOUT,
        socket_timeout=HEALTHY_TIMEOUT,
        hmac_key=hmac_key,
    )


# -- secret shapes --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(NEW_SECRETS))
def test_new_secret_shapes_are_found(name: str) -> None:
    assert SecretDetector().find(f"text before {NEW_SECRETS[name]} and after") == name


@pytest.mark.parametrize("case", sorted(MORE_SHAPES))
def test_variants_of_the_new_shapes_are_found(case: str) -> None:
    name, text = MORE_SHAPES[case]
    assert SecretDetector().find(text) == name


@pytest.mark.parametrize("text", HARMLESS)
def test_near_misses_are_not_secrets(text: str) -> None:
    assert SecretDetector().find(text) is None


@pytest.mark.parametrize("name", sorted(NEW_SECRETS))
def test_request_holding_a_new_shape_is_never_stored(
    llm: LLMCache, client: CacheClient, raw_redis: redis.Redis, name: str
) -> None:
    leaky = request(f"why does {NEW_SECRETS[name]} fail?")
    assert not llm.set(leaky, "rotate it")
    assert llm.get_or_compute(leaky, lambda: "ok").from_cache is False
    assert stored_keys(raw_redis, client) == []
    assert llm.stats().bypass_reasons == {BypassReason.SECRET_IN_REQUEST: 2}


def top_level_key(secret: str) -> dict[str, Any]:
    return request(extra_headers={secret: "1"})


def tool_schema_key(secret: str) -> dict[str, Any]:
    parameters = {"type": "object", "properties": {secret: {"type": "string"}}}
    return request(
        tools=[{"type": "function", "function": {"name": "f", "parameters": parameters}}]
    )


def message_key(secret: str) -> dict[str, Any]:
    built = request()
    built["messages"][1][secret] = "x"
    return built


@pytest.mark.parametrize("build", [top_level_key, tool_schema_key, message_key])
def test_secret_in_a_dict_key_bypasses(
    llm: LLMCache, client: CacheClient, raw_redis: redis.Redis, build: Any
) -> None:
    leaky = build(NEW_SECRETS["hugging_face_token"])
    assert not llm.set(leaky, "no")
    assert llm.get(leaky) is None
    assert stored_keys(raw_redis, client) == []
    assert llm.stats().bypass_reasons == {BypassReason.SECRET_IN_REQUEST: 2}
    # The same shape of request with a harmless key is cached: the key made the difference.
    assert llm.set(build("harmless_name"), "yes")


def test_fingerprinter_collects_keys_with_values() -> None:
    strings = fingerprint.RequestFingerprinter().strings(tool_schema_key("the_key"))
    assert "the_key" in strings
    assert "You are terse." in strings


# -- in-process memos -------------------------------------------------------------


def test_secret_bearing_request_is_not_memoised(client: CacheClient) -> None:
    detector = SecretDetector()
    llm = LLMCache(client, secret_detector=detector)
    system_prompt = "You are the billing assistant of request memo test."
    leaky = request(f"my key {NEW_SECRETS['stripe_key']}")
    leaky["messages"][0]["content"] = system_prompt
    clean = request("a clean question from bob@example.com")
    llm.get(leaky)
    llm.set(leaky, "x")
    llm.get_or_compute(leaky, lambda: "x")
    llm.get(clean)
    assert not fingerprint.memoised(llm.explain_key(leaky).canonical_json)
    assert fingerprint.memoised(llm.explain_key(clean).canonical_json)  # the control
    # Nothing of the secret-bearing request stays in the detector's memory either.
    assert not detector.remembers(system_prompt)
    assert detector.remembers("a clean question from bob@example.com")  # hint "@": scanned


def test_sensitive_request_is_dropped_from_the_memos(client: CacheClient) -> None:
    detector = SecretDetector()
    llm = LLMCache(client, secret_detector=detector)
    plain = request("medical history of patient pat@example.com")
    llm.get(plain)  # first sent unmarked: memoised
    text = llm.explain_key(plain).canonical_json
    assert fingerprint.memoised(text)
    assert detector.remembers("medical history of patient pat@example.com")
    marked = {**plain, "sensitive": True}
    assert llm.explain_key(marked).canonical_json == text  # the flag is not in the key
    llm.get(marked)
    assert not fingerprint.memoised(text)
    assert not detector.remembers("medical history of patient pat@example.com")
    llm.get_or_compute(marked, lambda: "x")
    assert not fingerprint.memoised(text)


def test_clean_batch_only_is_remembered() -> None:
    detector = SecretDetector()
    assert detector.scan_strings(["first clean text", NEW_SECRETS["gitlab_token"]])
    assert not detector.remembers("first clean text")
    assert not detector.scan_strings(["first clean text"])
    assert detector.remembers("first clean text")


# -- decompression cap ---------------------------------------------------------------


def zlib_bomb(inflated_bytes: int) -> bytes:
    """A compressed entry inflating to ``inflated_bytes``, built in 1 MiB steps."""
    packer = zlib.compressobj(9)
    header = b"0" * (2 * codec.GENERATION_BYTES) + b's{"m":"m","c":1}\n'
    chunks = [packer.compress(header)]
    zeros = bytes(1 << 20)
    for _ in range(inflated_bytes >> 20):
        chunks.append(packer.compress(zeros))
    chunks.append(packer.flush())
    return bytes((codec.MARK_ZLIB,)) + b"".join(chunks)


def test_a_stored_zlib_bomb_allocates_at_most_the_maximum(
    client: CacheClient, raw_redis: redis.Redis
) -> None:
    limit = 1 << 20
    llm = LLMCache(client, max_entry_bytes=limit)
    bomb = zlib_bomb(256 << 20)
    assert len(bomb) < 1 << 20  # a small stored value...
    key = llm.key(request())
    raw_redis.set(key, bomb)
    tracemalloc.start()
    try:
        found = llm.get(request())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found is None
    assert peak < 3 * limit  # ...that would inflate to 256 MiB without the cap
    stats = llm.stats()
    assert (stats.corrupt, stats.misses, stats.hits) == (1, 1, 0)
    assert raw_redis.exists(key) == 0


def test_entries_up_to_the_maximum_still_round_trip(
    client: CacheClient, raw_redis: redis.Redis
) -> None:
    llm = LLMCache(client, max_entry_bytes=256 * 1024, compress_threshold=0)
    text = "the answer " * 20_000  # 220 KB, compressed in Redis
    assert llm.set(request(), text)
    assert raw_redis.get(llm.key(request()))[:1] == bytes((codec.MARK_ZLIB,))  # type: ignore[index]
    found = llm.get(request())
    assert found is not None
    assert found.response == text
    # One larger is not written at all: it could never be read back.
    assert not llm.set(request("too big"), text * 2)
    assert llm.stats().bypass_reasons == {BypassReason.TOO_LARGE: 1}


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda data: data[:-10], "truncated"),
        (lambda data: data + b"tail", "after the zlib stream"),
        (lambda data: data[:1] + b"not zlib at all", "bad zlib data"),
    ],
)
def test_damaged_compressed_entries_are_corrupt(mangle: Any, message: str) -> None:
    data = codec.encode_entry(
        codec.encode_body("x" * 50_000),
        generations=(b"a" * 16, b"b" * 16),
        model="m",
        created_at=1.0,
        usage=None,
        compress_threshold=0,
    )
    assert codec.decode(data, b"a" * 16, b"b" * 16) is not None
    with pytest.raises(codec.CorruptEntryError, match=message):
        codec.decode(mangle(data), b"a" * 16, b"b" * 16)


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "1"])
def test_bad_max_entry_bytes(client: CacheClient, value: object) -> None:
    with pytest.raises(InvalidInput, match="max_entry_bytes"):
        LLMCache(client, max_entry_bytes=value)  # type: ignore[arg-type]


def test_the_setting_turns_signing_on_and_is_masked(
    namespace: str, raw_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOOLKIT_CACHE_HMAC_KEY", INTEGRITY_KEY)
    monkeypatch.setenv("TOOLKIT_REDIS_URL", REDIS_URL)
    settings = load_settings()
    assert settings.cache_hmac_key == INTEGRITY_KEY
    assert INTEGRITY_KEY not in repr(settings)
    assert INTEGRITY_KEY not in str(settings)
    client = CacheClient.from_settings(settings, namespace)
    try:
        cache = LLMCache(client)
        assert cache.set(request(), "signed by the setting")
        stored = raw_redis.get(cache.key(request()))
        assert stored is not None
        assert stored[0] == codec.MARK_SIGNED
        assert INTEGRITY_KEY not in repr(client.signer)
    finally:
        client.close()


def test_a_short_key_is_refused_without_echoing_it(namespace: str) -> None:
    short = "tooShort1"
    with pytest.raises(ConfigurationError, match="TOOLKIT_CACHE_HMAC_KEY") as config_error:
        load_settings(cache_hmac_key=short)
    assert short not in str(config_error.value)
    with pytest.raises(InvalidInput, match="hmac_key") as input_error:
        make_client(namespace, short)
    assert short not in str(input_error.value)
