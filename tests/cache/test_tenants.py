"""Tenants in the LLM cache, in both modes: one tenant's identical request never hits
another's entry; the shared namespace is shared; each tenant's entries are signed with
its own derived key; invalidation is per tenant; every key of a tenant hashes to one
Redis Cluster slot.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from toolkit.cache import LLMCache, codec
from toolkit.cache.entries import open_generation
from toolkit.errors import InvalidInput

from .conftest import Api
from .redis_env import REDIS_URL
from .test_llm_cache import request
from .test_secrets_and_integrity import INTEGRITY_KEY

pytestmark = pytest.mark.usefixtures("mode")

TENANT_A = uuid.UUID("0b8a4f0e-5d3c-4a51-9c1e-0a6a1f7e2b01")
TENANT_B = uuid.UUID("5f2d9c77-8e41-4f0a-b3d6-6c1e9a0d4b02")


@pytest.fixture
def signed_client(namespace: str, api: Api) -> Any:
    client = api.client(REDIS_URL, namespace=namespace, hmac_key=INTEGRITY_KEY)
    yield client
    client.close()


@pytest.fixture
def signed(signed_client: Any, api: Api) -> Any:
    """A signing LLM cache of the shared namespace."""
    return api.llm(signed_client)


def unwrap(cache: Any) -> Any:
    """The cache object itself (an async one comes wrapped for sync calls)."""
    return getattr(cache, "target", cache)


def derived_key(main: str, tenant: uuid.UUID) -> bytes:
    """A tenant's signing key as the README documents it, computed independently."""
    return hmac.new(main.encode(), b"toolkit tenant " + tenant.bytes, hashlib.sha256).digest()


# -- isolation -----------------------------------------------------------------------


def test_two_tenants_identical_request_never_share_an_entry(llm: LLMCache) -> None:
    a, b = llm.for_tenant(TENANT_A), llm.for_tenant(TENANT_B)
    assert a.set(request(), "A's answer")
    assert b.get(request()) is None
    assert llm.get(request()) is None  # nor the shared namespace
    assert b.set(request(), "B's answer")
    assert a.get(request()).response == "A's answer"  # type: ignore[union-attr]
    assert b.get(request()).response == "B's answer"  # type: ignore[union-attr]
    computed = b.get_or_compute(request("other"), lambda: "B computed")
    assert not computed.from_cache
    assert a.get(request("other")) is None


def test_the_shared_namespace_is_shared(llm: LLMCache, api: Api, namespace: str) -> None:
    other_client = api.client(REDIS_URL, namespace=namespace)
    try:
        other = api.llm(other_client, tenant=None)
        assert llm.tenant is None and other.tenant is None
        assert llm.set(request(), "everyone's answer")
        assert other.get(request()).response == "everyone's answer"
        assert llm.key(request()) == other.key(request())
    finally:
        other_client.close()


def test_a_tenant_given_at_construction_or_bound_later_is_the_same_cache(
    llm: LLMCache, client: Any, api: Api
) -> None:
    built = api.llm(client, tenant=str(TENANT_A).upper())
    bound = llm.for_tenant(TENANT_A)
    assert built.tenant == bound.tenant == TENANT_A
    assert built.key(request()) == bound.key(request())
    assert built.set(request(), "one entry")
    assert bound.get(request()).response == "one entry"  # type: ignore[union-attr]
    # Rebinding: to the same tenant is the cache itself; to another, that tenant's.
    assert unwrap(bound.for_tenant(str(TENANT_A))) is unwrap(bound)
    assert bound.for_tenant(TENANT_B).get(request()) is None
    assert "tenant='shared'" in repr(llm) and str(TENANT_A) in repr(bound)


@pytest.mark.parametrize(
    "bad", [None, "", "not-a-uuid", 42, TENANT_A.bytes, str(TENANT_A) + "0", True]
)
def test_a_tenant_that_is_not_a_uuid_is_refused(
    llm: LLMCache, client: Any, api: Api, bad: object
) -> None:
    with pytest.raises(InvalidInput) as raised:
        llm.for_tenant(bad)  # type: ignore[arg-type]
    assert raised.value.field == "tenant"
    if bad is not None:  # None is the shared namespace at construction
        with pytest.raises(InvalidInput):
            api.llm(client, tenant=bad)


def test_a_tenant_never_waits_on_another_tenants_lease(
    llm: LLMCache, raw_redis: redis.Redis
) -> None:
    a, b = llm.for_tenant(TENANT_A), llm.for_tenant(TENANT_B)
    prefix, fingerprint = a.key(request()).rsplit(":", 1)
    raw_redis.set(f"{prefix}:lease:{fingerprint}", "another process", px=10_000)
    started = time.monotonic()
    assert b.get_or_compute(request(), lambda: "B", wait_timeout=5).response == "B"
    assert time.monotonic() - started < 2  # B took its own lease, it did not wait on A's
    started = time.monotonic()
    assert a.get_or_compute(request(), lambda: "A", wait_timeout=0.3).response == "A"
    assert time.monotonic() - started >= 0.3  # A did wait on its own


# -- invalidation ----------------------------------------------------------------------


