"""The byte format of an LLM cache entry.

An entry is one marker byte followed by the payload::

    0x01 <payload>            plain
    0x02 zlib(<payload>)      compressed
    0x04 <tag> <expiry> <entry>   signed: a plain or compressed entry behind its HMAC

``tag`` is HMAC-SHA256 (32 bytes), keyed with the cache's integrity key
(a tenant's entries: with a key derived from it, :meth:`Signer.for_tenant`),
over the Redis key name (4-byte big-endian length, then UTF-8), the
absolute expiry (8 bytes, big-endian Unix milliseconds) and the inner
entry, so an entry forged, altered or copied to another key fails it, and
one kept past its expiry (a ``PERSIST``, a restored dump) is stale however
long Redis keeps it. The generations the entry was written under are in
the inner entry, so they are signed too. A reader with a :class:`Signer`
takes nothing but a signed entry whose tag verifies
(:class:`ForgedEntryError` otherwise); an entry of the earlier signed
format (``0x03 <tag> <entry>``, no expiry) is stale to it, a miss. A reader
without a signer reads a signed entry without checking its tag, as it
reads any other, but honours its expiry.

No payload may exceed the maximum entry size (``max_bytes``): a larger
entry is not written (:class:`EntryTooLargeError`), and a compressed one is
inflated at most that far, so a stored zlib bomb costs no more memory than
an honest entry; past it, the entry is corrupt.

    payload = <namespace generation: 16 bytes> <model generation: 16 bytes>
              <body type: 1 byte> <metadata JSON, UTF-8> \\n <body>

The generations come first, at fixed offsets, so that a reader can tell an
invalidated entry from a live one by comparing 32 bytes, before any parsing.
The metadata is compact JSON (JSON never holds a raw newline): the model
(``m``), the creation time (``c``, Unix seconds) and the token usage (``u``,
left out when it is the response's own ``usage``). By body type:

``s``
    the response is a string, stored as raw UTF-8 after the newline: a hit
    needs no JSON parse of it;
``j``
    any other JSON value, stored in the metadata (``r``): one parse reads
    both, and the body is empty;
``p``
    a JSON value holding long strings (a large chat completion): the
    metadata holds the value with ``""`` in their places (``r``, the
    *skeleton*) and each string's path and byte length (``p``); the body is
    the strings as raw UTF-8, one after the other. Parsing a long string as
    JSON costs several times more than decoding it as UTF-8.

Anything else (an unknown marker, bad zlib data, a missing newline,
metadata that does not parse, a body that does not decode or fit) is
corrupt: the reader treats it as a miss and deletes it.
"""

from __future__ import annotations

import hmac
import json
import json.scanner
import time
import zlib
from typing import Any, Final, NamedTuple, TypeAlias, cast
from uuid import UUID

__all__ = [
    "DEFAULT_MAX_ENTRY_BYTES",
    "GENERATION_BYTES",
    "SPLIT_MIN_CHARS",
    "TENANT_KEY_CONTEXT",
    "TENANT_SIGNERS",
    "Body",
    "CorruptEntryError",
    "EntryTooLargeError",
    "ForgedEntryError",
    "Meta",
    "Signer",
    "StaleEntryError",
    "decode",
    "encode_body",
    "encode_entry",
    "loads",
]

