"""Instructions per ``LLMCache.get`` hit, counted by valgrind's callgrind (issue 22).

Wall-clock ratios move with the machine's load; an instruction count does
not. For each response case of ``bench_cache.py`` this runs the same
workload under callgrind with 100 and with 600 lookups and divides the
difference by 500, so start-up and setup cancel out:

* ``raw``: ``GET`` of a ready-made key on a pooled connection, the
  benchmark's raw-connection baseline;
* ``repeated``: ``LLMCache.get`` of one request, again and again;
* ``fresh``: ``LLMCache.get`` of a new request each time, its entry stored
  by another process (every request is built before the lookups, whatever
  their number).

Run as ``python benchmarks/count_cache_hit.py`` (valgrind on the PATH, Redis
from TOOLKIT_REDIS_URL); a few minutes per case. It prints a markdown table:
the counts, and the counts without ``memcpy``, which for 64 KB responses
moves by tens of thousands with how the socket hands over the bytes. No
target is judged here: ``bench_cache.py`` judges them.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bench_cache as bench
from toolkit.cache import CacheClient, LLMCache
from toolkit.cache.client import command

CASES = {
    "2 KB str": lambda: bench.text_of(2048, 1),
    "64 KB str": lambda: bench.text_of(65536, 2),
    "2 KB chat completion dict": lambda: bench.completion(bench.text_of(2048, 3)),
    "64 KB chat completion dict": lambda: bench.completion(bench.text_of(65536, 4)),
}
MODES = ("raw", "repeated", "fresh")
FEW, MANY = 100, 600
FIRST_SEED = 1_000_000


def _cache(url: str, namespace: str) -> tuple[CacheClient, LLMCache]:
    client = CacheClient.from_url(url, namespace=namespace, connect_timeout=5, socket_timeout=5)
    return client, LLMCache(client)


def store(url: str, namespace: str, case: str) -> None:
    """Store the entries every mode reads (its own process: the counted one never saw them)."""
    client, cache = _cache(url, namespace)
    response = CASES[case]()
    for seed in range(FIRST_SEED, FIRST_SEED + MANY + 1):
        if not cache.set(bench.chat_request(seed), response):
            raise RuntimeError("an entry was not stored")
    repeated = bench.chat_request(100)
    if not cache.set(repeated, response):
        raise RuntimeError("an entry was not stored")
    client.redis.set(f"{namespace}:raw", client.redis.get(cache.key(repeated)) or b"")
    client.close()


def lookups(url: str, namespace: str, mode: str, count: int) -> None:
    """The counted workload: one warm-up lookup, then ``count``."""
    client, cache = _cache(url, namespace)
    if mode == "raw":
        key = f"{namespace}:raw"
        for _ in range(count + 1):
            if command(client.redis, "GET", key) is None:
                raise RuntimeError("the raw key is missing")
        return
    seeds = range(FIRST_SEED, FIRST_SEED + MANY + 1)
    built = [bench.chat_request(seed) for seed in seeds]  # the same setup whatever count
    requests = built if mode == "fresh" else [bench.chat_request(100)] * (MANY + 1)
    for index in range(count + 1):
        if cache.get(requests[index]) is None:
            raise RuntimeError("a lookup missed: the count would be of the wrong thing")


def _count(args: list[str], out: Path) -> tuple[int, int]:
    """Instructions of one callgrind run of this script: in all, and in ``memcpy``."""
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, *args],
        check=True,
        capture_output=True,
    )
    report = subprocess.run(
        ["callgrind_annotate", "--threshold=100", str(out)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    total = memcpy = 0
    for line in report.splitlines():
        found = re.match(r"\s*([\d,]+) \([^)]*\)\s+(.*)", line)
        if not found:
            continue
        value = int(found.group(1).replace(",", ""))
        if "PROGRAM TOTALS" in line:
            total = value
        elif "memcpy" in found.group(2):
            memcpy += value
    return total, memcpy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("TOOLKIT_REDIS_URL"))
    parser.add_argument(
        "--inner", nargs=3, metavar=("CASE", "MODE", "COUNT"), help=argparse.SUPPRESS
    )
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="default: all")
    args = parser.parse_args(argv)
    url = args.url or "redis://127.0.0.1:6379/0"
    if args.inner:
        case, mode, count = args.inner
        namespace = os.environ["COUNT_CACHE_HIT_NAMESPACE"]
        if mode == "store":
            store(url, namespace, case)
        else:
            lookups(url, namespace, mode, int(count))
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not on the PATH")
    print("| case | lookup | instructions per call | of which memcpy | without memcpy |")
    print("|---|---|---:|---:|---:|")
    script = str(Path(__file__).resolve())
    for case in args.case or list(CASES):
        namespace = f"count-{uuid.uuid4().hex[:8]}"
        os.environ["COUNT_CACHE_HIT_NAMESPACE"] = namespace
        subprocess.run(
            [sys.executable, script, "--url", url, "--inner", case, "store", "0"], check=True
        )
        try:
            with tempfile.TemporaryDirectory() as work:
                for mode in MODES:
                    few = _count(
                        [script, "--url", url, "--inner", case, mode, str(FEW)], Path(work) / "few"
                    )
                    many = _count(
                        [script, "--url", url, "--inner", case, mode, str(MANY)],
                        Path(work) / "many",
                    )
                    total, memcpy = ((b - a) / (MANY - FEW) for a, b in zip(few, many, strict=True))
                    cells = (
                        case,
                        mode,
                        f"{total:,.0f}",
                        f"{memcpy:,.0f}",
                        f"{total - memcpy:,.0f}",
                    )
                    print(f"| {' | '.join(cells)} |", flush=True)
        finally:
            client = CacheClient.from_url(url, namespace=namespace)
            client.clear()
            client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
