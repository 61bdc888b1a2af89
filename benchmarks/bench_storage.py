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
  at least 0.8x that limit. The put with fsync (the default) is on a row of
  its own, with what the fsync costs; the unverified get is set against
  the copy.

Every measurement runs in a fresh child process (``--measure``) that does
one transfer in one direction and nothing else, so its peak RSS
(``ru_maxrss``) is that transfer's own: the growth is the peak after the
transfer minus the peak taken in the same child before it (after imports
and opening the storage). A get reads an object that an earlier child
stored (``stage``), never one its own process wrote, so no peak set by a
put hides the get's; on local disk that child then reads the object once,
so the get reads pages in the state the plain copy's source is in (read
before, not just written). Throughput rounds alternate between contenders and
report medians; every child starts after an ``os.sync()``, so no one pays
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

from benchmarks._common import load_average, machine_summary, markdown_table

if TYPE_CHECKING:
    from toolkit.storage import Storage

MIB = 1 << 20
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


def _measure(case: str, source: Path, folder: Path, endpoint: str | None) -> dict[str, float]:
    storage = _open_storage(case, folder, endpoint)
    target = folder / f"copy-{uuid.uuid4().hex}"
    # A verified get knows the digest beforehand, as a FileStore knows it from its row.
    expected = None
    if case == "local-verified-get":
        with source.open("rb") as src:
            expected = hashlib.file_digest(src, "sha256").hexdigest()
    baseline = _peak_rss_mib()
    cpu, blocks = _usage()
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
        if case.startswith("local-") and case.endswith("-stage"):
            # Read the stored object once, as the plain copy's source has been: the first
            # read of freshly written pages was measured to cost the kernel up to twice the
            # system time of later reads, through a plain open() as much as the toolkit's.
            with storage.open(OBJECT_KEY) as stream:
                while stream.read(MIB):
                    pass
    elif case.endswith("-get"):
        with storage.open(OBJECT_KEY, sha256=expected) as stream, target.open("wb") as dst:
            shutil.copyfileobj(stream, dst)
    else:
        raise SystemExit(f"unknown case {case}")
    seconds = time.perf_counter() - start
    cpu_after, blocks_after = _usage()
    peak = _peak_rss_mib()
    target.unlink(missing_ok=True)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_after - cpu,
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


THROUGHPUT_CASES = {
    "copyfileobj": "plain copy: shutil.copyfileobj file to file (limit, with the next row)",
    "sha256": "SHA-256 pass alone: hashlib.file_digest over the file, nothing written",
    "local-nofsync": "local put, fsync off (read, SHA-256, sniff, write, link)",
    "local-verified-get": "local get, verified (open with sha256=, copyfileobj to a file)",
    "local-put": "local put, fsync on (the default): the cost of fsync",
    "local-get": "local get, unverified (open, copyfileobj to a file)",
}


def throughput_rows(source: Path, folder: Path, size_mib: int, rounds: int) -> list[list[str]]:
    """Put and get against their limit, the slower of a plain copy and a SHA-256 pass.

    The contenders alternate within each round (the order rotates), medians
    of the rounds. The CPU column is every thread of the child, so a put or
    get whose hashing overlaps its copy shows more CPU than wall time.
    """
    seconds: dict[str, list[float]] = {name: [] for name in THROUGHPUT_CASES}
    cpu: dict[str, list[float]] = {name: [] for name in THROUGHPUT_CASES}
    for round_index in range(rounds):
        names = list(THROUGHPUT_CASES)
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            numbers = measure(name, source, folder)
            seconds[name].append(numbers["seconds"])
            cpu[name].append(numbers["cpu_seconds"])
    median = {name: statistics.median(values) for name, values in seconds.items()}
    limit_name = max(("copyfileobj", "sha256"), key=median.__getitem__)
    limit = median[limit_name]
    rows: list[list[str]] = []
    for name, label in THROUGHPUT_CASES.items():
        took = median[name]
        speed = f"{size_mib / took:.0f} MiB/s (CPU {statistics.median(cpu[name]):.2f} s)"
        if name in ("copyfileobj", "sha256"):
            result = "the limit" if name == limit_name else f"{limit / took:.2f}x the limit"
            target = "-"
        elif name in ("local-nofsync", "local-verified-get"):
            ratio = limit / took
            verdict = "met" if ratio >= THROUGHPUT_TARGET else "MISSED"
            result = f"{ratio:.2f}x the limit"
            target = f">= {THROUGHPUT_TARGET}x: {verdict}"
        elif name == "local-put":
            extra = took - median["local-nofsync"]
            result = (
                f"{median['local-nofsync'] / took:.2f}x the put without fsync "
                f"(fsync: {extra * 1000 / size_mib * 1024:+.0f} ms per GiB)"
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