MARK_PLAIN: Final = 0x01
MARK_ZLIB: Final = 0x02
MARK_SIGNED_V1: Final = 0x03
"""The earlier signed format, without a signed expiry: stale to a reader with a signer."""
MARK_SIGNED: Final = 0x04
_SIGNED_PREFIX: Final = bytes((MARK_SIGNED,))
_PLAIN_PREFIX: Final = bytes((MARK_PLAIN,))
_SIGNED_V1_PREFIX: Final = bytes((MARK_SIGNED_V1,))
TAG_BYTES: Final = 32
"""Length of an entry's HMAC-SHA256 tag."""
EXPIRY_BYTES: Final = 8
"""Length of a signed entry's expiry (big-endian Unix milliseconds)."""
_SIGNED_HEADER: Final = 1 + TAG_BYTES + EXPIRY_BYTES
MIN_KEY_BYTES: Final = 16
"""The shortest integrity key accepted (128 bits)."""
TENANT_KEY_CONTEXT: Final = b"toolkit tenant "
"""What a tenant's signing key is derived over, before the tenant's UUID bytes."""
TENANT_SIGNERS: Final = 4096
"""How many tenants' derived signers one :class:`Signer` remembers."""
DEFAULT_MAX_ENTRY_BYTES: Final = 32 << 20
"""The default maximum entry size: the largest payload written or read (32 MiB)."""
GENERATION_BYTES: Final = 16
"""Length of a generation value (16 hex digits: 48 bits of issue time, 16 random bits)."""
BODY_TEXT: Final = ord("s")
BODY_JSON: Final = ord("j")
BODY_PARTS: Final = ord("p")
SPLIT_MIN_CHARS: Final = 4096
"""Strings at least this long are stored outside the JSON (shorter ones parse
as fast as they decode, measured)."""
_META_START: Final = 2 * GENERATION_BYTES + 1
_SEPARATORS: Final = (",", ":")
# Keep a compressed payload only if it saves at least this fraction.
_MIN_SAVING: Final = 0.1
_encode_json = json.JSONEncoder(separators=_SEPARATORS, ensure_ascii=False, allow_nan=False).encode
# The C scanner json.loads itself ends in, shared the same way json.loads
# shares its decoder. Called directly it skips json.loads' Python layers
# (two frames and two whitespace regexes), which on a hit right after a
# network wait cost more than the parse.
_scan_once = json.scanner.make_scanner(cast("Any", json.JSONDecoder()))


def loads(text: str) -> Any:
    """Parse one JSON value that fills ``text`` exactly (no surrounding space)."""
    try:
        value, end = _scan_once(text, 0)
    except StopIteration:  # the scanner's way to say "no value here"
        raise ValueError("not JSON") from None
    if end != len(text):
        raise ValueError("extra data after the JSON value")
    return value


class CorruptEntryError(ValueError):
    """A stored entry could not be decoded."""


class ForgedEntryError(CorruptEntryError):
    """A stored entry carries no HMAC, or one that does not verify."""


class StaleEntryError(ValueError):
    """A signed entry past its signed expiry, or of the earlier signed format: a miss."""


class EntryTooLargeError(Exception):
    """An entry's payload exceeds the maximum entry size, so it is not written."""


