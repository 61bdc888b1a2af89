"""Benchmarks of toolkit.storage: streaming memory and local throughput.

Run as ``python benchmarks/bench_storage.py`` (``--size-mib`` and
``--s3-size-mib`` change the sizes). It prints one markdown table:

* streaming a file up (``Storage.put`` from an open file) and down
  (``Storage.open`` copied into a file with ``shutil.copyfileobj``) on local disk and on an S3
  endpoint (moto's server mode, started as a separate process on loopback,
  so only the client's memory is measured). Target: peak RSS grows by less
  than 64 MiB while 1 GiB streams through;
* local put and verified get throughput against their limit: a put and a
  verified get each copy the bytes and hash them (SHA-256), so they can go
  no faster than the slower of a plain ``shutil.copyfileobj`` of the same
  bytes between the same files and a SHA-256 pass alone
  (``hashlib.file_digest`` over the source, nothing written), both
  measured in the same run. Target: put with fsync off and the verified get
  at least 0.8x that limit (per round: that round's slower limit over the
  contender's time; the median of the rounds). The put with fsync (the
  default) is on a row of its own, with what the fsync costs; the
  unverified get is set against the copy.

  How a verified get reaches the limit: its caller's thread reads and
  writes (the copy, plus a hand-over of each 256 KiB to the hashing
  queue) while a worker hashes (the SHA-256 pass, minus its reads), so
  with two free cores it takes about the longer of the two; its CPU is
  about their sum (the column shows both). With no free core for the
  worker (a loaded machine) it takes the sum and misses: judge it on a
  quiet machine.

Every measurement runs in a fresh child process (``--measure``) that does
one transfer in one direction and nothing else, so its peak RSS
(``ru_maxrss``) is that transfer's own: the growth is the peak after the
transfer minus the peak taken in the same child before it (after imports
and opening the storage). A get reads an object that an earlier child
stored (``stage``), never one its own process wrote, so no peak set by a
put hides the get's. On local disk every child first writes and deletes
a scratch file the size of the transfer, so whatever it writes lands on
pages in the same state (``_recycle_pages``: on this VM pages handed back
to the host cost a fault when written again, and the child staging a
get's object left the get nothing freed to reuse). Throughput rounds alternate between
contenders; every child starts after an ``os.sync()``, so no one pays
for another's writeback. ``run()`` returns the rows for a top-level
benchmark runner.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import load_average, machine_summary, markdown_table, record_verdict

if TYPE_CHECKING:
    from toolkit.storage import Storage

MIB = 1 << 20
BENCHMARK = "storage"
OBJECT_KEY = "bench/object.bin"
MEMORY_TARGET_MIB = 64
THROUGHPUT_TARGET = 0.8


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- one measurement, in its own process ------------------------------------------------------


def _open_storage(case: str, folder: Path, endpoint: str | None) -> Storage:
    """The storage of ``case``, the same for the child that stages and the one that reads."""
    from toolkit.storage import LocalStorage, S3Storage

    if case.startswith("s3"):
        assert endpoint is not None
        # The prefix comes from the measurement's folder: the stage and get children share it.
        storage: Storage = S3Storage("bench", f"run-{folder.name}", endpoint_url=endpoint)
        storage.exists("warm-up")  # open the connection before the baseline
        return storage
    return LocalStorage(folder / "store", fsync="nofsync" not in case)


def _usage() -> tuple[float, int]:
    """CPU seconds of every thread of the process, and 512-byte blocks it read from disk."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_inblock


