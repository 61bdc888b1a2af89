"""Run every benchmark, one process each, and print their tables (``tox -e bench``).

Each benchmark compares the toolkit side by side with its named alternatives
in one run and prints ratios; this runner adds the date and the machine, so
the output can be pasted into the README as it is. Pass benchmark names to
run only some: ``tox -e bench -- core cache``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import VERDICTS_FILE_ENV, markdown_table

HERE = Path(__file__).resolve().parent

# name -> arguments; sizes chosen so the whole run stays near a quarter hour
# on a 2-core machine.
BENCHMARKS: dict[str, list[str]] = {
    "core": [],
    "cache": [],
    "cache_cluster": [],
    "messaging": [],
    "storage": ["--size-mib", "1024", "--s3-size-mib", "256", "--rounds", "2"],
    "integrations": ["--rounds", "3"],
    "async": [],
    "tenancy": [],
    "pgbouncer": [],
    # 1,000,000 messages per outbox unless TOOLKIT_BENCH_RETENTION_MESSAGES says fewer:
    # the one benchmark well past the quarter hour on a loaded 2-core machine.
    "retention": [],
}


def machine() -> str:
    """One line naming the machine the numbers come from."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        with psycopg.connect(
            os.environ.get(
                "TOOLKIT_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
            ),
            connect_timeout=3,
        ) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            postgres = f"PostgreSQL {row[0] if row else '?'}"
    except psycopg.Error:
        postgres = "PostgreSQL unreachable"
    return (
        f"{os.cpu_count()} x {cpu}, {memory:.0f} GiB, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, {postgres}, "
        f"psycopg {psycopg.__version__} ({psycopg.pq.__impl__} implementation)"
    )


def summary(verdicts_file: Path) -> str:
    """Every target the benchmarks judged, in run order, as one table and a count."""
    entries = [json.loads(line) for line in verdicts_file.read_text().splitlines() if line]
    if not entries:
        return "No targets were judged in this run."
    words = {True: "yes", False: "MISSED", None: "not judged"}
    table = markdown_table(
        ["benchmark", "row", "measured", "target", "met"],
        [
            [cell.replace("|", "\\|") for cell in (e["benchmark"], e["row"], e["measured"])]
            + [e["target"], words[e["met"]]]
            for e in entries
        ],
    )
    met = sum(1 for e in entries if e["met"] is True)
    missed = sum(1 for e in entries if e["met"] is False)
    return (
        f"{table}\n\n{met} targets met, {missed} missed, {len(entries) - met - missed} not judged."
    )


def main(argv: list[str]) -> int:
    chosen = argv or list(BENCHMARKS)
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}", file=sys.stderr)
        return 2
    print(f"# Benchmarks, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"Machine: {machine()}\n")
    failed = []
    with tempfile.TemporaryDirectory(prefix="toolkit-bench-") as scratch:
        verdicts_file = Path(scratch) / "verdicts.jsonl"
        verdicts_file.touch()
        environment = {**os.environ, VERDICTS_FILE_ENV: str(verdicts_file)}
        for name in chosen:
            print(f"## {name}\n", flush=True)
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, str(HERE / f"bench_{name}.py"), *BENCHMARKS[name]],
                check=False,
                env=environment,
            )
            print(
                f"\n({name}: {time.monotonic() - started:.0f} s, exit {done.returncode})\n",
                flush=True,
            )
            if done.returncode != 0:
                failed.append(name)
        print(f"## Targets ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)\n")
        print(summary(verdicts_file))
    if failed:
        print(f"benchmarks that failed to run: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
