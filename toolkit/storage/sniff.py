"""Content types from the first bytes of a file, and the allow-list they are checked against.

A small magic-number sniffer (no libmagic): PNG, JPEG, GIF, WEBP, PDF, ZIP
and the Office formats inside ZIP (docx, xlsx, pptx), and for text — valid
UTF-8 without NUL or stray control characters — JSON, CSV, markdown and
plain text by a few cheap heuristics. Anything else is
``application/octet-stream``. The client's claimed type is recorded next to
the sniffed one, never trusted.
"""

from __future__ import annotations

import json
from typing import Final

SNIFF_BYTES: Final = 4096
"""How many leading bytes the sniffer looks at."""

OCTET_STREAM: Final = "application/octet-stream"

DEFAULT_ALLOWED_TYPES: Final = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "application/pdf",
        "application/zip",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "application/json",
        "text/csv",
        "text/markdown",
        "text/plain",
    }
)
"""What an upload may be unless the caller passes its own allow-list."""

INERT_TYPES: Final = DEFAULT_ALLOWED_TYPES | {OCTET_STREAM}
"""Types a browser never runs as a page or script when served with ``nosniff``.

Everything the sniffer can answer is here. Active content — HTML, SVG, XML,
JavaScript — is sniffed as text (``text/plain``), and any other type (a
tampered row, a caller's ``content_type``) is served as a safe stand-in by
:func:`download_type`."""

_TEXTUAL_HINTS: Final = ("html", "xml", "javascript", "ecmascript", "json", "script")

_OFFICE: Final = (
    (b"word/", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    (b"xl/", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    (b"ppt/", "application/vnd.openxmlformats-officedocument.presentationml.presentation"),
)
_ALLOWED_CONTROLS: Final = frozenset(b"\t\n\r\f")


def _sniff_zip(head: bytes) -> str:
    # The first local file header names the first member; Office files carry
    # [Content_Types].xml first and their main folder soon after.
    for marker, content_type in _OFFICE:
        if marker in head and b"[Content_Types].xml" in head:
            return content_type
    return "application/zip"


def _utf8_prefix(head: bytes, complete: bool) -> str | None:
    """``head`` as text if it is UTF-8 (a sequence cut at the end is fine unless complete)."""
    for cut in range(4 if not complete else 1):
        try:
            return head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def _sniff_text(head: bytes, complete: bool) -> str | None:
    if b"\x00" in head:
        return None
    if any(byte < 0x20 and byte not in _ALLOWED_CONTROLS for byte in head) or b"\x7f" in head:
        return None
    text = _utf8_prefix(head[3:] if head.startswith(b"\xef\xbb\xbf") else head, complete)
    if text is None:
        return None
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        if complete:
            try:
                json.loads(stripped)
                return "application/json"
            except ValueError:
                pass
        elif stripped.startswith(('{"', "{\n", "{ ", "{}", "[")):
            return "application/json"
    lines = [line for line in text.splitlines()[:20] if line.strip()]
    if not complete and len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut
    if lines and (
        lines[0].startswith(("# ", "## ", "### ", "---"))
        or any(line.startswith(("```", "- [", "* ", "> ")) for line in lines)
    ):
        return "text/markdown"
    if len(lines) >= 2:
        commas = [line.count(",") for line in lines]
        if commas[0] >= 1 and all(count == commas[0] for count in commas):
            return "text/csv"
    return "text/plain"


def sniff(head: bytes, *, complete: bool = False) -> str:
    """The content type of a file that starts with ``head``.

    ``complete`` says ``head`` is the whole file (so JSON can be parsed and a
    cut UTF-8 sequence at the end is an error, not a truncation).
    """
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _sniff_zip(head)
    if head == b"":
        return "text/plain"
    return _sniff_text(head, complete) or OCTET_STREAM


def download_type(content_type: str | None) -> str:
    """The ``Content-Type`` to serve a stored file with: its own if inert, else a safe one.

    An inert type (:data:`INERT_TYPES`) is kept. Any other — ``text/html``,
    ``image/svg+xml``, ``application/xml``, ``text/javascript``, or a type
    the toolkit never sniffs — becomes ``text/plain`` if it is textual and
    ``application/octet-stream`` otherwise, so the browser shows or saves
    it and never runs it.
    """
    base = normalise_type(content_type)
    if base in INERT_TYPES:
        return base
    if base and (base.startswith("text/") or any(hint in base for hint in _TEXTUAL_HINTS)):
        return "text/plain"
    return OCTET_STREAM


def normalise_type(content_type: str | None) -> str | None:
    """A claimed ``Content-Type`` without parameters, lower case, bounded; None if absent."""
    if content_type is None:
        return None
    base = content_type.split(";", 1)[0].strip().lower()
    if not base or len(base) > 255 or not base.isascii() or not base.isprintable():
        return None
    return base
