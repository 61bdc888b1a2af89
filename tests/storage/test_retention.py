"""Retention (S3 Object Lock) is a method of the back end, and S3 lives in one module per mode.

``Storage.retain`` puts an object under retention where the back end has
Object Lock (an S3 bucket made with it, on moto's server) and raises
RetentionUnavailable everywhere else, changing nothing; ``retention`` reads
what the object is under. The last test reads the toolkit's source: every
S3 request is sent from the S3 module (``toolkit/aio/storage/s3.py`` and its
generated twin), none through s3fs's undocumented ``call_s3``/``_call_s3``.
"""

from __future__ import annotations

import ast
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore import xform_name
from botocore.session import get_session

from toolkit.aio.storage import AsyncStorage
from toolkit.errors import InvalidInput, NotFound, RetentionUnavailable
from toolkit.storage import S3Storage, Storage

TOOLKIT = Path(__file__).resolve().parents[2] / "toolkit"
S3_MODULES = {TOOLKIT / "aio" / "storage" / "s3.py", TOOLKIT / "storage" / "s3.py"}


def _later(days: int = 2) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


@pytest.fixture
def locked_bucket(s3_admin: Any) -> Iterator[str]:
    """A bucket made with Object Lock; its locked versions are removed (bypassing governance)."""
    name = f"lock-{uuid.uuid4().hex[:16]}"
    s3_admin.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    yield name
    listed = s3_admin.list_object_versions(Bucket=name)
    for version in listed.get("Versions", []) + listed.get("DeleteMarkers", []):
        s3_admin.delete_object(
            Bucket=name,
            Key=version["Key"],
            VersionId=version["VersionId"],
            BypassGovernanceRetention=True,
        )
    s3_admin.delete_bucket(Bucket=name)


@pytest.fixture
def make_s3(s3_endpoint: str) -> Iterator[Callable[..., S3Storage]]:
    made: list[S3Storage] = []

    def make(bucket: str, **options: Any) -> S3Storage:
        made.append(
            S3Storage(bucket, "kept", endpoint_url=s3_endpoint, region="us-east-1", **options)
        )
        return made[-1]

    yield make
    for storage in made:
        storage.close()


def test_an_object_in_an_object_lock_bucket_is_retained(
    make_s3: Callable[..., S3Storage], locked_bucket: str, s3_admin: Any
) -> None:
    storage = make_s3(locked_bucket)
    storage.put("anchors/a.json", b'{"a": 1}', allowed_types=None)
    assert storage.retention("anchors/a.json") is None
    until = _later(3)
    held = storage.retain("anchors/a.json", mode="GOVERNANCE", until=until)
    assert held.mode == "GOVERNANCE"
    assert abs(held.until - until) < timedelta(seconds=1)
    assert storage.retention("anchors/a.json") == held
    # What S3 itself says, and what it refuses: deleting the retained version.
    head = s3_admin.head_object(Bucket=locked_bucket, Key="kept/anchors/a.json")
    assert (head["ObjectLockMode"], head["ObjectLockRetainUntilDate"]) == (held.mode, held.until)
    with pytest.raises(s3_admin.exceptions.ClientError, match="AccessDenied"):
        s3_admin.delete_object(
            Bucket=locked_bucket, Key="kept/anchors/a.json", VersionId=head["VersionId"]
        )
    with pytest.raises(NotFound):
        storage.retention("anchors/missing.json")


def test_a_bucket_default_retention_stands(
    make_s3: Callable[..., S3Storage], locked_bucket: str, s3_admin: Any
) -> None:
    s3_admin.put_object_lock_configuration(
        Bucket=locked_bucket,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
        },
    )
    # S3 wants a checksum on every upload to a bucket with a default retention.
    storage = make_s3(locked_bucket, checksum="when_supported")
    storage.put("anchors/b.json", b"{}", allowed_types=None)
    held = storage.retain("anchors/b.json", mode="COMPLIANCE", until=_later(5))
    assert held.mode == "GOVERNANCE"  # the bucket's rule, applied at the write; nothing sent
    assert held.until < _later(2)


def test_retain_checks_its_arguments_before_asking_s3(
    make_s3: Callable[..., S3Storage], locked_bucket: str
) -> None:
    storage = make_s3(locked_bucket)
    storage.put("anchors/c.json", b"{}", allowed_types=None)
    for bad in (
        {"mode": "FOREVER", "until": _later()},
        {"mode": "GOVERNANCE", "until": datetime.now() + timedelta(days=2)},  # naive
        {"mode": "GOVERNANCE", "until": datetime.now(UTC) - timedelta(minutes=1)},
        {"mode": "GOVERNANCE", "until": "2999-01-01"},
    ):
        with pytest.raises(InvalidInput):
            storage.retain("anchors/c.json", **bad)
    with pytest.raises(InvalidInput, match="invalid key"):
        storage.retain("../c.json", mode="GOVERNANCE", until=_later())
    assert storage.retention("anchors/c.json") is None


def test_back_ends_without_object_lock_refuse_and_change_nothing(storage: Storage) -> None:
    storage.put("kept/d.txt", b"plain text\n")
    with pytest.raises(RetentionUnavailable) as refused:
        storage.retain("kept/d.txt", mode="COMPLIANCE", until=_later())
    if isinstance(storage, S3Storage):  # the fixture's bucket was made without Object Lock
        assert refused.value.reason == "the bucket has no Object Lock"
    else:
        assert refused.value.reason is None
        assert "create-only" in str(refused.value)
    assert storage.retention("kept/d.txt") is None
    with pytest.raises(NotFound):
        storage.retention("kept/missing.txt")
    assert storage.delete("kept/d.txt")  # still an ordinary object


@pytest.mark.asyncio
async def test_the_async_facade_retains_through_the_back_end(
    make_s3: Callable[..., S3Storage], locked_bucket: str, make_storage: Callable[[str], Storage]
) -> None:
    async with AsyncStorage(make_s3(locked_bucket)) as locked:
        await locked.put("anchors/e.json", b"{}", allowed_types=None)
        held = await locked.retain("anchors/e.json", mode="GOVERNANCE", until=_later())
        assert await locked.retention("anchors/e.json") == held
    local = AsyncStorage(make_storage("local"))
    await local.put("kept/e.txt", b"plain text\n")
    with pytest.raises(RetentionUnavailable):
        await local.retain("kept/e.txt", mode="GOVERNANCE", until=_later())


def _s3_operations() -> set[str]:
    model = get_session().get_service_model("s3")
    return {xform_name(name) for name in model.operation_names}


def test_every_s3_request_is_sent_from_the_s3_module() -> None:
    operations = _s3_operations()
    assert {"put_object", "get_object_lock_configuration", "put_object_retention"} <= operations
    found = []
    for path in sorted(TOOLKIT.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            named = None
            if isinstance(node, ast.Constant) and node.value in operations:
                named = node.value
            elif isinstance(node, ast.Attribute) and node.attr in ("call_s3", "_call_s3"):
                named = node.attr
            if named and (path not in S3_MODULES or named in ("call_s3", "_call_s3")):
                found.append(f"{path.relative_to(TOOLKIT.parent)}:{node.lineno}: {named}")
    assert found == [], "S3 requests outside the S3 module:\n" + "\n".join(found)