class Signer:
    """Signs and verifies entries with HMAC-SHA256 under one integrity key.

    Raises ValueError for a key shorter than :data:`MIN_KEY_BYTES`.
    """

    __slots__ = ("_base", "_tenants")

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"an integrity key needs at least {MIN_KEY_BYTES} bytes")
        # Copying a keyed HMAC skips hashing the padded key on every call.
        self._base = hmac.new(key, digestmod="sha256")
        self._tenants: dict[UUID, Signer] = {}

    def for_tenant(self, tenant: UUID) -> Signer:
        """The signer of ``tenant``'s entries: its key is HMAC-SHA256(this key,
        :data:`TENANT_KEY_CONTEXT` + the tenant's 16 UUID bytes).

        Derived once per tenant and remembered (up to :data:`TENANT_SIGNERS`
        tenants, then afresh), so binding a cache to a tenant costs a dict
        lookup. Two tenants' entries are signed under different keys: an
        entry copied from one tenant's key to another's never verifies.
        """
        found = self._tenants.get(tenant)
        if found is None:
            mac = self._base.copy()
            mac.update(TENANT_KEY_CONTEXT + tenant.bytes)
            found = Signer(mac.digest())
            if len(self._tenants) >= TENANT_SIGNERS:
                self._tenants = {}  # start afresh rather than grow
            self._tenants[tenant] = found  # a racing thread derives the same signer
        return found

    def tag(self, name: str, entry: bytes | memoryview) -> bytes:
        """The HMAC of ``entry`` stored under the Redis key ``name``."""
        encoded = name.encode("utf-8", "surrogatepass")
        mac = self._base.copy()
        mac.update(len(encoded).to_bytes(4, "big"))
        mac.update(encoded)
        mac.update(entry)
        return mac.digest()

    def seal(self, name: str, entry: bytes, expires_ms: int) -> bytes:
        """``entry`` signed for the Redis key ``name``, valid until ``expires_ms``."""
        signed = b"".join((expires_ms.to_bytes(EXPIRY_BYTES, "big"), entry))
        return b"".join((_SIGNED_PREFIX, self.tag(name, signed), signed))

    def verify(self, name: str, data: bytes) -> None:
        """Raise :class:`ForgedEntryError` unless ``data`` is signed for ``name``.

        :class:`StaleEntryError` for an entry of the earlier signed format
        (its tag is not checked: it is not served either way).
        """
        if data[:1] == _SIGNED_V1_PREFIX and len(data) > 1 + TAG_BYTES:
            raise StaleEntryError("an entry of the earlier signed format")
        if len(data) <= _SIGNED_HEADER or data[0] != MARK_SIGNED:
            raise ForgedEntryError("the entry carries no HMAC")
        expected = self.tag(name, memoryview(data)[1 + TAG_BYTES :])
        if not hmac.compare_digest(expected, data[1 : 1 + TAG_BYTES]):
            raise ForgedEntryError("the entry's HMAC does not match")

    def tag_generation(self, name: str, generation: bytes) -> bytes:
        """The HMAC of a generation value stored under the Redis key ``name``.

        A generation key's name never equals an entry's, so neither tag
        can stand in for the other.
        """
        return self.tag(name, b"generation:" + generation)

    def __repr__(self) -> str:
        return "Signer(<key hidden>)"


class _KeepWhole(Exception):
    """Store this response as plain JSON: its long strings cannot be cut out."""


Meta: TypeAlias = tuple[str, float, "dict[str, Any] | None", Any]
"""A decoded entry: model, created_at, usage, response (a plain tuple: cheap)."""


class Body(NamedTuple):
    """An encoded response, ready for :func:`encode_entry`."""

    kind: int
    data: bytes
    """What follows the metadata line: the text, or the cut-out strings."""
    json: str = ""
    """For ``j`` and ``p``: the JSON text of the value or its skeleton."""
    parts: list[list[Any]] | None = None
    """For ``p``: ``[path, byte length]`` of each cut-out string."""
    own_usage: Any = None
    """The response's own ``usage`` (a dict response's), if any."""


def encode_body(response: Any) -> Body:
    """Encode ``response``; TypeError/ValueError if it is not JSON."""
    if isinstance(response, str):
        return Body(BODY_TEXT, response.encode("utf-8", "surrogatepass"))
    own_usage = response.get("usage") if isinstance(response, dict) else None
    cut: list[tuple[list[Any], str]] = []
    skeleton = response
    if isinstance(response, dict | list):
        try:
            skeleton = _cut_long_strings(response, [], cut)
        except _KeepWhole:
            skeleton = response
            cut.clear()
    text = _encode_json(skeleton)
    if not cut:
        return Body(BODY_JSON, b"", text, None, own_usage)
    chunks: list[bytes] = []
    parts: list[list[Any]] = []
    for path, value in cut:
        chunk = value.encode("utf-8", "surrogatepass")
        chunks.append(chunk)
        parts.append([path, len(chunk)])
    return Body(BODY_PARTS, b"".join(chunks), text, parts, own_usage)


def _cut_long_strings(value: Any, path: list[Any], cut: list[tuple[list[Any], str]]) -> Any:
    """A copy of ``value`` with long strings replaced by "" and listed in ``cut``."""
    if isinstance(value, str):
        if len(value) >= SPLIT_MIN_CHARS:
            cut.append((list(path), value))
            return ""
        return value
    if isinstance(value, dict):
        copy = {}
        for key, item in value.items():
            if not isinstance(key, str):  # JSON turns it into a str: paths would break
                raise _KeepWhole
            path.append(key)
            copy[key] = _cut_long_strings(item, path, cut)
            path.pop()
        return copy
    if isinstance(value, list | tuple):
        items = []
        for index, item in enumerate(value):
            path.append(index)
            items.append(_cut_long_strings(item, path, cut))
            path.pop()
        return items
    return value


