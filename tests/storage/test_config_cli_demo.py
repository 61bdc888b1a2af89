"""Choosing a back end from TOOLKIT_STORAGE_URL, the sweep command, and the demo's report."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tests.core.factories import make_execution
from toolkit.commands import storage as storage_commands
from toolkit.config import Settings
from toolkit.db import Database
from toolkit.errors import ConfigurationError
from toolkit.storage import FileStore, LocalStorage, MemoryStorage, S3Storage, open_storage
from toolkit.storage import repository as files
from toolkit.workflows.demo_storage import store_demo_report

from .conftest import PYFS_AVAILABLE, s3_url


def test_file_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = open_storage(f"file://{tmp_path}/abs")
    assert isinstance(absolute, LocalStorage)
    assert absolute.root == str(tmp_path / "abs")
    monkeypatch.chdir(tmp_path)
    relative = open_storage("file://./toolkit-files")  # the default setting
    assert relative.root == str(tmp_path / "toolkit-files")
    assert open_storage("plain/folder").root == str(tmp_path / "plain" / "folder")  # type: ignore[attr-defined]


def test_memory_urls_are_isolated() -> None:
    first, second = open_storage("memory://"), open_storage("memory://")
    assert isinstance(first, MemoryStorage)
    first.put("a.txt", b"one")
    assert not second.exists("a.txt")
    named = open_storage("memory://shared-root")
    named.put("b.txt", b"two")
    assert open_storage("memory://shared-root").get("b.txt") == b"two"
    for storage in (first, second, named):
        storage.close()
    assert not open_storage("memory://shared-root").exists("b.txt")


def test_s3_urls(s3_endpoint: str, s3_bucket: str) -> None:
    storage = open_storage(s3_url(s3_endpoint, s3_bucket, "deep/prefix"))
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix) == (s3_bucket, "deep/prefix")
    storage.put("x.txt", b"x")
    assert storage.objects.request("head_object", Key="deep/prefix/x.txt")
    config = storage.fs.s3._client_config  # botocore's checksum setting for S3-compatible servers
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "must not be empty"),
        ("ftp://host/x", "unsupported scheme"),
        ("s3://", "no bucket"),
        ("s3://bucket/p?endpont=http://x", "unknown parameter"),
        ("s3://bucket/p?checksum=always", "checksum must be"),
        ("memory://../x", "bad memory root"),
        ("file://", "bad file URL"),
    ],
)
def test_bad_storage_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        open_storage(url)


PLANTED = "storePw-PLANTED-5e80"


@pytest.mark.parametrize(
    ("url", "where"),
    [
        (f"memory://u:{PLANTED}@x", "no credentials"),
        (f"memory://:{PLANTED}@", "no credentials"),
        (f"s3://u:{PLANTED}@bucket/prefix", "AWS_ACCESS_KEY_ID"),
        (f"s3://bucket?endpoint=http://u:{PLANTED}@minio:9000", "AWS_ACCESS_KEY_ID"),
        (f"file://u:{PLANTED}@/srv/files", "file system's permissions"),
    ],
)
def test_user_and_password_are_refused_where_the_scheme_has_no_use_for_them(
    url: str, where: str
) -> None:
    """userinfo is refused, not taken for a root, bucket or path; the URL is not echoed."""
    with pytest.raises(ConfigurationError, match="takes no user:password@ part") as info:
        open_storage(url)
    assert where in str(info.value) and PLANTED not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        f"memory://root?password={PLANTED}",
        f"s3://u:{PLANTED}/x@bucket",
        f"file://./files?password={PLANTED}",
        f"u:{PLANTED}@host://x",
    ],
)
def test_a_bad_storage_url_is_not_echoed(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        open_storage(url)
    assert PLANTED not in str(info.value)


def test_an_at_sign_in_a_path_or_prefix_is_still_a_path(tmp_path: Path) -> None:
    assert open_storage(f"file://{tmp_path}/a@b").root == str(tmp_path / "a@b")  # type: ignore[attr-defined]


@pytest.mark.skipif(PYFS_AVAILABLE, reason="checks the message shown without the extra")
def test_the_pyfs_adapter_says_which_extra_it_needs() -> None:
    with pytest.raises(ConfigurationError, match=r"toolkit\[pyfs\]"):
        open_storage("pyfs:mem://")


@pytest.mark.skipif(not PYFS_AVAILABLE, reason="pyfilesystem2 runs in its own tox env")
def test_pyfs_urls(tmp_path: Path) -> None:
    storage = open_storage(f"pyfs:osfs://{tmp_path}")
    storage.put("a/b.txt", b"hello")
    assert (tmp_path / "a" / "b.txt").read_bytes() == b"hello"
    storage.close()


def test_sweep_command(
    db: Database, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"file://{tmp_path}/files"
    store = FileStore(open_storage(url))
    store.stage(
        b"never recorded", owner_id="5f0c7f38-7f60-4a43-8f3b-0bd6e1c3b3a1", purpose="generated"
    )
    parser = argparse.ArgumentParser()
    storage_commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "storage",
            "sweep",
            "--database-url",
            database_url,
            "--storage-url",
            url,
            "--grace-seconds",
            "0",
        ]
    )
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "1 staged object(s) without a row removed" in out
    assert store.storage.list() == []


def test_the_demo_stores_the_report_linked_to_the_execution(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    with db.connection() as conn:
        execution = make_execution(conn)
    settings = settings.model_copy(update={"storage_url": f"file://{tmp_path}/demo"})
    line = store_demo_report(db, settings, execution.id)
    assert "read back, checksum ok" in line
    with db.connection() as conn:
        (row,) = files.list(conn, {"execution_id": execution.id}).items
    assert (row.purpose, row.status, row.content_type) == ("generated", "stored", "text/markdown")
    assert row.original_name == "report.md"
    assert (tmp_path / "demo" / row.key).read_bytes().startswith(b"# Report of execution")
