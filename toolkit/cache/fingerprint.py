"""Canonical fingerprints of LLM requests.

Two requests share a cache entry only if everything that can change the
model's answer is equal: the model (and provider / base URL when given),
every message with its role and content (the system prompt included), tools
and tool choice, the response format and every sampling parameter. Fields
the fingerprinter does not know are kept, so a new API parameter gives a
safe miss, never a wrong hit.

The canonical form is JSON with sorted keys and compact separators, after

* dropping toolkit-only fields (``sensitive``) and fields that never change
  the answer: request ids and timestamps at the top level, message ids and
  timestamps inside messages;
* normalising numbers, so ``1`` and ``1.0`` (and ``-0.0`` and ``0``) agree;
  booleans stay booleans (``true`` is not ``1``);
* removing a trailing ``/`` from ``base_url`` / ``api_base``.

The fingerprint is the full SHA-256 hex digest of that JSON. It is the only
part of the request that reaches a Redis key: the prompt never does.
"""

from __future__ import annotations

import json
import json.encoder
import marshal
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from hashlib import sha256
from typing import Any, Final, NamedTuple

from toolkit.errors import InvalidInput

__all__ = [
    "DEFAULT_IGNORED_FIELDS",
    "DEFAULT_IGNORED_MESSAGE_FIELDS",
    "KEY_VERSION",
    "TOOLKIT_FIELDS",
    "Canonical",
    "KeyExplanation",
    "RequestFingerprinter",
]

KEY_VERSION: Final = "v1"
"""Bumped whenever the canonical form changes, so old entries are never misread."""

TOOLKIT_FIELDS: Final = frozenset({"sensitive"})
"""Request fields that instruct the toolkit and are never sent to a model."""

DEFAULT_IGNORED_FIELDS: Final = frozenset(
    {"request_id", "idempotency_key", "timestamp", "created", "created_at", "metadata"}
)
"""Top-level request fields that do not change the answer."""

DEFAULT_IGNORED_MESSAGE_FIELDS: Final = frozenset(
    {"id", "message_id", "timestamp", "created", "created_at"}
)
"""Fields of a message that do not change the answer."""

_URL_FIELDS: Final = frozenset({"base_url", "api_base"})


