"""Benchmarks of toolkit.storage: streaming memory and local throughput.

Run as ``python benchmarks/bench_storage.py`` (``--size-mib`` and
``--s3-size-mib`` change the sizes). It prints one markdown table:

* streaming a file up (``Storage.put`` from an open file) and down
  (``Storage.open`` copied into a file with ``shutil.copyfileobj``) on local disk and on an S3
  endpoint (moto's server mode, started as a separate process on loopback,
  so only the client's memory is measured). Target: peak RSS grows by less
  than 64 MiB while 1 GiB streams through;
* local put and get throughput against a plain ``shutil.copyfileobj`` of the
  same bytes between the same files. Target: at least 0.7x its throughput.
  The toolkit's put also computes SHA-256, sniffs the type and fsyncs before
  linking into place; a row without the fsync shows what durability costs.

Every measurement runs in a fresh child process (``--measure``) that does
one transfer in one direction and nothing else, so its peak RSS
(``ru_maxrss``) is that transfer's own: the growth is the peak after the
transfer minus the peak taken in the same child before it (after imports
and opening the storage). A get reads an object that an earlier child
stored (``stage``), never one its own process wrote, so no peak set by a
put hides the get's. Throughput rounds alternate between contenders and
report medians; every child starts after an ``os.sync()``, so no one pays
for another's writeback. ``run()`` returns the rows for a top-level
benchmark runner.
"""

from __future__ import annotations

import argparse
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
THROUGHPUT_TARGET = 0.7


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


def _measure(case: str, source: Path, folder: Path, endpoint: str | None) -> dict[str, float]:
    storage = _open_storage(case, folder, endpoint)
    target = folder / f"copy-{uuid.uuid4().hex}"
    baseline = _peak_rss_mib()
    start = time.perf_counter()
    if case == "copyfileobj":
        with source.open("rb") as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    elif case.endswith(("-put", "-stage")) or case == "local-nofsync":
        with source.open("rb") as stream:
            storage.put(OBJECT_KEY, stream, allowed_types=None)
    elif case.endswith("-get"):
        with storage.open(OBJECT_KEY) as stream, target.open("wb") as dst:
            shutil.copyfileobj(stream, dst)
    else:
        raise SystemExit(f"unknown case {case}")
    seconds = time.perf_counter() - start
    peak = _peak_rss_mib()
    target.unlink(missing_ok=True)
    return {"seconds": seconds, "rss_before_mib": baseline, "rss_peak_mib": peak}


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
        # Throughput: alternate the contenders, medians of the rounds.
        times: dict[str, list[float]] = {
            "copyfileobj": [],
            "local-put": [],
            "local-nofsync": [],
            "local-get": [],
        }
        for round_index in range(rounds):
            names = list(times)
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(measure(name, source, folder)["seconds"])
        base = statistics.median(times["copyfileobj"])
        mib_s = size_mib / base
        rows.append(
            ["local copyfileobj (baseline)", f"{size_mib} MiB", f"{mib_s:.0f} MiB/s", "1.00x", "-"]
        )
        for name, label in (
            ("local-put", "local put (sha256 + sniff + fsync + link)"),
            ("local-nofsync", "local put, fsync off"),
            ("local-get", "local get (open, copyfileobj to a file)"),
        ):
            seconds = statistics.median(times[name])
            ratio = base / seconds
            verdict = "met" if ratio >= THROUGHPUT_TARGET else "MISSED"
            rows.append(
                [
                    label,
                    f"{size_mib} MiB",
                    f"{size_mib / seconds:.0f} MiB/s",
                    f"{ratio:.2f}x",
                    f">= {THROUGHPUT_TARGET}x: {verdict}",
                ]
            )
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
