"""Benchmarks of toolkit.cache against hand-written redis-py lookups, interleaved call by call.

Run as ``python benchmarks/bench_cache.py`` (Redis from TOOLKIT_REDIS_URL,
default redis://127.0.0.1:6379/0). It prints two markdown tables.

The hit table sets ``LLMCache.get`` against three hand-written baselines
that read the same stored bytes (each from a key of its own):

* ``execute_command``: ``redis.Redis.get``, redis-py's full command path
  (retry loop, hooks, option parsing);
* ``raw connection``: GET sent straight on a pooled connection
  (``send_command`` / ``read_response``), the fast path the toolkit's own
  reads take: the like-for-like baseline, the one the target is judged on;
* ``own key``: what a cache written by hand pays for a request: SHA-256 of
  ``json.dumps(request, sort_keys=True)``, then the raw-connection GET.

The first two get the key ready-made; only ``LLMCache.get`` and ``own
key`` turn the request into a key during the timed call. Each response
case runs twice: with one request repeated for every lookup (in-process
memos, such as the fingerprint memo, always hit) and with a fresh request
per lookup. The fresh requests are built before the timed section and
their entries are stored by a separate process, so this process has never
seen them when it looks them up. Responses are 2 KB and 64 KB (a str, and
an OpenAI-shaped dict); target: ``LLMCache.get`` at most 1.3x the raw
connection's time with a repeated request, 1.5x with fresh ones. One case
forces zlib at 64 KB, to show what it costs (no target: compression is off
below 128 KiB by default). The "parsed" rows
add ``json.loads`` to every baseline, since LLMCache hands back the dict.

The other table: the cost of an integrity key on the hit path, a hit with
HMAC (``TOOLKIT_CACHE_HMAC_KEY`` set: the entry's HMAC-SHA256 is checked)
against the same hit without a key, per response case, repeated request (no
target); a 50-key batch lookup (one MGET) against 50 sequential gets
(target: at least 10x faster); and a call while Redis is down with the
breaker open against a call while it is up (no target).

The sides of a comparison alternate call by call (the order rotates), so a
noisy neighbour slows all alike; medians are reported and targets judged
on them. The ratio of the 10th percentiles is shown too: on a busy machine
it is the better view of the work each side does. ``run()`` returns the
rows for a top-level benchmark runner.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import random
import secrets
import socket
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import record_verdict
from toolkit.cache import HIREDIS_AVAILABLE, CacheClient, CircuitBreaker, LLMCache
from toolkit.cache.client import command

# Filler vocabulary for deterministic, compressible (English-like) responses.
_VOCABULARY = (
    "the model returns a short answer with tokens and a cache in front of redis for the "
    "agent which calls tools plans steps and writes results to a store so later requests "
    "reuse it"
)
WORDS = tuple(_VOCABULARY.split())

OURS = "LLMCache.get"
VIA_EXECUTE = "execute_command"
VIA_CONNECTION = "raw connection"
OWN_KEY = "own key"
HIT_TARGET = 1.3
FRESH_TARGET = 1.5
"""Fresh requests pay for the fingerprint, the secret-hint scan and SHA-256 (issue #22)."""
FRESH_BUDGET = 32 << 20
"""Bytes of entries stored for one fresh-request row (fewer lookups for large responses)."""


@dataclass
class Timing:
    """Per-call times of one side, in microseconds."""

    median_us: float
    p10_us: float
    """10th percentile: the least disturbed calls, a view of the work itself."""

    @property
    def ops(self) -> float:
        return 1e6 / self.median_us


Found = TypeVar("Found")
Side = Callable[[int], object]
"""One side of a comparison; it gets the lookup's index (0 is the warm-up call)."""


@dataclass
class HitRow:
    """One line of the hit table: LLMCache.get against the three hand-written baselines."""

    case: str
    requests: str
    times: dict[str, Timing]
    """Keyed by side: OURS, VIA_EXECUTE, VIA_CONNECTION, OWN_KEY."""
    has_target: bool

    def ratio(self, baseline: str, *, p10: bool = False) -> float:
        """Time of ours over time of ``baseline`` (lower is better)."""
        ours, theirs = self.times[OURS], self.times[baseline]
        if p10:
            return ours.p10_us / theirs.p10_us
        return ours.median_us / theirs.median_us

    @property
    def target(self) -> float:
        """1.3x with one repeated request, 1.5x with a fresh request per lookup."""
        return FRESH_TARGET if self.requests.startswith("fresh") else HIT_TARGET

    @property
    def ok(self) -> bool | None:
        """The target is judged against the like-for-like baseline: the same raw connection."""
        return self.ratio(VIA_CONNECTION) <= self.target if self.has_target else None


@dataclass
class Row:
    """One line of the table of other cases: two sides, both named."""

    case: str
    ours: str
    baseline: str
    ours_timing: Timing
    baseline_timing: Timing
    target: str
    ok: bool | None

    @property
    def ratio(self) -> float:
        return self.ours_timing.median_us / self.baseline_timing.median_us

    @property
    def ratio_p10(self) -> float:
        return self.ours_timing.p10_us / self.baseline_timing.p10_us


def text_of(size: int, seed: int) -> str:
    rng = random.Random(seed)
    out: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(WORDS)
        out.append(word)
        length += len(word) + 1
    return " ".join(out)[:size]


def chat_request(seed: int) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
            {"role": "user", "content": text_of(300, seed)},
        ],
        "temperature": 0,
        "max_tokens": 512,
    }