def _refuse(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _make_encode() -> Callable[[Any], str]:
    """Canonical JSON: sorted keys, compact, ASCII, no NaN, no cycle check.

    JSONEncoder.encode builds a new C encoder (and a closure) on every call;
    this builds the same C encoder once. Without the cycle check a cycle
    ends in RecursionError, which becomes InvalidInput like any unencodable
    request.
    """
    # Not in the type stubs, hence getattr; it is json.encoder's own import of _json.
    make: Any = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # a Python without the C accelerator: same output, slower
        return json.JSONEncoder(
            sort_keys=True, separators=(",", ":"), check_circular=False, allow_nan=False
        ).encode
    encoder = make(
        None, _refuse, json.encoder.encode_basestring_ascii, None, ":", ",", True, False, False
    )

    def encode(value: Any) -> str:
        return "".join(encoder(value, 0))

    return encode


_encode = _make_encode()
# Copying a ready SHA-256 context is several times cheaper than making one.
_SHA256: Final = sha256()


_DIGEST_MEMO_CHARS: Final = 2_000_000
_DIGEST_MEMO_MAX_TEXT: Final = 16_384
_digests: dict[str, str] = {}
_digest_chars = 0


def digest(text: str) -> str:
    """Full SHA-256 hex digest of an ASCII text, from the memo when it holds it.

    The memo holds only what :func:`remember` put there: texts the caller
    has found free of secrets and not marked sensitive, since a canonical
    text holds the whole prompt. A cache hit is a request seen before, and a
    dict lookup costs a fraction of a SHA-256 that starts cold after the
    previous call's network wait. The digest of a text never changes.
    """
    found = _digests.get(text)
    if found is not None:
        return found
    hasher = _SHA256.copy()
    hasher.update(text.encode("ascii"))
    return hasher.hexdigest()


def remember(canonical: Canonical) -> None:
    """Memoise the digest of ``canonical``'s text (texts up to 16 KiB, 2 M characters in all).

    Only for a request that may stay in memory: not sensitive, no secret.
    When the memo is full it starts afresh rather than grow.
    """
    global _digests, _digest_chars  # noqa: PLW0603 - a module-wide memo
    text = canonical.canonical_json
    if len(text) > _DIGEST_MEMO_MAX_TEXT or text in _digests:
        return
    if _digest_chars + len(text) > _DIGEST_MEMO_CHARS:
        _digests = {}  # a race only loses entries
        _digest_chars = 0
    _digests[text] = canonical.fingerprint
    _digest_chars += len(text)


def forget(canonical: Canonical) -> None:
    """Drop ``canonical``'s text from the memo (a request now marked sensitive)."""
    _digests.pop(canonical.canonical_json, None)


def memoised(text: str) -> bool:
    """Whether the digest memo holds ``text`` (for tests and audits)."""
    return text in _digests


class Canonical(NamedTuple):
    """A request reduced to what identifies it."""

    model: str
    fingerprint: str
    """Full SHA-256 hex digest of :attr:`canonical_json`."""
    canonical_json: str
    strings: list[str] | None
    """Every string kept in the key (values and dict keys), when the slow path collected them."""


_new_canonical: Final = tuple.__new__

_IMAGE_VERSION: Final = 2
"""marshal format 2: no back-references, so an image depends on the value alone, not on
which of its objects happen to be shared or referenced elsewhere."""
_MEMO_MAX_IMAGE: Final = 16_384
_MEMO_BYTES: Final = 4_000_000
_MEMO_HINTS: Final = 65_536


def _last_content_hash(request: dict[Any, Any]) -> int | None:
    """The hash of a chat request's last message content (cached in the str after one call)."""
    messages = request.get("messages")
    if type(messages) is list and messages:
        last = messages[-1]
        if type(last) is dict:
            content = last.get("content")
            if type(content) is str:
                return hash(content)
    return None


@dataclass(frozen=True, slots=True)
class KeyExplanation:
    """What went into a request's cache key, from :meth:`LLMCache.explain_key`."""

    key: str
    fingerprint: str
    version: str
    fields: tuple[str, ...]
    """Top-level request fields that went into the key, sorted."""
    dropped: tuple[str, ...]
    """Paths of the fields left out, e.g. ``messages[0].id`` or ``sensitive``."""
    canonical_json: str
    """The exact bytes that were hashed (it contains the prompt: do not log it)."""


def _bad(message: str, field: str, value: object = None) -> InvalidInput:
    return InvalidInput(message, field=field, value=value)


class _Unfit(Exception):
    """A value JSON cannot carry; the caller adds where it was."""

    def __init__(self, message: str, value: object) -> None:
        super().__init__(message)
        self.value = value


# One flat type dispatch is the fastest walk in CPython, hence the many branches.
# Paths are not tracked on the way down (building them costs more than the
# walk); the field is named when an error is turned into InvalidInput.
def _norm(value: Any, strings: list[str]) -> Any:
    """A JSON-ready copy of ``value`` with numbers normalised and strings collected."""
    kind = type(value)
    # Exact type checks first: they are the hot path and the common case.
    if kind is str:
        strings.append(value)
        return value
    if kind is int or kind is bool or value is None:
        return value
    if kind is float:
        # NaN and infinity are not integers and stay floats; the encoder rejects them.
        return int(value) if value.is_integer() else value
    if kind is dict:
        # Keys are left to the encoder, which writes them the JSON way; str
        # keys are collected, since a secret can hide in a key too.
        copy = {}
        for key, item in value.items():
            if type(key) is str:
                strings.append(key)
            copy[key] = _norm(item, strings)
        return copy
    if kind is list or kind is tuple:
        return [_norm(item, strings) for item in value]
    # Subclasses: str and int enums, OrderedDict, and so on.
    if isinstance(value, str):
        return _norm(str.__str__(value), strings)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _norm(float(value), strings)
    if isinstance(value, Mapping):
        return _norm(dict(value), strings)
    raise _Unfit(f"{type(value).__name__} is not JSON-serialisable", type(value).__name__)


class RequestFingerprinter:
    """Turns a request dict into its canonical JSON and fingerprint.

    ``ignored_fields`` and ``ignored_message_fields`` replace the defaults
    (:data:`DEFAULT_IGNORED_FIELDS`, :data:`DEFAULT_IGNORED_MESSAGE_FIELDS`);
    :data:`TOOLKIT_FIELDS` are always left out.
    """

    def __init__(
        self,
        *,
        ignored_fields: Iterable[str] = DEFAULT_IGNORED_FIELDS,
        ignored_message_fields: Iterable[str] = DEFAULT_IGNORED_MESSAGE_FIELDS,
    ) -> None:
        self.ignored_fields = frozenset(ignored_fields) | TOOLKIT_FIELDS
        self.ignored_message_fields = frozenset(ignored_message_fields)
        self._hints: set[int] = set()  # hashes of last messages seen: imaged from then on
        self._start_memo()

    def _start_memo(self) -> None:
        """An empty memo of requests, for the ignored fields as they are now."""
        # Requests seen before, by their exact image: what recall() answers.
        self._known: dict[bytes, Canonical] = {}
        self._images_of: dict[str, list[bytes]] = {}  # canonical text -> its requests' images
        self._known_bytes = 0
        self._memo_rules = (self.ignored_fields, self.ignored_message_fields)

    # -- the memo of requests seen before ------------------------------------------
    #
    # A repeated request skips the canonical JSON (most of the cost of a cache
    # hit's key) when it is found by its marshal image. marshal writes every
    # value with its exact type (True is not 1, 1.0 is not 1, a str subclass
    # or any other object is refused) and marshal.loads rebuilds the value
    # from the image, so two requests with one image are the same value, with
    # the same canonical JSON: a hit can never give another request's key. Two
    # equal requests built differently (other key order) just miss.
    #
    # Taking an image costs about a third of what it saves, so a chat request
    # is imaged only once the hash of its last message's content has been
    # seen: a request seen once pays a hash, one seen twice its image, and
    # from the third time on it is recalled. Only hashes are kept for that
    # (ints, nothing of the text); a hash collision costs an image, never a
    # wrong key.

    def recall(self, request: object) -> tuple[bytes | int | None, Canonical | None]:
        """A token for :meth:`remember` and the Canonical remembered for ``request``, if any.

        The token is the request's exact image (bytes); or, the first time
        its last message is seen, that message's hash (int); or None when
        the request cannot be remembered.
        """
        if type(request) is not dict:
            return None, None
        hint = _last_content_hash(request)
        if hint is not None and hint not in self._hints:
            return hint, None
        try:
            image = marshal.dumps(request, _IMAGE_VERSION)
        except ValueError:  # an object marshal refuses, or nested too deeply
            return None, None
        if len(image) > _MEMO_MAX_IMAGE:
            return None, None
        rules = self._memo_rules
        if rules[0] is not self.ignored_fields or rules[1] is not self.ignored_message_fields:
            self._start_memo()  # the ignored fields were replaced: other keys from now on
        return image, self._known.get(image)

    def remember(self, token: bytes | int | None, canonical: Canonical) -> None:
        """Remember ``canonical`` for the request :meth:`recall` gave ``token`` for.

        Only for a request that may stay in memory: not sensitive, no secret.
        When the memo is full it starts afresh rather than grow.
        """
        if type(token) is int:
            if len(self._hints) >= _MEMO_HINTS:
                self._hints = set()  # a race only loses entries
            self._hints.add(token)
            return
        if type(token) is not bytes:
            return
        text = canonical.canonical_json
        size = len(token) + len(text)
        if self._known_bytes + size > _MEMO_BYTES:
            self._start_memo()  # a race only loses entries
        self._known[token] = canonical
        self._images_of.setdefault(text, []).append(token)
        self._known_bytes += size

    def forget(self, canonical: Canonical) -> None:
        """Drop every remembered request with ``canonical``'s text (now marked sensitive)."""
        for image in self._images_of.pop(canonical.canonical_json, ()):
            self._known.pop(image, None)

    def remembers(self, canonical: Canonical) -> bool:
        """Whether a request with ``canonical``'s text is remembered (for tests and audits)."""
        return canonical.canonical_json in self._images_of

    def canonical(self, request: object, dropped: list[str] | None = None) -> Canonical:
        """Validate and canonicalise ``request``.

        Raises :class:`InvalidInput` for a request that is not a dict with a
        non-empty ``model`` string, or that holds anything JSON cannot carry
        (sets, bytes, objects, NaN, keys that are not str/int/float/bool/None,
        a cycle). Object keys follow JSON: ``50256`` and ``"50256"`` are the
        same key. Paths of dropped fields are appended to ``dropped`` when it
        is given.
        """
        # type() first: the ABC check of isinstance costs more, on every lookup.
        if type(request) is not dict and not isinstance(request, Mapping):
            raise _bad("a request must be a dict", "request", type(request).__name__)
        model = request.get("model")
        if not isinstance(model, str) or not model.strip():
            raise _bad("a request needs a non-empty 'model' string", "model", model)
        if dropped is None and type(request) is dict:
            text = self._fast(request)
            if text is not None:
                # tuple.__new__: a NamedTuple's own __new__ is a Python call, on every lookup.
                return _new_canonical(Canonical, (model, digest(text), text, None))
        strings: list[str] = []
        where = ["request"]  # the field being walked, for error messages
        try:
            clean = self._fields(request, strings, dropped, where)
        except _Unfit as exc:
            raise _bad(str(exc), where[0], exc.value) from None
        except RecursionError:
            raise _bad("the request is nested too deeply", where[0]) from None
        try:
            text = _encode(clean)
        except (TypeError, ValueError) as exc:  # odd keys, mixed key types, NaN
            raise _bad(f"not valid JSON: {exc}", "request") from None
        except RecursionError:
            raise _bad("the request is nested too deeply", "request") from None
        return Canonical(model, digest(text), text, strings)

    def _fast(self, request: dict[Any, Any]) -> str | None:
        """The canonical JSON straight from the encoder, when nothing needs rewriting.

        That is: no field to drop, no base URL to trim, and no integral float
        (the encoder writes ``1.0`` where the key needs ``1``; an integral
        float always prints with ``.0`` or ``e+``, so a text without either
        holds none). Anything else, including every error, is left to the
        copying walk, which gives the same text or the right InvalidInput.
        """
        if not self.ignored_fields.isdisjoint(request):
            return None
        for name in _URL_FIELDS:
            url = request.get(name)
            if type(url) is str and url.endswith("/"):
                return None
        if "messages" in request:
            messages = request["messages"]
            if type(messages) is not list and type(messages) is not tuple:
                return None
            ignored = self.ignored_message_fields
            for message in messages:
                if type(message) is not dict or not ignored.isdisjoint(message):
                    return None
        try:
            text = _encode(request)
        except (TypeError, ValueError, RecursionError):
            return None
        # The "+" test is a memchr: most requests hold none, and skip the second scan.
        if ".0" in text or ("+" in text and "e+" in text):
            return None
        return text

    def strings(self, request: Mapping[str, Any]) -> list[str]:
        """Every string that goes into ``request``'s key, values and keys (for the detector)."""
        canonical = self.canonical(request, [])
        assert canonical.strings is not None  # the walk always collects them
        return canonical.strings

    def _fields(
        self,
        request: Mapping[Any, Any],
        strings: list[str],
        dropped: list[str] | None,
        where: list[str],
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        ignored = self.ignored_fields
        for name, value in request.items():
            if name in ignored:
                if dropped is not None:
                    dropped.append(name)
                continue
            where[0] = name
            if type(name) is str:
                strings.append(name)
            kind = type(value)
            if name == "messages":
                out[name] = self._messages(value, strings, dropped)
            # Scalars inline: most request fields are, and a call costs more.
            elif kind is str:
                if name in _URL_FIELDS:
                    value = value.rstrip("/")  # noqa: PLW2901 - the normalised value
                strings.append(value)
                out[name] = value
            elif kind is int or value is None or kind is bool:
                out[name] = value
            else:
                out[name] = _norm(value, strings)
        return out

    def _messages(self, messages: object, strings: list[str], dropped: list[str] | None) -> Any:
        if type(messages) is not list and type(messages) is not tuple:
            raise _bad("'messages' must be a list", "messages", type(messages).__name__)
        ignored = self.ignored_message_fields
        result = []
        for original in messages:
            if type(original) is dict:
                message = original
            elif isinstance(original, Mapping):
                message = dict(original)
            else:
                raise _bad("each message must be a dict", _at(messages, original), original)
            clean = {}
            for name, value in message.items():
                if name in ignored:
                    if dropped is not None:
                        dropped.append(f"{_at(messages, original)}.{name}")
                    continue
                if type(name) is str:
                    strings.append(name)
                if type(value) is str:  # role and content, nearly always
                    strings.append(value)
                    clean[name] = value
                    continue
                try:
                    clean[name] = _norm(value, strings)
                except _Unfit as exc:
                    raise _bad(str(exc), f"{_at(messages, original)}.{name}", exc.value) from None
            result.append(clean)
        return result

    def explain(self, request: object, key: str) -> KeyExplanation:
        """The fields that went into ``request``'s key (``key`` is passed through)."""
        dropped: list[str] = []
        canonical = self.canonical(request, dropped)
        fields = tuple(sorted(json.loads(canonical.canonical_json)))
        return KeyExplanation(
            key=key,
            fingerprint=canonical.fingerprint,
            version=KEY_VERSION,
            fields=fields,
            dropped=tuple(dropped),
            canonical_json=canonical.canonical_json,
        )


def _at(messages: Any, message: object) -> str:
    """``messages[i]`` for an error message (found by identity, off the hot path)."""
    for index, item in enumerate(messages):
        if item is message:
            return f"messages[{index}]"
    return "messages[?]"


def model_scope(model: str) -> str:
    """A short, key-safe digest of a model name (for its generation counter)."""
    return sha256(model.encode("utf-8", "surrogatepass")).hexdigest()[:32]