def encode_entry(
    body: Body,
    *,
    generations: tuple[bytes, bytes],
    model: str,
    created_at: float,
    usage: dict[str, Any] | None,
    compress_threshold: int | None,
    compress_level: int = 6,
    max_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
    signer: Signer | None = None,
    name: str = "",
    expires_at: float = 0.0,
) -> bytes:
    """Frame a body from :func:`encode_body` into an entry, compressing it if large.

    With a ``signer`` the entry is signed for the Redis key ``name``, valid
    until ``expires_at`` (Unix seconds). Raises
    TypeError/ValueError if ``usage`` is not JSON, ValueError if a
    generation is not :data:`GENERATION_BYTES` long, and
    :class:`EntryTooLargeError` if the payload exceeds ``max_bytes``.
    """
    ns_gen, model_gen = generations
    if len(ns_gen) != GENERATION_BYTES or len(model_gen) != GENERATION_BYTES:
        raise ValueError("a generation must be 16 bytes")
    fields: dict[str, Any] = {"m": model, "c": created_at}
    if usage is None or usage != body.own_usage:
        fields["u"] = usage
    meta = _encode_json(fields)
    if body.kind != BODY_TEXT:
        # Splice the value's JSON in rather than encode it a second time.
        extra = f',"r":{body.json}'
        if body.parts is not None:
            extra += ',"p":' + _encode_json(body.parts)
        meta = meta[:-1] + extra + "}"
    payload = b"".join(
        (
            ns_gen,
            model_gen,
            bytes((body.kind,)),
            meta.encode("utf-8", "surrogatepass"),
            b"\n",
            body.data,
        )
    )
    if len(payload) > max_bytes:
        raise EntryTooLargeError(f"the entry is larger than {max_bytes} bytes")
    entry = bytes((MARK_PLAIN,)) + payload
    if compress_threshold is not None and len(payload) >= compress_threshold:
        packed = zlib.compress(payload, compress_level)
        if len(packed) <= len(payload) * (1 - _MIN_SAVING):
            entry = bytes((MARK_ZLIB,)) + packed
    if signer is None:
        return entry
    return signer.seal(name, entry, int(expires_at * 1000))


