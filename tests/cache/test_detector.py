"""SecretDetector on its own: the secret shapes it finds and the text it leaves alone."""

from __future__ import annotations

import pytest

from toolkit.cache import SecretDetector
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
