"""Detect secrets in text, so that requests and responses holding one are not cached.

The default patterns catch common secret *shapes*; they are a safety net,
not a data-loss-prevention system. A caller that knows a request is
sensitive should mark it ``sensitive: True`` instead of relying on them.
Dict keys are scanned as well as values.

Compared with detect-secrets' plugin list (1.5), the defaults cover the
shapes of its AWSKeyDetector, AzureStorageKeyDetector (and SAS signatures,
shared access keys, Entra ID client secrets), BasicAuthDetector (a password
inside a connection URL), GitHubTokenDetector, GitLabTokenDetector,
JwtTokenDetector, OpenAIDetector, PrivateKeyDetector, SlackDetector and
StripeDetector, plus Anthropic, Google API and Hugging Face keys and bearer
tokens, which it lacks. Left out, on purpose:

* Base64HighEntropyString, HexHighEntropyString: request ids, hashes, base64
  images and embeddings are high-entropy too; in LLM traffic they would
  bypass the cache for most requests;
* KeywordDetector (``password = ...`` in code): prompts about code and
  configuration mention passwords without holding one;
* IPPublicDetector: an address is not a credential;
* ArtifactoryDetector, CloudantDetector, DiscordBotTokenDetector,
  IbmCloudIamDetector, IbmCosHmacDetector, MailchimpDetector, NpmDetector,
  PypiTokenDetector, SendGridDetector, SoftlayerDetector,
  SquareOAuthDetector, TelegramBotTokenDetector, TwilioKeyDetector: vendor
  shapes seldom seen in LLM requests; several (Cloudant, IBM, Softlayer) are
  keyword-plus-entropy rules with the false positives above. Add any of them
  with ``extra_patterns``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from toolkit.errors import InvalidInput

__all__ = ["DEFAULT_SECRET_PATTERNS", "SecretDetector", "SecretPattern"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SecretPattern:
    """One secret shape: a regular expression and the hints that gate it.

    ``hints`` are literal substrings at least one of which every match
    contains. A text holding none of them is not searched with ``regex`` at
    all: substring tests are far cheaper than a regex scan, and most texts
    hold no hint. Hints are compared without regard to case (so a hint can
    only widen what is searched, never hide a match). Without hints the
    regex always runs.
    """

    name: str
    regex: str | re.Pattern[str]
    hints: tuple[str, ...] = ()


DEFAULT_SECRET_PATTERNS: Final[tuple[SecretPattern, ...]] = (
    # OpenAI / Anthropic style keys: sk-..., sk-proj-..., sk-ant-...
    SecretPattern("api_key_sk", r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-]{20,}", ("sk-",)),
    SecretPattern(
        "aws_access_key_id",
        r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}(?![A-Z0-9])",
        ("AKIA", "ASIA", "ABIA", "ACCA"),
    ),
    SecretPattern(
        "aws_secret_access_key",
        r"(?i)aws_?secret_?access_?key[\"'\s]*[:=][\"'\s]*[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])",
        ("aws",),
    ),
    SecretPattern("bearer_token", r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]{16,}=*", ("bearer",)),
    SecretPattern(
        "private_key_block",
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----",
        ("PRIVATE KEY",),
    ),
    SecretPattern(
        "github_token",
        r"(?<![A-Za-z0-9])(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    SecretPattern("slack_token", r"(?<![A-Za-z0-9])xox[abposr]-[A-Za-z0-9\-]{10,}", ("xox",)),
    SecretPattern("google_api_key", r"(?<![A-Za-z0-9])AIza[0-9A-Za-z_\-]{35}", ("AIza",)),
    SecretPattern(
        "jwt",
        r"(?<![A-Za-z0-9_\-])eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
        ("eyJ",),
    ),
    # Stripe secret and restricted keys, live and test.
    SecretPattern(
        "stripe_key",
        r"(?<![A-Za-z0-9])[sr]k_(?:live|test)_[A-Za-z0-9]{16,}",
        ("sk_live_", "sk_test_", "rk_live_", "rk_test_"),
    ),
    SecretPattern("hugging_face_token", r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{30,}", ("hf_",)),
    # GitLab personal, deploy, runner, trigger, feed, OAuth, ... tokens.
    SecretPattern(
        "gitlab_token",
        r"(?<![A-Za-z0-9])gl(?:pat|dt|rt|ptt|ft|soat|cbt|imt|agent|oas)-[A-Za-z0-9_\-]{20,}",
        tuple(
            f"gl{kind}-"
            for kind in ("pat", "dt", "rt", "ptt", "ft", "soat", "cbt", "imt", "agent", "oas")
        ),
    ),
    # Azure storage / Service Bus / Event Hubs connection strings and SAS URLs.
    SecretPattern(
        "azure_shared_key",
        r"(?i)\b(?:AccountKey|SharedAccessKey)\s*=\s*[A-Za-z0-9+/]{20,}",
        ("accountkey", "sharedaccesskey"),
    ),
    SecretPattern(
        "azure_sas_signature",
        r"(?i)(?<![A-Za-z0-9_])sig=[A-Za-z0-9%+/]{30,}",
        ("sig=",),
    ),
    # Entra ID (Azure AD) client secrets: three characters, a digit, "Q~", 31-34 more.
    SecretPattern(
        "azure_client_secret",
        r"(?<![A-Za-z0-9_~.\-])[A-Za-z0-9_~.\-]{3}[0-9]Q~[A-Za-z0-9_~.\-]{31,34}(?![A-Za-z0-9_~.\-])",
        ("q~",),
    ),
    # scheme://user:password@host; a masked "***" password is not a secret.
    SecretPattern(
        "url_password",
        r"(?i)(?<![A-Za-z0-9+.\-])[a-z][a-z0-9+.\-]{0,30}://[^\s/:@?#]*:(?!\*+@)[^\s/@?#]+@[^\s/@]",
        ("@",),
    ),
)
"""The secret shapes the default detector finds."""


class SecretDetector:
    """Finds secret-shaped strings with a set of :class:`SecretPattern`.

    ``patterns`` replaces the defaults (:data:`DEFAULT_SECRET_PATTERNS`);
    ``extra_patterns`` adds to them. A plain ``{name: regex}`` mapping is
    accepted too (its patterns have no hints, so they always run).
    ``memo_chars`` bounds the memory of strings already found clean (see
    :meth:`scan_strings`); 0 switches it off. A detector is thread-safe.
    """

    def __init__(
        self,
        patterns: Iterable[SecretPattern] | Mapping[str, str | re.Pattern[str]] | None = None,
        *,
        extra_patterns: Iterable[SecretPattern] | Mapping[str, str | re.Pattern[str]] = (),
        memo_chars: int = 4_000_000,
    ) -> None:
        chosen = [
            *_as_patterns(DEFAULT_SECRET_PATTERNS if patterns is None else patterns),
            *_as_patterns(extra_patterns),
        ]
        self._patterns: list[tuple[str, re.Pattern[str], tuple[str, ...]]] = []
        for pattern in chosen:
            try:
                compiled = (
                    pattern.regex
                    if isinstance(pattern.regex, re.Pattern)
                    else re.compile(pattern.regex)
                )
            except re.error as exc:
                raise InvalidInput(
                    f"bad secret pattern {pattern.name!r}: {exc}", field="patterns"
                ) from None
            hints = tuple(hint.lower() for hint in pattern.hints)
            self._patterns.append((pattern.name, compiled, hints))
        if isinstance(memo_chars, bool) or not isinstance(memo_chars, int) or memo_chars < 0:
            raise InvalidInput("memo_chars must be an int >= 0", field="memo_chars")
        self._memo_chars = memo_chars
        self._clean: set[str] = set()
        self._clean_chars = 0
        self._memo_lock = threading.Lock()
        self._any_unhinted = any(not hints for _, _, hints in self._patterns)
        self._hint_groups = _group_hints(hint for _, _, hints in self._patterns for hint in hints)

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the patterns in use."""
        return tuple(name for name, _, _ in self._patterns)

    def find(self, text: str) -> str | None:
        """The name of the first pattern that matches ``text``, or None."""
        return _finish(self._find_steps(text))

    def _find_steps(self, text: str) -> Generator[None, None, str | None]:
        """:meth:`find`, yielding after each regex search of a window of a long text.

        A long text is scanned in windows (:data:`SCAN_WINDOW`), hints and
        regexes alike; ``re`` holds the GIL for a whole search, so the steps
        are what lets an event loop run other tasks during a long scan.
        """
        size = len(text)
        windowed = size > SCAN_WINDOW + SCAN_OVERLAP
        for start in range(0, size, SCAN_WINDOW) if windowed else (0,):
            end = min(size, start + SCAN_WINDOW + SCAN_OVERLAP) if windowed else size
            window = text[start:end] if windowed else text
            lowered: str | None = None
            for name, compiled, hints in self._patterns:
                if hints:
                    if lowered is None:
                        lowered = window.lower()
                    for hint in hints:
                        if hint in lowered:
                            break
                    else:
                        continue  # no hint: this pattern cannot match here
                if _search(compiled, text, start, end):
                    return name
                if windowed:
                    yield
        return None

    def could_match(self, text: str) -> bool:
        """Whether any pattern might match ``text``: a cheap, conservative pre-check.

        False means no pattern matches ``text`` nor any substring of it, so a
        text made of other texts (JSON holding them, say) can be cleared
        whole. It holds a hint test only, no regex scan.
        """
        if self._any_unhinted:
            return True
        lowered = text.lower()
        # Hints sharing their first two characters are looked for only when a text
        # holds those two: one scan instead of ten for the GitLab tokens, say.
        for gate, members in self._hint_groups:
            if gate in lowered:
                if not members:
                    return True
                for hint in members:
                    if hint in lowered:
                        return True
        return False

    def contains_secret(self, text: str) -> bool:
        """Whether ``text`` holds something shaped like a secret."""
        return self.find(text) is not None

    def scan_strings(self, strings: Iterable[str]) -> bool:
        """Whether any of ``strings`` holds a secret.

        Strings found clean are remembered (up to ``memo_chars`` characters
        in all, then the memory starts afresh): system prompts and other
        repeated text are scanned once, not on every lookup. The answer for
        a string never changes, since the patterns are fixed. Nothing is
        remembered from a call that finds a secret, so neither the secret
        nor the text around it is kept alive.
        """
        clean = self._clean
        fresh: list[str] = []
        for text in strings:
            if text in clean:
                continue
            if self.find(text) is not None:
                return True
            fresh.append(text)
        # Only once all are clean: no string of a secret-bearing text is kept.
        for text in fresh:
            self._remember(text)
        return False

    def remembers(self, text: str) -> bool:
        """Whether ``text`` is in the memory of clean strings (for tests and audits)."""
        return text in self._clean

    def forget(self, strings: Iterable[str]) -> None:
        """Drop ``strings`` from the memory of clean strings (those of a sensitive request)."""
        with self._memo_lock:
            clean = self._clean
            for text in strings:
                if text in clean:
                    clean.discard(text)
                    self._clean_chars -= len(text)

    def _remember(self, text: str) -> None:
        size = len(text)
        if size > self._memo_chars // 8:  # one huge string must not evict everything
            return
        with self._memo_lock:
            if self._clean_chars + size > self._memo_chars:
                self._clean = set()
                self._clean_chars = 0
            self._clean.add(text)
            self._clean_chars += size

    def scan_value(self, value: Any) -> bool:
        """Whether any string inside a JSON-like ``value`` (keys included) holds a secret."""
        strings: list[str] = []
        _collect(value, strings)
        return self.scan_strings(strings)

    def scan_value_steps(self, value: Any) -> Generator[None, None, bool]:
        """:meth:`scan_value` in steps: a generator that yields between the regex searches of
        a long string (about a millisecond each) and returns the verdict.

        The async LLM cache awaits ``sleep(0)`` at each yield, so a 5 MB
        response is scanned without holding up the event loop.
        """
        strings: list[str] = []
        _collect(value, strings)
        fresh: list[str] = []
        for text in strings:
            if text in self._clean:
                continue
            if (yield from self._find_steps(text)) is not None:
                return True
            fresh.append(text)
        for text in fresh:
            self._remember(text)
        return False


