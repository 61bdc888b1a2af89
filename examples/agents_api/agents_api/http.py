"""Small HTTP helpers: entity tags from versions, and records as JSON responses."""

from __future__ import annotations

import re

from fastapi import Response
from pydantic import BaseModel

from toolkit.errors import InvalidInput

_TAG = re.compile(r'^\s*(?:W/)?"(\d{1,10})"\s*$')


def etag(version: int) -> str:
    """The entity tag of a record at ``version``: ``"<version>"``.

    Strong: the version changes with every update, and ``If-Match`` compares
    strong tags only (RFC 9110, 13.1.1).
    """
    return f'"{version}"'


def expected_version(if_match: str) -> int:
    """The version an ``If-Match`` header names, for ``expected_version``.

    One tag, as this service sends it (``"3"``; ``W/"3"`` is accepted too).
    ``*`` or a list is refused: an update must name the version it was made
    against, or optimistic locking protects nothing.
    """
    found = _TAG.match(if_match)
    if found is None:
        raise InvalidInput(
            'If-Match must be one entity tag from this service, like "3"',
            field="If-Match",
            value=if_match,
        )
    return int(found.group(1))


def matches(if_none_match: str | None, tag: str) -> bool:
    """Whether an ``If-None-Match`` header matches ``tag`` (weak comparison)."""
    if if_none_match is None:
        return False
    if if_none_match.strip() == "*":
        return True
    return tag in (t.strip().removeprefix("W/") for t in if_none_match.split(","))


def record_response(
    record: BaseModel, *, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """``record`` as JSON, serialised once by pydantic.

    The records come from the toolkit already validated; returning a
    Response skips FastAPI's second validation of the return value (the
    route still declares ``response_model`` for the OpenAPI schema).
    """
    return Response(
        record.model_dump_json(),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )
