"""Fixtures for the storage tests: every back end, each test isolated.

* ``local``: a fresh folder under pytest's tmp_path;
* ``memory``: a fresh ``memory://<uuid>`` root, removed afterwards;
* ``s3``: a real S3-compatible HTTP endpoint — moto's server mode, started
  once per session on 127.0.0.1 with a free port — and a new bucket per
  test; dummy credentials, nothing read from the environment's AWS setup;
* the database: one migrated database for the whole session (a fresh copy
  per test costs seconds on a shared machine); each test starts with an
  empty ``files`` table and makes its own users, so tests cannot see each
  other's rows;
* ``pyfs``: pyfilesystem2's MemoryFS, in the ``pyfs`` tox environment only
  (it needs ``fs`` and ``setuptools<82``); elsewhere those cases skip and say why.
"""

from __future__ import annotations

import logging
import os
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest

from tests.conftest import server_url
from toolkit.db import migrate
from toolkit.storage import LocalStorage, MemoryStorage, S3Storage, Storage

BACKENDS = ("local", "memory", "s3", "pyfs")

try:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
        import fs.memoryfs  # noqa: F401

    PYFS_AVAILABLE = True
except ImportError:
    PYFS_AVAILABLE = False

_DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}
_CLEARED_AWS = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


@pytest.fixture(scope="session")
def storage_database_url() -> Iterator[str]:
    """A database migrated once for the storage tests, dropped at the end."""
    name = f"toolkit_storage_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        with psycopg.connect(server_url(), autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        raise RuntimeError(f"the storage tests need PostgreSQL at {server_url()}: {exc}") from exc
    url = server_url(name)
    migrate(url)
    yield url
    with psycopg.connect(server_url(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(storage_database_url: str) -> str:
    """Overrides the per-test database copy: the shared one, with an empty files table."""
    with psycopg.connect(storage_database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM files")
    return storage_database_url


@pytest.fixture
def direct_database_url(database_url: str) -> str:
    """The shared database, which these tests reach directly (never through a pooler)."""
    return database_url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The URL of an in-process moto S3 server on loopback (dummy credentials set)."""
    from moto.server import ThreadedMotoServer

    saved = {name: os.environ.get(name) for name in (*_DUMMY_AWS, *_CLEARED_AWS)}
    os.environ.update(_DUMMY_AWS)
    for name in _CLEARED_AWS:
        os.environ.pop(name, None)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def s3_admin(s3_endpoint: str) -> Any:
    """A plain boto3 client on the moto server, to set up and inspect behind the toolkit."""
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def s3_bucket(s3_admin: Any) -> Iterator[str]:
    """A new, empty bucket for this test; emptied and removed afterwards."""
    name = f"t-{uuid.uuid4().hex[:20]}"
    client = s3_admin
    client.create_bucket(Bucket=name)
    yield name
    for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
        client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=item["Key"])
    client.delete_bucket(Bucket=name)


def s3_url(endpoint: str, bucket: str, prefix: str = "files") -> str:
    return f"s3://{bucket}/{prefix}?endpoint={endpoint}&region=us-east-1"


@pytest.fixture
def make_storage(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[str], Storage]]:
    """Build a fresh Storage of a back end by name; all are closed after the test."""
    made: list[Storage] = []

    def make(backend: str) -> Storage:
        storage: Storage
        if backend == "local":
            storage = LocalStorage(tmp_path / f"root-{len(made)}")
        elif backend == "memory":
            storage = MemoryStorage()
        elif backend == "s3":
            endpoint = request.getfixturevalue("s3_endpoint")
            bucket = request.getfixturevalue("s3_bucket")
            storage = S3Storage(bucket, "files", endpoint_url=endpoint, region="us-east-1")
        elif backend == "pyfs":
            if not PYFS_AVAILABLE:
                pytest.skip("pyfilesystem2 runs in its own tox env: tox -e pyfs")
            from fs.memoryfs import MemoryFS

            from toolkit.storage.pyfs import PyFilesystemStorage

            storage = PyFilesystemStorage(MemoryFS(), "/files")
        else:  # pragma: no cover
            raise ValueError(backend)
        made.append(storage)
        return storage

    yield make
    for storage in made:
        storage.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def storage(backend: str, make_storage: Callable[[str], Storage]) -> Storage:
    """One fresh Storage of each back end in turn (the contract suite runs on all)."""
    return make_storage(backend)


def leftovers(storage: Storage) -> list[str]:
    """Everything a back end holds, temporary files and unfinished uploads included."""
    if isinstance(storage, LocalStorage):
        return sorted(
            str(path.relative_to(storage.root))
            for path in Path(storage.root).rglob("*")
            if path.is_file()
        )
    if isinstance(storage, S3Storage):
        request = storage.objects.request
        found = [item["Key"] for item in request("list_objects_v2").get("Contents", [])]
        found += [
            "upload:" + upload["Key"]
            for upload in request("list_multipart_uploads").get("Uploads", [])
        ]
        return sorted(found)
    if isinstance(storage, MemoryStorage):
        try:
            return sorted(storage.fs.find(storage.root))
        except FileNotFoundError:
            return []
    filesystem = storage.filesystem  # type: ignore[attr-defined]
    return sorted(path for path in filesystem.walk.files("/"))
