"""The cache on a Redis Cluster beside the single node, interleaved call by call.

Run as ``python benchmarks/bench_cache_cluster.py`` (the single node from
TOOLKIT_REDIS_URL, default redis://127.0.0.1:6379/0). The benchmark starts
its own six-node cluster (three masters, three replicas) on free loopback
ports and removes it afterwards; the machine's Redis is only read and
written under a namespace of the benchmark's own.

Rows, each the cluster against the single node, both through the toolkit:

* the LLM cache's hit path (``LLMCache.get``, a 2 KB chat completion): on
  the cluster one ``MGET`` of the entry and its generations, routed to the
  master of the tenant's slot;
* a 50-key ``get_many`` of keys spread over 50 slots (all three masters):
  one ``MGET`` per slot, pipelined, one round trip per master;
* the same 50 keys under one hash tag (one slot): one ``MGET``, as on the
  single node.

No target: the rows show what the cluster's routing costs on loopback. The
timing and table helpers are bench_cache's (:func:`compare`, :class:`Row`,
:func:`markdown`).
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the repository root (toolkit, benchmarks, tests) importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_cache import Row, chat_request, compare, completion, hit, markdown, text_of
from tests.reliability.private_servers import private_redis_cluster
from toolkit.cache import HIREDIS_AVAILABLE, CacheClient, LLMCache
from toolkit.cache.cluster import slot_of

CLUSTER = "cluster"
SINGLE = "single node"


def run(*, url: str | None = None, calls: int = 3000) -> list[Row]:
    """Start a private cluster, measure each row against the single node, stop the cluster."""
    url = url or os.environ.get("TOOLKIT_REDIS_URL", "redis://127.0.0.1:6379/0")
    namespace = f"bench-cluster-{uuid.uuid4().hex[:8]}"
    options = {"namespace": namespace, "connect_timeout": 1.0, "socket_timeout": 1.0}
    rows: list[Row] = []
    with private_redis_cluster() as cluster:
        clients = {
            CLUSTER: CacheClient.from_url(cluster.url, **options),
            SINGLE: CacheClient.from_url(url, **options),
        }
        try:
            if not all(client.ping() for client in clients.values()):
                raise SystemExit("a Redis does not answer")
            request = chat_request(1)
            caches = {name: LLMCache(client) for name, client in clients.items()}
            for cache in caches.values():
                cache.set(request, completion(text_of(2048, 1)))
            timing = compare(
                {name: (lambda _i, c=cache: hit(c.get(request))) for name, cache in caches.items()},
                calls=calls,
            )
            rows.append(_row("hit, 2 KB chat completion dict", "LLMCache.get", timing))

            spread = [f"batch-{i}" for i in range(50)]
            tagged = [f"{{batch}}-{i}" for i in range(50)]
            for client in clients.values():
                client.set_many({name: text_of(512, i) for i, name in enumerate(spread + tagged)})
            slots = len({slot_of(f"{namespace}:{name}") for name in spread})
            for label, names in (
                (f"50 keys, 512 B each, {slots} slots", spread),
                ("50 keys, 512 B each, one hash tag", tagged),
            ):
                timing = compare(
                    {
                        name: (lambda _i, c=client, n=names: _whole(c.get_many(n), len(n)))
                        for name, client in clients.items()
                    },
                    calls=max(10, calls // 5),
                )
                rows.append(_row(label, "get_many", timing))
        finally:
            for client in clients.values():
                client.clear()
                client.close()
    return rows


def _whole(found: dict[str, bytes], expected: int) -> None:
    """Every side checks its batch alike: a partial answer would be fast and mean nothing."""
    if len(found) != expected:
        raise AssertionError(f"a batch returned {len(found)} of {expected} keys")


def _row(case: str, call: str, timing: dict[str, object]) -> Row:
    return Row(
        case,
        f"{call} ({CLUSTER})",
        f"{call} ({SINGLE})",
        timing[CLUSTER],  # type: ignore[arg-type]
        timing[SINGLE],  # type: ignore[arg-type]
        "-",
        None,
    )


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="single-node Redis URL (default: TOOLKIT_REDIS_URL)")
    parser.add_argument("--calls", type=int, default=3000, help="calls per side (hit row)")
    args = parser.parse_args(argv)
    print(
        f"toolkit.cache on a Redis Cluster (3 masters, 3 replicas, loopback) beside the single "
        f"node: hiredis={'yes' if HIREDIS_AVAILABLE else 'no'}, {args.calls} calls a side, "
        f"interleaved call by call, medians, load average {os.getloadavg()[0]:.2f} at start\n"
    )
    rows = run(url=args.url, calls=args.calls)
    print(markdown(rows))
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
