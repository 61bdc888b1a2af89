"""Redis Cluster support shared by the sync and async cache clients (no I/O).

A cluster is configured with one URL naming one or more seed nodes::

    redis+cluster://[user:password@]host:port[,host:port...][/0]
    rediss+cluster://...          (TLS)

The client discovers the other nodes (and which master serves which slot)
from whichever seed answers first, so naming several seeds keeps a client
startable while one node is down. A cluster has one database, 0.

Multi-key commands on a cluster must keep to one hash slot, or Redis
refuses them (CROSSSLOT) and redis-py refuses them before sending.
:func:`slot_groups` splits a batch of keys by slot with Redis's own hash
(CRC16 of the key's hash tag, or of the whole key when it has none), so a
batch lookup sends one ``MGET`` per slot and gets every key's value back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple
from urllib.parse import unquote

from redis.crc import key_slot

from toolkit.errors import InvalidInput

__all__ = [
    "CLUSTER_SCHEMES",
    "ClusterAddress",
    "is_cluster_url",
    "parse_cluster_url",
    "slot_groups",
    "slot_of",
]

CLUSTER_SCHEMES: Final = ("redis+cluster://", "rediss+cluster://")
"""URL schemes naming a Redis Cluster (the second with TLS)."""

_DEFAULT_PORT: Final = 6379


class ClusterAddress(NamedTuple):
    """What a cluster URL says: the seed nodes, the credentials and whether to use TLS."""

    seeds: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: bool


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return url.startswith(CLUSTER_SCHEMES)


def _bad(reason: str) -> InvalidInput:
    # The URL itself is not quoted: it may carry a password.
    return InvalidInput(f"bad Redis Cluster URL: {reason}", field="redis_url")


def _seed(text: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``, or a host alone for port 6379) as a pair."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise _bad("an IPv6 seed must look like [::1]:port")
        port_text = rest[1:]
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise _bad("a seed node has no host")
    if not port_text:
        return host, _DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _bad("a seed node's port must be a number from 1 to 65535")
    return host, int(port_text)


def parse_cluster_url(url: str) -> ClusterAddress:
    """The seeds, credentials and TLS flag of a cluster URL; InvalidInput if malformed."""
    if not is_cluster_url(url):
        raise _bad("it must start with redis+cluster:// or rediss+cluster://")
    scheme, _, rest = url.partition("://")
    address, _, _query = rest.partition("?")
    netloc, slash, path = address.partition("/")
    if slash and path not in ("", "0"):
        raise _bad("a cluster has only database 0")
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    seeds = tuple(_seed(part.strip()) for part in netloc.split(",") if part.strip())
    if not seeds:
        raise _bad("it names no seed node")
    return ClusterAddress(seeds, username, password, scheme == "rediss+cluster")


def slot_of(key: str | bytes) -> int:
    """The cluster hash slot of ``key`` (0-16383), as Redis computes it."""
    return key_slot(key.encode() if isinstance(key, str) else key)


def slot_groups(keys: Sequence[str]) -> list[list[int]]:
    """The positions of ``keys`` grouped by hash slot, in order of first appearance.

    Every position appears in exactly one group, and each group's keys share
    one slot, so one ``MGET`` per group is never refused as cross-slot and
    the replies put back by position give every key its own value.
    """
    groups: dict[int, list[int]] = {}
    for position, key in enumerate(keys):
        groups.setdefault(slot_of(key), []).append(position)
    return list(groups.values())