def _recycle_pages(folder: Path, size: int) -> None:
    """Write ``size`` bytes to a scratch file and delete it: the measured write reuses its pages.

    On a VM whose balloon reports free memory to the host (this machine's
    does), a page the kernel takes from memory handed back costs a host
    fault when first written: writing 128 MiB to a new file cost 0.09 to
    0.29 s of system time on such pages, 0.03 s on pages just freed. The
    child staging a get's object frees nothing, so without this the get
    alone wrote on such pages (which read as a slow first read of a freshly
    written object); with it every contender writes on pages it just freed.
    """
    block = bytes(MIB)
    scratch = folder / f"scratch-{uuid.uuid4().hex}"
    with scratch.open("wb") as out:
        for _ in range(-(-size // MIB)):
            out.write(block)
    scratch.unlink()


def _measure(case: str, source: Path, folder: Path, endpoint: str | None) -> dict[str, float]:
    storage = _open_storage(case, folder, endpoint)
    if not case.startswith("s3"):
        _recycle_pages(folder, source.stat().st_size)
    target = folder / f"copy-{uuid.uuid4().hex}"
    # A verified get knows the digest beforehand, as a FileStore knows it from its row.
    expected = None
    if case == "local-verified-get":
        with source.open("rb") as src:
            expected = hashlib.file_digest(src, "sha256").hexdigest()
    baseline = _peak_rss_mib()
    cpu, blocks = _usage()
    caller_cpu = time.thread_time()
    start = time.perf_counter()
    if case == "copyfileobj":
        with source.open("rb") as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    elif case == "sha256":
        with source.open("rb") as src:
            hashlib.file_digest(src, "sha256")
    elif case.endswith(("-put", "-stage")) or case == "local-nofsync":
        with source.open("rb") as stream:
            storage.put(OBJECT_KEY, stream, allowed_types=None)
    elif case.endswith("-get"):
        with storage.open(OBJECT_KEY, sha256=expected) as stream, target.open("wb") as dst:
            shutil.copyfileobj(stream, dst)
    else:
        raise SystemExit(f"unknown case {case}")
    seconds = time.perf_counter() - start
    caller_cpu_after = time.thread_time()
    cpu_after, blocks_after = _usage()
    peak = _peak_rss_mib()
    target.unlink(missing_ok=True)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_after - cpu,
        "caller_cpu_seconds": caller_cpu_after - caller_cpu,
        "disk_read_mib": (blocks_after - blocks) * 512 / MIB,
        "rss_before_mib": baseline,
        "rss_peak_mib": peak,
    }


def _child(case: str, source: Path, folder: Path, endpoint: str | None) -> dict[str, float]:
    """Run ``_measure(case, ...)`` in a new Python process; return what it printed."""
    # Start every child with no dirty pages left by the one before: otherwise
    # the kernel's writeback of earlier files is charged to whoever runs next.
    os.sync()
    done = subprocess.run(
        [sys.executable, __file__, "--measure", case, str(source), str(folder), endpoint or ""],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{case}: {done.stderr.strip()[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure(case: str, source: Path, folder: Path, endpoint: str | None = None) -> dict[str, float]:
    """Run one measurement in a fresh child process and return its numbers.

    A get first has another child store the object (``<backend>-stage``), so
    the measuring child only ever reads.
    """
    child = folder / f"m-{uuid.uuid4().hex[:8]}"
    child.mkdir()
    try:
        if case.endswith("-get"):
            _child(case.removesuffix("-get") + "-stage", source, child, endpoint)
        return _child(case, source, child, endpoint)
    finally:
        shutil.rmtree(child, ignore_errors=True)


# -- the moto server, in a process of its own ------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
    return server, endpoint


def make_source(folder: Path, size_mib: int) -> Path:
    """A file of ``size_mib`` MiB of incompressible bytes."""
    path = folder / f"source-{size_mib}.bin"
    block = os.urandom(MIB)
    with path.open("wb") as out:
        for n in range(size_mib):
            out.write(block[n % 256 :] + block[: n % 256])
    return path


def run(size_mib: int = 1024, s3_size_mib: int = 1024, rounds: int = 3) -> list[list[str]]:
    """Measure everything; returns the table rows."""
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-storage-", dir=os.environ.get("TMPDIR")) as tmp:
        folder = Path(tmp)
        source = make_source(folder, size_mib)
        # Memory: each direction of the whole file in a fresh process of its own; a plain
        # copy of the same file shows what any process pays for the same bytes.
        for case in ("copyfileobj", "local-put", "local-get"):
            numbers = measure(case, source, folder)
            rows.append(_memory_row(case, size_mib, numbers))
        server, endpoint = start_moto()
        try:
            s3_source = source if s3_size_mib == size_mib else make_source(folder, s3_size_mib)
            for case in ("s3-put", "s3-get"):
                numbers = measure(case, s3_source, folder, endpoint)
                rows.append(_memory_row(case, s3_size_mib, numbers))
        finally:
            server.terminate()
            server.wait(timeout=30)
        rows.extend(throughput_rows(source, folder, size_mib, rounds))
    return rows


LIMIT_CASES = ("copyfileobj", "sha256")
JUDGED_CASES = ("local-nofsync", "local-verified-get")
THROUGHPUT_CASES = {
    "copyfileobj": "plain copy: shutil.copyfileobj file to file (limit, with the next row)",
    "sha256": "SHA-256 pass alone: hashlib.file_digest over the file, nothing written",
    "local-nofsync": "local put, fsync off (read, SHA-256, sniff, write, link)",
    "local-verified-get": "local get, verified (open with sha256=, copyfileobj to a file)",
    "local-put": "local put, fsync on (the default): the cost of fsync",
    "local-get": "local get, unverified (open, copyfileobj to a file)",
}


def _cpu_text(cpu: list[float], caller_cpu: list[float]) -> str:
    """The child's CPU (every thread), and the caller's thread's share when others worked too."""
    total, caller = statistics.median(cpu), statistics.median(caller_cpu)
    if total - caller < 0.01:
        return f"CPU {total:.2f} s"
    return f"CPU {total:.2f} s: {caller:.2f} caller + {total - caller:.2f} hashing"


def throughput_rows(source: Path, folder: Path, size_mib: int, rounds: int) -> list[list[str]]:
    """Put and get against their limit, the slower of a plain copy and a SHA-256 pass.

    The contenders alternate within each round (the order rotates). A
    judged ratio is the median over rounds of that round's limit (the
    slower of its copy and its SHA-256 pass) over the contender's time in
    the same round, so load that comes and goes between rounds cancels;
    the throughput column is the median time. The CPU column is every
    thread of the child, split into the caller's thread and the rest (the
    hashing thread) when the rest did work: a put or get whose hashing
    overlaps its copy shows more CPU than wall time.
    """
    seconds: dict[str, list[float]] = {name: [] for name in THROUGHPUT_CASES}
    cpu: dict[str, list[float]] = {name: [] for name in THROUGHPUT_CASES}
    caller_cpu: dict[str, list[float]] = {name: [] for name in THROUGHPUT_CASES}
    for round_index in range(rounds):
        names = list(THROUGHPUT_CASES)
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            numbers = measure(name, source, folder)
            seconds[name].append(numbers["seconds"])
            cpu[name].append(numbers["cpu_seconds"])
            caller_cpu[name].append(numbers["caller_cpu_seconds"])
    median = {name: statistics.median(values) for name, values in seconds.items()}
    limit_name = max(LIMIT_CASES, key=median.__getitem__)
    limits = [max(pair) for pair in zip(*(seconds[name] for name in LIMIT_CASES), strict=True)]
    rows: list[list[str]] = []
    for name, label in THROUGHPUT_CASES.items():
        took = median[name]
        speed = f"{size_mib / took:.0f} MiB/s ({_cpu_text(cpu[name], caller_cpu[name])})"
        if name in LIMIT_CASES:
            limit = median[limit_name]
            result = "the limit" if name == limit_name else f"{limit / took:.2f}x the limit"
            target = "-"
        elif name in JUDGED_CASES:
            ratio = statistics.median(
                limit / mine for limit, mine in zip(limits, seconds[name], strict=True)
            )
            met = ratio >= THROUGHPUT_TARGET
            result = f"{ratio:.2f}x the limit"
            target = f">= {THROUGHPUT_TARGET}x: {'met' if met else 'MISSED'}"
            record_verdict(
                BENCHMARK,
                label,
                f"{ratio:.2f}x",
                f">= {THROUGHPUT_TARGET}x the slower of a plain copy and SHA-256 alone",
                met,
            )
        elif name == "local-put":
            fsync_cost = statistics.median(
                put - nofsync
                for put, nofsync in zip(seconds[name], seconds["local-nofsync"], strict=True)
            )
            result = (
                f"{median['local-nofsync'] / took:.2f}x the put without fsync "
                f"(fsync: {fsync_cost * 1000 / size_mib * 1024:+.0f} ms per GiB)"
            )
            target = "none (durability)"
        else:
            result = f"{median['copyfileobj'] / took:.2f}x the plain copy"
            target = "none"
        rows.append([label, f"{size_mib} MiB", speed, result, target])
    return rows


def _memory_row(case: str, size_mib: int, numbers: dict[str, float]) -> list[str]:
    before, peak = numbers["rss_before_mib"], numbers["rss_peak_mib"]
    grown = peak - before
    verdict = "met" if grown < MEMORY_TARGET_MIB else "MISSED"
    label = {
        "copyfileobj": "reference: shutil.copyfileobj file to file, local disk",
        "local-put": "stream up, local disk (put from an open file)",
        "local-get": "stream down, local disk (open, copyfileobj to a file)",
        "s3-put": "stream up, S3 (moto server) (put from an open file)",
        "s3-get": "stream down, S3 (moto server) (open, copyfileobj to a file)",
    }[case]
    if case != "copyfileobj":
        record_verdict(
            BENCHMARK,
            f"{label}, {size_mib} MiB",
            f"+{grown:.1f} MiB",
            f"peak RSS grows < {MEMORY_TARGET_MIB} MiB",
            grown < MEMORY_TARGET_MIB,
        )
    return [
        label,
        f"{size_mib} MiB",
        f"{size_mib / numbers['seconds']:.0f} MiB/s",
        f"peak RSS {before:.1f} -> {peak:.1f} MiB (+{grown:.1f})",
        "-" if case == "copyfileobj" else f"< {MEMORY_TARGET_MIB} MiB: {verdict}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--s3-size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--measure", nargs=4, metavar=("CASE", "SOURCE", "FOLDER", "ENDPOINT"))
    args = parser.parse_args(argv)
    if args.measure:
        case, source, folder, endpoint = args.measure
        print(json.dumps(_measure(case, Path(source), Path(folder), endpoint or None)))
        return 0
    started = time.perf_counter()
    load_at_start = load_average()
    rows = run(args.size_mib, args.s3_size_mib, args.rounds)
    print("## toolkit.storage: streaming memory and local throughput\n")
    print(
        machine_summary(
            {
                "took": f"{time.perf_counter() - started:.0f} s",
                "load average at start and end": f"{load_at_start}, {load_average()}",
                "memory rows": "one fresh process per direction; RSS before = that child's peak "
                "after imports and opening the storage",
            }
        )
    )
    print()
    print(markdown_table(["case", "size", "throughput", "result", "target"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