@pytest.mark.parametrize("invalidate", ["invalidate_all", "invalidate_model", "invalidate"])
def test_invalidating_one_tenant_leaves_the_others(llm: LLMCache, invalidate: str) -> None:
    a, b = llm.for_tenant(TENANT_A), llm.for_tenant(TENANT_B)
    for cache in (a, b, llm):
        assert cache.set(request(), "kept")
    argument = {"invalidate_all": (), "invalidate_model": ("gpt-4o-mini",)}.get(
        invalidate, (request(),)
    )
    assert getattr(a, invalidate)(*argument)
    assert a.get(request()) is None
    assert b.get(request()).response == "kept"  # type: ignore[union-attr]
    assert llm.get(request()).response == "kept"  # type: ignore[union-attr]
    # And the other way round: the shared namespace's invalidation leaves the tenants'.
    assert a.set(request(), "A again")
    assert getattr(llm, invalidate)(*argument)
    assert llm.get(request()) is None
    assert a.get(request()).response == "A again"  # type: ignore[union-attr]
    assert b.get(request()).response == "kept"  # type: ignore[union-attr]


# -- signing ---------------------------------------------------------------------------


def test_an_entry_copied_to_another_tenants_key_is_refused(
    signed: LLMCache, raw_redis: redis.Redis
) -> None:
    a, b = signed.for_tenant(TENANT_A), signed.for_tenant(TENANT_B)
    assert a.set(request(), "A's private answer")
    assert b.set(request("warm"), "B's generations exist")  # B's generation keys are valid
    stored = raw_redis.get(a.key(request()))
    assert stored is not None
    raw_redis.set(b.key(request()), stored, ex=60)
    before = b.stats()
    assert b.get(request()) is None
    after = b.stats()
    assert after.integrity_failures == before.integrity_failures + 1
    assert after.misses == before.misses + 1
    assert raw_redis.exists(b.key(request())) == 0  # deleted
    assert a.get(request()).response == "A's private answer"  # type: ignore[union-attr]


def test_each_tenant_signs_with_a_key_derived_from_the_main_one(
    signed: LLMCache, signed_client: Any, raw_redis: redis.Redis
) -> None:
    a = signed.for_tenant(TENANT_A)
    assert a.set(request(), "signed for A")
    assert signed.set(request(), "signed for everyone")
    main = codec.Signer(INTEGRITY_KEY.encode())
    a_signer = codec.Signer(derived_key(INTEGRITY_KEY, TENANT_A))
    entry = raw_redis.get(a.key(request()))
    assert entry is not None
    a_signer.verify(a.key(request()), entry)
    with pytest.raises(codec.ForgedEntryError):
        main.verify(a.key(request()), entry)
    with pytest.raises(codec.ForgedEntryError):
        codec.Signer(derived_key(INTEGRITY_KEY, TENANT_B)).verify(a.key(request()), entry)
    # The tenant's generations are sealed with its key too.
    prefix = a.key(request()).rsplit(":", 1)[0]
    generation = raw_redis.get(f"{prefix}:gen")
    assert open_generation(generation, a_signer, f"{prefix}:gen") is not None
    assert open_generation(generation, main, f"{prefix}:gen") is None
    # The shared namespace keeps the main key.
    shared_entry = raw_redis.get(signed.key(request()))
    assert shared_entry is not None
    main.verify(signed.key(request()), shared_entry)
    # Derived once per tenant, then remembered.
    assert signed_client.signer.for_tenant(TENANT_A) is signed_client.signer.for_tenant(TENANT_A)


# -- Redis Cluster: one slot per tenant -----------------------------------------------------


def hash_tag(key: bytes) -> bytes:
    """The part of ``key`` Redis Cluster hashes: the first non-empty ``{...}``, else the key."""
    start = key.find(b"{")
    end = key.find(b"}", start + 1)
    return key[start + 1 : end] if start != -1 and end > start + 1 else key


@pytest.mark.parametrize("tenant", [TENANT_A, None], ids=["tenant", "shared"])
def test_every_key_of_a_tenant_is_tagged_and_in_one_slot(
    signed: LLMCache, namespace: str, raw_redis: redis.Redis, tenant: uuid.UUID | None
) -> None:
    cache = signed if tenant is None else signed.for_tenant(tenant)
    other = signed.for_tenant(TENANT_B)
    tag = b"shared" if tenant is None else str(tenant).encode()
    leases: list[bytes] = []

    def compute() -> str:
        # While we compute, our lease exists: catch its name.
        leases.extend(raw_redis.scan_iter(match=f"{namespace}:*:lease:*"))
        return "computed"

    assert cache.get_or_compute(request(), compute).response == "computed"
    assert cache.set(request(model="another-model"), "x")
    assert cache.invalidate_model("gpt-4o-mini")
    assert other.set(request(), "B's")
    assert len(leases) == 1

    keys = set(raw_redis.scan_iter(match=f"{namespace}:*")) | set(leases)
    mine = {key for key in keys if hash_tag(key) == tag}
    assert {key for key in keys if hash_tag(key) == str(TENANT_B).encode()} == keys - mine
    slot = key_slot(b"{" + tag + b"}")
    assert {key_slot(key) for key in mine} == {slot}
    assert key_slot(str(TENANT_B).encode()) != slot  # the other tenant is elsewhere
    # Entry, lease, namespace and model generations: every kind is among them.
    entry = cache.key(request()).encode()
    prefix = entry.rsplit(b":", 1)[0]
    kinds = {
        "entries": {entry, cache.key(request(model="another-model")).encode()},
        "lease": set(leases),
        "namespace generation": {prefix + b":gen"},
        "model generations": {key for key in mine if key.startswith(prefix + b":gen:")},
    }
    assert len(kinds["model generations"]) == 2
    for name, found in kinds.items():
        assert found <= mine | set(leases), name
        assert {key_slot(key) for key in found} == {slot}, name
