"""SecretDetector on its own: the secret shapes it finds and the text it leaves alone."""

from __future__ import annotations

import random

import pytest

from toolkit.cache import SecretDetector
from toolkit.cache.secrets import SecretPattern
from toolkit.errors import InvalidInput

SECRETS = {
    "api_key_sk": "use sk-proj-abcdefghijklmnopqrstuvwxyz0123",
    "aws_access_key_id": "key AKIAIOSFODNN7EXAMPLE here",
    "aws_secret_access_key": "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "bearer_token": "Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6",
    "private_key_block": "-----BEGIN RSA PRIVATE KEY-----\nMIIEow...",
    "github_token": "ghp_" + "a" * 36,
    "slack_token": "xoxb-1234567890-abcdef",
    "google_api_key": "AIza" + "B" * 35,
}


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_default_detector_finds_common_secret_shapes(name: str) -> None:
    assert SecretDetector().find(f"prefix {SECRETS[name]} suffix") == name


@pytest.mark.parametrize(
    "text",
    [
        "a task-oriented risk-free desk-based plan",
        "ask-me-anything",
        "the bearer of bad news",
        "private key concepts are explained in chapter 3",
        "AKIA",
    ],
)
def test_default_detector_ignores_ordinary_text(text: str) -> None:
    assert SecretDetector().find(text) is None


def test_bad_secret_pattern() -> None:
    with pytest.raises(InvalidInput):
        SecretDetector({"broken": "(unclosed"})


def _holds_a_hint(detector: SecretDetector, text: str) -> bool:
    """could_match's definition: a pattern without hints, or a hint in the lowered text."""
    lowered = text.lower()
    return any(
        not hints or any(hint in lowered for hint in hints) for _, _, hints in detector._patterns
    )


@pytest.mark.parametrize("seed", range(4))
def test_could_match_is_a_hint_test_on_the_lowered_text(seed: int) -> None:
    """The grouped hint test (a shared prefix first) answers as a scan for every hint."""
    rng = random.Random(seed)
    detector = SecretDetector(
        extra_patterns=[SecretPattern("grouped", "glx-abc", ("GLX-", "gl", "ab", "abc"))]
    )
    hints = [hint for _, _, group in detector._patterns for hint in group]
    alphabet = "abcdefghijklmnopqrstuvwxyzAKGHLSPQ_-=~@ \u212a"
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        if rng.random() < 0.4:  # plant a hint, or all but its last character
            hint = rng.choice(hints)
            hint = hint[:-1] if rng.random() < 0.5 else hint.upper()
            at = rng.randint(0, len(text))
            text = text[:at] + hint + text[at:]
        assert detector.could_match(text) == _holds_a_hint(detector, text), text