def decode(  # noqa: PLR0912 - every hit runs it: one frame, not several (measured)
    data: bytes,
    ns_gen: bytes | None,
    model_gen: bytes | None,
    *,
    max_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
    signer: Signer | None = None,
    name: str = "",
    now: float | None = None,
) -> Meta | None:
    """Decode an entry; None if it is stale.

    Stale: written under other generations, past its signed expiry (at
    ``now``, Unix seconds, default the clock), or, with a ``signer``, of the
    earlier signed format. With a ``signer``, the entry must be signed for
    the Redis key ``name``. Raises :class:`ForgedEntryError` if it is not,
    :class:`CorruptEntryError` if the entry cannot be decoded or its payload
    exceeds ``max_bytes``.
    """
    # The hot path of every hit: few calls, no copy of the body before decoding it.
    if signer is not None:
        try:
            signer.verify(name, data)
        except StaleEntryError:
            return None
    if data[:1] == _PLAIN_PREFIX:  # the common unsigned entry: its payload is data itself
        if len(data) - 1 > max_bytes:
            raise CorruptEntryError(f"the entry is larger than {max_bytes} bytes")
        payload, start = data, 1
    else:
        if data[:1] == _SIGNED_PREFIX and len(data) > _SIGNED_HEADER:
            expires_ms = int.from_bytes(data[1 + TAG_BYTES : _SIGNED_HEADER], "big")
            if expires_ms <= (time.time() if now is None else now) * 1000:
                return None
        payload, start = _payload(data, max_bytes)
    meta_start = start + _META_START
    if len(payload) <= meta_start:
        raise CorruptEntryError("entry too short")
    middle = start + GENERATION_BYTES
    if payload[start:middle] != ns_gen or payload[middle : meta_start - 1] != model_gen:
        return None
    newline = payload.find(b"\n", meta_start)
    if newline < 0:
        raise CorruptEntryError("no metadata")
    kind = payload[meta_start - 1]
    try:
        text = str(payload[meta_start:newline], "utf-8", "surrogatepass")
        meta, end = _scan_once(text, 0)  # what loads() does, one call less
        if end != len(text):
            raise ValueError("extra data after the metadata")
        model, created_at = meta["m"], meta["c"]
        if kind == BODY_TEXT:
            # memoryview: no copy of a large body before decoding it.
            response: Any = str(memoryview(payload)[newline + 1 :], "utf-8", "surrogatepass")
        elif kind == BODY_JSON and newline + 1 == len(payload):
            response = meta["r"]
        elif kind == BODY_PARTS:
            response = _join_parts(memoryview(payload)[newline + 1 :], meta["r"], meta["p"])
        else:
            raise ValueError(f"unknown body type {kind:#04x} or a stray body")
        usage = meta["u"] if "u" in meta else _own_usage(response)
    except StopIteration:  # the scanner's way to say "no value here"
        raise CorruptEntryError("bad entry: the metadata is not JSON") from None
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise CorruptEntryError(f"bad entry: {exc}") from None
    return (model, created_at, usage, response)


def _own_usage(response: Any) -> dict[str, Any] | None:
    """A copy of a dict response's ``usage``: the usage left out of the metadata."""
    usage = response.get("usage") if isinstance(response, dict) else None
    if not isinstance(usage, dict):
        raise ValueError("usage left out, but the response has none")
    return dict(usage)


def _payload(data: bytes, max_bytes: int) -> tuple[bytes, int]:
    """The payload of an entry and where it starts, decompressed if need be.

    A signed entry's tag (and expiry) is skipped here: :func:`decode` checks them.
    """
    if data[:1] == _SIGNED_PREFIX:
        offset = _SIGNED_HEADER
    elif data[:1] == _SIGNED_V1_PREFIX:
        offset = 1 + TAG_BYTES
    else:
        offset = 0
    if len(data) <= offset:
        raise CorruptEntryError("empty entry")
    mark = data[offset]
    if mark == MARK_PLAIN:
        if len(data) - offset - 1 > max_bytes:
            raise CorruptEntryError(f"the entry is larger than {max_bytes} bytes")
        return data, offset + 1
    if mark == MARK_ZLIB:
        # Inflate at most max_bytes: a zlib bomb stops there, costing no more.
        inflater = zlib.decompressobj()
        try:
            payload = inflater.decompress(memoryview(data)[offset + 1 :], max_bytes)
        except zlib.error as exc:
            raise CorruptEntryError(f"bad zlib data: {exc}") from None
        if not inflater.eof:
            if inflater.unconsumed_tail or len(payload) >= max_bytes:
                raise CorruptEntryError(f"the entry inflates to more than {max_bytes} bytes")
            raise CorruptEntryError("truncated zlib data")
        if inflater.unused_data:
            raise CorruptEntryError("data after the zlib stream")
        return payload, 0
    raise CorruptEntryError(f"unknown marker byte {mark:#04x}")


def _join_parts(body: memoryview, value: Any, parts: list[list[Any]]) -> Any:
    """Rebuild a ``p`` value: put the strings back in the skeleton's places."""
    position = 0
    for path, size in parts:
        end = position + size
        text = str(body[position:end], "utf-8", "surrogatepass")
        position = end
        target = value
        for step in path[:-1]:
            target = target[step]
        if target[path[-1]] != "":
            raise ValueError("a part does not match its place in the skeleton")
        target[path[-1]] = text
    if position != len(body):
        raise ValueError("the body is longer than its parts")
    return value
