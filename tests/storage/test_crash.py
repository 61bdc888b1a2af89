"""A writer killed mid-upload: nothing at the final key, and the sweep cleans what it left.

The writer is a real child process streaming an upload into the storage
(a local folder, or the moto S3 server); it is SIGKILLed while its bytes
are on the way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from toolkit.db import Database
from toolkit.storage import FileStore, LocalStorage, S3Storage, Storage

from .conftest import leftovers, s3_url

ROOT = Path(__file__).resolve().parents[2]
LATER = datetime.now(UTC) + timedelta(days=1)

WRITER = textwrap.dedent(
    """
    import sys, time, uuid
    from toolkit.storage import FileStore, open_storage

    class Slow:
        def __init__(self):
            self.sent = 0
        def read(self, size=-1):
            if self.sent >= 12 << 20:
                print("mid-upload", flush=True)
                time.sleep(60)  # killed here
            self.sent += size
            return b"a" * size

    store = FileStore(open_storage(sys.argv[1]), max_bytes=1 << 30)
    store.stage(Slow(), owner_id=uuid.uuid4(), purpose="attachment")
    """
)


def kill_mid_upload(url: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "mid-upload", child.stderr.read() if child.stderr else ""
        time.sleep(0.2)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_a_writer_killed_mid_upload_leaves_nothing_visible(
    backend: str, make_storage, db: Database, s3_endpoint: str
) -> None:
    storage: Storage = make_storage(backend)
    if isinstance(storage, LocalStorage):
        url = f"file://{storage.root}"
    else:
        assert isinstance(storage, S3Storage)
        url = s3_url(s3_endpoint, storage.bucket)
    kill_mid_upload(url)

    assert storage.list() == []  # no object at any key, staging included
    left = leftovers(storage)
    assert len(left) == 1, left  # the partial write: a .tmp- file, or an open multipart upload
    assert ".tmp-" in left[0] or left[0].startswith("upload:")

    store = FileStore(storage)
    with db.connection() as conn:
        if backend == "local":
            # Too young for the grace period. (moto reports every multipart upload as
            # initiated in 2010, so on S3 this is checked against AWS only.)
            assert store.sweep(conn).partial_uploads == []
        report = store.sweep(conn, grace_seconds=0, now=LATER)
    assert len(report.partial_uploads) == 1
    assert leftovers(storage) == []