SCAN_WINDOW: Final = 32 << 10
"""Characters one regex search covers in a long text (a search of 32 Ki characters takes
at most about a millisecond); see :meth:`SecretDetector.scan_value_steps`."""
SCAN_OVERLAP: Final = 8 << 10
"""Characters each window reaches into the next, so a match up to this long is never cut."""


def _group_hints(hints: Iterable[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``(gate, members)`` pairs: hints sharing their first two characters under that
    prefix (each holds it, so a text without it holds none of them), a hint of its
    own as ``(hint, ())``."""
    groups: dict[str, list[str]] = {}
    for hint in dict.fromkeys(hints):  # dedupe, keep order
        groups.setdefault(hint[:2], []).append(hint)
    return tuple(
        (members[0], ()) if len(members) == 1 else (prefix, tuple(members))
        for prefix, members in groups.items()
    )


def _search(compiled: re.Pattern[str], text: str, start: int, end: int) -> bool:
    """Whether ``compiled`` matches within ``text[start:end]``, as it would in all of ``text``.

    Lookbehinds see the text before ``start`` (``pos``); a match that touches
    an artificial ``end`` (where a lookahead saw "end of text") is confirmed
    on the rest of the text. Windows overlap by :data:`SCAN_OVERLAP`, far
    longer than a secret of the default shapes, so none is cut in two.
    """
    found = compiled.search(text, start, end)
    if found is None:
        return False
    if found.end() < end or end == len(text):
        return True
    return compiled.search(text, found.start()) is not None  # rare: a match at the cut


def _finish(steps: Generator[None, None, T]) -> T:
    """Run a stepwise scan to its end; its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


def _as_patterns(
    patterns: Iterable[SecretPattern] | Mapping[str, str | re.Pattern[str]],
) -> list[SecretPattern]:
    if isinstance(patterns, Mapping):
        return [SecretPattern(name, regex) for name, regex in patterns.items()]
    result = list(patterns)
    for pattern in result:
        if not isinstance(pattern, SecretPattern):
            raise InvalidInput("patterns must be SecretPattern objects", field="patterns")
    return result


def _collect(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str):
                out.append(key)
            _collect(item, out)
    elif isinstance(value, list | tuple):
        for item in value:
            _collect(item, out)
