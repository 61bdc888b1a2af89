"""Redis Cluster support that needs no cluster: slot grouping, URL parsing, key tags.

The behaviour on a real six-node cluster is proved in tests/cluster/test_redis_cluster.py.
"""

from __future__ import annotations

import uuid

import pytest
from redis.crc import key_slot

from toolkit.aio.cache import AsyncCacheClient
from toolkit.cache import CacheClient, LLMCache
from toolkit.cache.cluster import parse_cluster_url, slot_groups, slot_of
from toolkit.cache.entries import key_prefix, lease_key
from toolkit.config import Settings
from toolkit.errors import InvalidInput, Unavailable


def test_slot_groups_cover_every_key_once_and_keep_to_one_slot() -> None:
    keys = [f"ns:item:{i}" for i in range(500)] + [f"ns:{{t{i % 7}}}:x{i}" for i in range(200)]
    groups = slot_groups(keys)
    positions = sorted(p for group in groups for p in group)
    assert positions == list(range(len(keys)))
    for group in groups:
        assert len({key_slot(keys[p].encode()) for p in group}) == 1
    # Distinct slots are distinct groups: seven tags give seven groups for their 200 keys.
    tagged = [g for g in groups if keys[g[0]].startswith("ns:{")]
    assert len(tagged) == 7
    assert sum(len(g) for g in tagged) == 200


def test_slot_groups_keep_positions_in_order_within_a_group() -> None:
    keys = ["a{x}1", "b", "a{x}2", "c", "a{x}3"]
    groups = slot_groups(keys)
    assert [0, 2, 4] in groups
    assert all(group == sorted(group) for group in groups)


def test_slot_of_follows_the_hash_tag() -> None:
    assert slot_of("anything{user1}else") == slot_of("{user1}") == key_slot(b"user1")
    assert slot_of("no tag") == key_slot(b"no tag")
    assert slot_of("empty {} tag") == key_slot(b"empty {} tag")  # an empty tag is no tag


def test_parse_cluster_url() -> None:
    address = parse_cluster_url("redis+cluster://app:p%40ss@10.0.0.1:7000,10.0.0.2,[::1]:7002/0")
    assert address.seeds == (("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002))
    assert (address.username, address.password, address.tls) == ("app", "p@ss", False)
    assert parse_cluster_url("rediss+cluster://h:1").tls is True


@pytest.mark.parametrize(
    "url",
    [
        "redis://h:1",
        "redis+cluster://",
        "redis+cluster://h:1/3",
        "redis+cluster://h:notaport",
        "redis+cluster://user:hunter2@h:99999",
    ],
)
def test_a_bad_cluster_url_is_refused_without_quoting_it(url: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_cluster_url(url)
    assert "hunter2" not in str(caught.value)


def test_settings_accept_a_cluster_url() -> None:
    url = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001"
    assert Settings(redis_url=url).redis_url == url


def test_the_async_client_takes_a_cluster_url_without_connecting() -> None:
    # Nothing listens on port 1: the async cluster client discovers the cluster lazily.
    client = AsyncCacheClient.from_url("redis+cluster://127.0.0.1:1", namespace="t")
    assert type(client.redis).__name__ == "RedisCluster"


def test_the_sync_client_on_an_unreachable_cluster_is_unavailable_not_a_redis_error() -> None:
    with pytest.raises(Unavailable):
        CacheClient.from_url("redis+cluster://127.0.0.1:1", namespace="t", connect_timeout=0.05)


@pytest.mark.parametrize("tenant", [None, uuid.uuid4()])
def test_an_entry_its_generations_and_its_lease_share_one_slot(tenant: uuid.UUID | None) -> None:
    client = CacheClient.from_url("redis://127.0.0.1:6379/0", namespace="slots")
    cache = LLMCache(client, tenant=tenant)
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    plan = cache._plan(request)
    prefix = key_prefix("slots", tenant)
    keys = [plan.key, cache._ns_gen_key, plan.model_gen_key, lease_key(prefix, plan.key)]
    # The shared namespace carries a tag too: {shared}, not the whole key's hash.
    assert "{" in plan.key
    assert len({slot_of(k) for k in keys}) == 1
    client.close()