def completion(content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 80, "completion_tokens": 500, "total_tokens": 580},
    }


def compare(sides: dict[str, Side], *, calls: int) -> dict[str, Timing]:
    """Per-call times of each side over lookups 1..``calls`` (lookup 0 warms up).

    The sides alternate call by call, and which goes first rotates, so a
    noisy neighbour or a CPU frequency change hits all alike; medians ignore
    the odd descheduled call.
    """
    names = list(sides)
    for name in names:
        sides[name](0)  # warm up connections and code paths
    clock = time.perf_counter_ns
    samples: dict[str, list[int]] = {name: [] for name in names}
    for index in range(1, calls + 1):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            began = clock()
            sides[name](index)
            samples[name].append(clock() - began)
    timings = {}
    for name, times in samples.items():
        times.sort()
        timings[name] = Timing(statistics.median(times) / 1000, times[len(times) // 10] / 1000)
    return timings


def own_key(namespace: str, request: dict[str, Any]) -> str:
    """The key a cache written by hand would use: SHA-256 of the sorted JSON."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"))
    return f"{namespace}:own:{hashlib.sha256(canonical.encode()).hexdigest()}"


def hit(found: Found | None) -> Found:
    """Every side checks its answer alike: a miss would be fast and mean nothing."""
    if found is None:
        raise AssertionError("a lookup missed: the benchmark would time the wrong thing")
    return found


def prestore(
    url: str,
    namespace: str,
    options: dict[str, Any],
    seeds: Sequence[int],
    response: Any,
) -> list[str]:
    """Store ``response`` for the request of every seed; runs in a process of its own.

    Returns the keys (so the caller can delete them without fingerprinting
    the requests, which would warm its memos).
    """
    client = CacheClient.from_url(url, namespace=namespace, connect_timeout=1, socket_timeout=1)
    try:
        cache = LLMCache(client, **options)
        keys = []
        for seed in seeds:
            request = chat_request(seed)
            if not cache.set(request, response):
                raise RuntimeError("an entry was not stored")
            keys.append(cache.key(request))
        return keys
    finally:
        client.close()


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_stored(data: bytes) -> bytes:
    return data


def _hit_sides(
    cache: LLMCache,
    raw: redis.Redis,
    namespace: str,
    requests: Sequence[dict[str, Any]],
    parse: bool,
) -> dict[str, Side]:
    """The four sides of a hit comparison; lookup ``i`` asks for ``requests[i]``."""
    keys = [own_key(namespace, request) for request in requests]  # ready-made, untimed
    decode: Callable[[bytes], object] = json.loads if parse else _as_stored

    def ours(index: int) -> None:
        hit(cache.get(requests[index]))

    def via_execute(index: int) -> None:
        decode(hit(cast("bytes | None", raw.get(keys[index]))))  # stubs say bytes | str

    def via_connection(index: int) -> None:
        decode(hit(command(raw, "GET", keys[index])))

    def with_own_key(index: int) -> None:
        decode(hit(command(raw, "GET", own_key(namespace, requests[index]))))

    return {
        OURS: ours,
        VIA_EXECUTE: via_execute,
        VIA_CONNECTION: via_connection,
        OWN_KEY: with_own_key,
    }


def hmac_row(
    plain: LLMCache, signed: LLMCache, case: str, response: Any, *, seed: int, calls: int
) -> Row:
    """A hit with an integrity key against the same hit without one."""
    request = chat_request(seed)
    if not (plain.set(request, response) and signed.set(request, response)):
        raise RuntimeError("an entry was not stored")
    two = compare(
        {
            "ours": lambda _index: hit(signed.get(request)),
            "baseline": lambda _index: hit(plain.get(request)),
        },
        calls=calls,
    )
    return Row(
        f"hit with HMAC, {case}",
        "LLMCache.get, HMAC key",
        "LLMCache.get, no key",
        two["ours"],
        two["baseline"],
        "-",
        None,
    )


def run(
    report: Callable[[HitRow | Row], object] | None = None,
    *,
    url: str | None = None,
    calls: int = 5000,
) -> tuple[list[HitRow], list[Row]]:
    """Run every benchmark; pass each row to ``report`` as it is measured."""
    url = url or os.environ.get("TOOLKIT_REDIS_URL", "redis://127.0.0.1:6379/0")
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    client = CacheClient.from_url(url, namespace=namespace, connect_timeout=1, socket_timeout=1)
    if not client.ping():
        raise SystemExit(f"Redis does not answer at {url}")
    raw = client.redis
    hit_rows: list[HitRow] = []
    rows: list[Row] = []

    def add(row: HitRow | Row) -> None:
        if isinstance(row, HitRow):
            hit_rows.append(row)
            if row.has_target:
                record_verdict(
                    "cache",
                    f"{row.case}, {row.requests}",
                    f"{row.ratio(VIA_CONNECTION):.3f}x vs raw connection",
                    f"<= {row.target}x",
                    row.ok,
                )
        else:
            rows.append(row)
            if row.ok is not None:  # the batch row, the only one of these with a target
                measured = f"{1 / row.ratio:.1f}x faster"
                record_verdict("cache", f"{row.case}: {row.ours}", measured, row.target, row.ok)
        if report is not None:
            report(row)

    # A spawned process stores the fresh requests' entries: this one must never see them.
    helper = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        compressed = {"compress_threshold": 0}
        cases: list[tuple[str, dict[str, Any], Any, bool]] = [
            ("2 KB str", {}, text_of(2048, 1), True),
            ("64 KB str", {}, text_of(65536, 2), True),
            ("2 KB chat completion dict", {}, completion(text_of(2048, 3)), True),
            ("64 KB chat completion dict", {}, completion(text_of(65536, 4)), True),
            ("64 KB str, zlib forced", compressed, text_of(65536, 5), False),
        ]
        for number, (case, options, response, has_target) in enumerate(cases):
            cache = LLMCache(client, **options)
            repeated = chat_request(100 + number)
            cache.set(repeated, response)
            stored = raw.get(cache.key(repeated))
            assert stored is not None and cache.get(repeated) is not None
            fresh_calls = max(10, min(calls, FRESH_BUDGET // len(stored)))
            variants = [(False, stored)]
            if isinstance(response, dict):
                variants.append((True, json.dumps(response).encode()))
            for parse, baseline_bytes in variants:
                label = f"hit, {case}" + (", parsed (baselines add json.loads)" if parse else "")
                label += f" ({len(stored) // 1024} KiB stored)"
                raw.set(own_key(namespace, repeated), baseline_bytes)
                timing = compare(
                    _hit_sides(cache, raw, namespace, [repeated] * (calls + 1), parse),
                    calls=calls,
                )
                add(HitRow(label, "one, repeated", timing, has_target and not parse))

                # Fresh requests: a new seed range per row, so no row sees another's requests.
                first = 1_000_000 * (number + 1) + 100_000 * parse
                seeds = range(first, first + fresh_calls + 1)
                requests = [chat_request(seed) for seed in seeds]
                toolkit_keys = helper.submit(
                    prestore, url, namespace, options, seeds, response
                ).result()
                own_keys = [own_key(namespace, request) for request in requests]
                with raw.pipeline(transaction=False) as pipe:
                    for key in own_keys:
                        pipe.set(key, baseline_bytes)
                    pipe.execute()
                timing = compare(
                    _hit_sides(cache, raw, namespace, requests, parse), calls=fresh_calls
                )
                add(
                    HitRow(
                        label,
                        f"fresh per lookup ({fresh_calls:,})",
                        timing,
                        has_target and not parse,
                    )
                )
                for start in range(0, len(own_keys), 1000):
                    raw.unlink(*toolkit_keys[start : start + 1000], *own_keys[start : start + 1000])

        # Its own namespace: a keyed reader deletes the unsigned entries of the plain side.
        signing = CacheClient.from_url(
            url,
            namespace=f"{namespace}-hmac",
            connect_timeout=1,
            socket_timeout=1,
            hmac_key=secrets.token_bytes(32),
        )
        try:
            for number, (case, options, response, _) in enumerate(cases):
                plain, signed = LLMCache(client, **options), LLMCache(signing, **options)
                add(hmac_row(plain, signed, case, response, seed=200 + number, calls=calls))
        finally:
            signing.clear()
            signing.close()

        names = [f"batch-{i}" for i in range(50)]
        client.set_many({name: text_of(512, i) for i, name in enumerate(names)})
        two = compare(
            {
                "ours": lambda _index: client.get_many(names),
                "baseline": lambda _index: [client.get(name) for name in names],
            },
            calls=max(10, calls // 20),
        )
        speedup = two["baseline"].median_us / two["ours"].median_us
        add(
            Row(
                f"50 keys, 512 B each ({speedup:.0f}x faster)",
                "get_many (MGET)",
                "50 x CacheClient.get",
                two["ours"],
                two["baseline"],
                ">= 10x faster",
                speedup >= 10,
            )
        )

        down = CacheClient.from_url(
            f"redis://127.0.0.1:{dead_port()}/0",
            namespace=namespace,
            breaker=CircuitBreaker(failure_threshold=3, recovery_timeout=3600),
        )
        llm = LLMCache(client)
        down_llm = LLMCache(down)
        request = chat_request(7)
        llm.set(request, text_of(2048, 7))
        for _ in range(3):
            down.get("warm")  # connection refused three times: the breaker opens
        assert down.breaker.state.value == "open"
        two = compare(
            {
                "ours": lambda _index: down_llm.get(request),
                "baseline": lambda _index: llm.get(request),
            },
            calls=calls,
        )
        add(
            Row(
                "Redis down, breaker open",
                "LLMCache.get (down)",
                "LLMCache.get (up, hit)",
                two["ours"],
                two["baseline"],
                "-",
                None,
            )
        )
        two = compare(
            {
                "ours": lambda _index: down.get("k"),
                "baseline": lambda _index: client.get("batch-0"),
            },
            calls=calls,
        )
        add(
            Row(
                "Redis down, breaker open",
                "CacheClient.get (down)",
                "CacheClient.get (up)",
                two["ours"],
                two["baseline"],
                "-",
                None,
            )
        )
        down.close()
    finally:
        helper.shutdown()
        client.clear()
        client.close()
    return hit_rows, rows


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "NO")


def markdown_hits(rows: Sequence[HitRow]) -> str:
    lines = [
        "| case | requests | LLMCache.get µs | execute_command µs | raw connection µs "
        "| own key µs | ratio vs execute_command | ratio vs raw connection "
        "| ratio vs raw connection at p10 | ratio vs own key | target (vs raw connection) | met |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        times = row.times
        lines.append(
            f"| {row.case} | {row.requests} | {times[OURS].median_us:.1f} "
            f"| {times[VIA_EXECUTE].median_us:.1f} | {times[VIA_CONNECTION].median_us:.1f} "
            f"| {times[OWN_KEY].median_us:.1f} | {row.ratio(VIA_EXECUTE):.3f}x "
            f"| {row.ratio(VIA_CONNECTION):.3f}x | {row.ratio(VIA_CONNECTION, p10=True):.3f}x "
            f"| {row.ratio(OWN_KEY):.3f}x | {f'<= {row.target}x' if row.has_target else '-'} "
            f"| {_met(row.ok)} |"
        )
    return "\n".join(lines)


def markdown(rows: Sequence[Row]) -> str:
    lines = [
        "| case | ours | ops/s | µs/op | baseline | ops/s | µs/op "
        "| time ratio | ratio at p10 | target | met |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.case} | {row.ours} | {row.ours_timing.ops:,.0f} "
            f"| {row.ours_timing.median_us:.1f} | {row.baseline} "
            f"| {row.baseline_timing.ops:,.0f} | {row.baseline_timing.median_us:.1f} "
            f"| {row.ratio:.3f}x | {row.ratio_p10:.3f}x | {row.target} | {_met(row.ok)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the benchmark tables; with --strict, exit 1 if a target was missed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="Redis URL (default: TOOLKIT_REDIS_URL or localhost)")
    parser.add_argument("--calls", type=int, default=5000, help="calls per side and case")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    print(
        f"toolkit.cache benchmark: hiredis={'yes' if HIREDIS_AVAILABLE else 'no'}, "
        f"up to {args.calls} calls a side, interleaved call by call, medians, "
        f"load average {os.getloadavg()[0]:.2f} at start\n"
    )
    hit_rows, rows = run(url=args.url, calls=args.calls)
    print(markdown_hits(hit_rows))
    print()
    print(markdown(rows))
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")
    missed = [f"{row.case} [{row.requests}]" for row in hit_rows if row.ok is False]
    missed += [row.case for row in rows if row.ok is False]
    if missed:
        print(f"\ntargets missed: {', '.join(missed)}")
    return 1 if missed and args.strict else 0


if __name__ == "__main__":
    raise SystemExit(main())
