"""The magic-number sniffer."""

from __future__ import annotations

import pytest

from toolkit.storage.sniff import normalise_type, sniff

DOCX_HEAD = (
    b"PK\x03\x04" + b"\x00" * 26 + b"[Content_Types].xml" + b"\x00" * 40 + b"word/document.xml"
)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image/png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
        (b"GIF89a\x01\x00", "image/gif"),
        (b"GIF87a\x01\x00", "image/gif"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"%PDF-1.7\n", "application/pdf"),
        (b"PK\x03\x04\x14\x00\x00\x00", "application/zip"),
        (DOCX_HEAD, "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
        (b'{"a": [1, 2]}', "application/json"),
        (b"[1, 2, 3]", "application/json"),
        (b"# Title\n\nSome text\n", "text/markdown"),
        (b"intro\n\n```python\nx = 1\n```\n", "text/markdown"),
        (b"a,b,c\n1,2,3\n4,5,6\n", "text/csv"),
        (b"just some words\n", "text/plain"),
        ("été à Paris\n".encode(), "text/plain"),
        (b"", "text/plain"),
        (b"\x7fELF\x02\x01\x01\x00", "application/octet-stream"),
        (b"MZ\x90\x00\x03\x00\x00\x00", "application/octet-stream"),
        (b"text with a \x00 NUL", "application/octet-stream"),
        (b"\xff\xfe\xfd invalid utf-8", "application/octet-stream"),
        (b"<html><script>alert(1)</script>", "text/plain"),
    ],
)
def test_sniff(head: bytes, expected: str) -> None:
    assert sniff(head, complete=True) == expected


def test_a_utf8_sequence_cut_at_the_sniff_boundary_is_still_text() -> None:
    head = ("é" * 2048).encode()[:4095]
    assert sniff(head, complete=False) == "text/plain"
    assert sniff(head, complete=True) == "application/octet-stream"


def test_json_that_does_not_parse_is_text() -> None:
    assert sniff(b"{not json", complete=True) == "text/plain"


@pytest.mark.parametrize(
    ("claimed", "normal"),
    [
        ("text/plain; charset=utf-8", "text/plain"),
        (" IMAGE/PNG ", "image/png"),
        ("", None),
        (None, None),
        ("x" * 300, None),
        ("text/\u00e9", None),
    ],
)
def test_claimed_types_are_normalised(claimed: str | None, normal: str | None) -> None:
    assert normalise_type(claimed) == normal
