"""The key grammar: a traversal corpus, generated keys, file names as metadata only."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit.errors import InvalidInput
from toolkit.storage import LocalStorage
from toolkit.storage.keys import (
    MAX_KEY_LENGTH,
    check_key,
    check_prefix,
    clean_filename,
    file_key,
    is_file_key,
    is_internal,
    is_staging_prefix,
    staging_key,
    staging_prefix,
    tenant_area,
)
from toolkit.tenants import DEFAULT_TENANT

TRAVERSAL_CORPUS = [
    ("..", "'..' segment"),
    ("../etc/passwd", "'..' segment"),
    ("a/../../etc/passwd", "'..' segment"),
    ("a/./b", "'.' segment"),
    ("a/..", "'..' segment"),
    ("/etc/passwd", "absolute path"),
    ("//server/share/x", "absolute path"),
    ("~/x", "absolute path"),
    ("~root/x", "absolute path"),
    ("a\\b", "backslash"),
    ("..\\..\\windows\\win.ini", "backslash"),
    ("a\x00.txt", "NUL"),
    ("a\x00/../../x", "NUL"),
    ("a\nb", "control character"),
    ("a\rb", "control character"),
    ("a\tb", "control character"),
    ("a\x1bb", "control character"),
    ("a\x7fb", "control character"),
    ("a\x85b", "control character"),
    ("C:/Windows/system32", "drive letter"),
    ("c:x", "drive letter"),
    ("a/C:/x", "':'"),
    ("file:///etc/passwd", "':'"),
    ("%2e%2e/x", "percent"),
    ("%2E%2E%2Fetc", "percent"),
    ("..%2f..%2fetc", "percent"),
    ("a/%00", "percent"),
    ("%252e%252e/x", "percent"),
    ("a%", "percent"),
    ("a" * (MAX_KEY_LENGTH + 1), "longer than"),
    ("a/" + "b" * 129, "segment longer than"),
    ("/".join(["a"] * 9), "more than 8 segments"),
    ("", "must not be empty"),
    ("a//b", "empty segment"),
    ("a/", "empty segment"),
    (".hidden", "starting with a letter or digit"),
    ("a/.tmp-123", "starting with a letter or digit"),
    ("_staging/x", "starting with a letter or digit"),
    ("-rf", "starting with a letter or digit"),
    ("a b", "letters, digits"),
    ("a*b", "letters, digits"),
    ("a?b", "letters, digits"),
    ('a"b', "letters, digits"),
    ("a|b", "letters, digits"),
    ("caf\u00e9", "non-ASCII"),
    ("\u2024\u2024/x", "non-ASCII"),  # one-dot leaders that look like '..'
    ("a\uff0f..", "non-ASCII"),  # a fullwidth solidus
    ("\u202etxt.exe", "non-ASCII"),
    ("CON", "reserved device name"),
    ("a/nul.txt", "reserved device name"),
    ("LPT1", "reserved device name"),
]


@pytest.mark.parametrize(("key", "reason"), TRAVERSAL_CORPUS)
def test_the_traversal_corpus_is_rejected_with_a_clear_error(key: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match="invalid key") as caught:
        check_key(key)
    assert reason in str(caught.value)
    assert caught.value.field == "key"


@pytest.mark.parametrize("key", [None, 1, b"a/b", ["a"]])
def test_non_strings_are_rejected(key: object) -> None:
    with pytest.raises(InvalidInput, match="must be a string"):
        check_key(key)


@pytest.mark.parametrize(
    "key",
    ["a", "a/b/c.txt", "0/report.v2.final-1_b.pdf", "A-b_c.d", "x" * 128, "a.", "a..b"],
)
def test_good_keys_pass(key: str) -> None:
    assert check_key(key) == key


def test_prefixes_may_be_empty_or_end_with_a_slash() -> None:
    assert check_prefix("") == ""
    assert check_prefix("a/") == "a/"
    assert check_prefix("a/b") == "a/b"
    with pytest.raises(InvalidInput, match="invalid prefix"):
        check_prefix("../")


def test_generated_keys_are_owner_purpose_uuid() -> None:
    owner, file_id = uuid.uuid4(), uuid.uuid4()
    assert file_key(owner, "attachment", file_id, tenant=None) == f"{owner}/attachment/{file_id}"
    with pytest.raises(InvalidInput, match="purpose must be one of"):
        file_key(owner, "secret", file_id, tenant=None)


def test_generated_keys_start_with_their_tenants_area() -> None:
    owner, file_id, tenant, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    key = file_key(owner, "generated", file_id, tenant=tenant)
    assert key == f"t/{tenant}/{owner}/generated/{file_id}"
    assert staging_key(file_id, tenant=tenant) == f"t/{tenant}/_staging/{file_id}"
    # The default tenant's area is the root, so a single workspace keeps its layout.
    assert tenant_area(DEFAULT_TENANT) == tenant_area(None) == ""
    assert staging_key(file_id, tenant=DEFAULT_TENANT) == f"_staging/{file_id}"
    legacy = file_key(owner, "generated", file_id, tenant=DEFAULT_TENANT)
    assert legacy == f"{owner}/generated/{file_id}"
    # A key belongs to exactly one tenant's area: none is inside another's.
    assert is_file_key(key, tenant=tenant)
    assert not is_file_key(key, tenant=other)
    assert not is_file_key(key, tenant=None)
    assert is_file_key(legacy, tenant=None)
    assert not is_file_key(legacy, tenant=tenant)
    for stray in (f"t/{tenant}/{owner}/generated/x", f"t/{tenant}/_staging/{file_id}", "a/b/c"):
        assert not is_file_key(stray, tenant=tenant)
    # Staging keys are the toolkit's own in every area; nothing else is.
    assert is_internal(staging_key(file_id, tenant=tenant))
    assert is_staging_prefix(staging_prefix(tenant))
    assert is_staging_prefix(staging_prefix(None))
    assert not is_internal(f"t/{tenant}/x/_staging/{file_id}")
    assert not is_staging_prefix(f"t/{tenant}/")
    with pytest.raises(InvalidInput, match="tenant must be a UUID"):
        tenant_area("workspace-a")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "cleaned"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\ada\\report.pdf", "report.pdf"),
        ("evil\x00.txt\n", "evil.txt"),
        ("\u202egnp.exe", "gnp.exe"),
        ("..", None),
        ("/", None),
        (None, None),
        ("été.md", "été.md"),
        ("a" * 300 + ".pdf", "a" * 251 + ".pdf"),
    ],
)
def test_original_names_are_metadata_only(name: str | None, cleaned: str | None) -> None:
    assert clean_filename(name) == cleaned


def test_a_symlink_inside_the_root_cannot_lead_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    storage = LocalStorage(tmp_path / "root")
    os.symlink(outside, Path(storage.root) / "link")
    with pytest.raises(InvalidInput, match="'link' is a symbolic link"):
        storage.get("link/secret.txt")
    with pytest.raises(InvalidInput, match="'link' is a symbolic link"):
        storage.put("link/planted.txt", b"x")
    assert not (outside / "planted.txt").exists()
    os.symlink(outside / "secret.txt", Path(storage.root) / "direct")
    with pytest.raises(InvalidInput, match="'direct' is a symbolic link"):
        storage.get("direct")


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
    | st.from_regex(r"[./\\a%2e:]{1,12}")
)
def test_any_accepted_key_stays_inside_the_root(key: str) -> None:
    root = "/srv/root"
    try:
        check_key(key)
    except InvalidInput:
        return
    resolved = os.path.normpath(os.path.join(root, key))
    assert resolved.startswith(root + "/")
    assert ".." not in key.split("/")
