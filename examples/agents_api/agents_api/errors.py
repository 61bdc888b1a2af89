"""The toolkit's errors as HTTP responses (RFC 9457 problem details).

Every route lets toolkit errors propagate; one handler turns them into a
status code and a ``application/problem+json`` body:

=====================  ======  ===============================================
toolkit error          status  notes
=====================  ======  ===============================================
``StaleVersion``       412     the body holds the current version, the
                               ``ETag`` header the current tag
``NotFound``           404
``Conflict``           409     ``RetryableConflict`` adds ``Retry-After: 0``
``IllegalTransition``  409
``InvalidInput``       422     ``field`` names the offending input
``InvalidReference``   422     a foreign key points nowhere
``Unavailable``        503     with ``Retry-After``; details only in the log
``OutcomeUnknown``     500     may have committed: do not retry blindly
anything else          500     details only in the log
=====================  ======  ===============================================

FastAPI's own request validation errors get the same shape (422 with
``field``), so a client parses one kind of error body.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from agents_api.http import etag
from toolkit.errors import (
    Conflict,
    IllegalTransition,
    InvalidInput,
    InvalidReference,
    NotFound,
    OutcomeUnknown,
    RetryableConflict,
    StaleVersion,
    ToolkitError,
    Unavailable,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

# Most specific first: RetryableConflict before Conflict, MessageTooLarge (an
# InvalidInput) is caught by InvalidInput.
_STATUS: tuple[tuple[type[ToolkitError], int, str], ...] = (
    (StaleVersion, 412, "Precondition Failed"),
    (NotFound, 404, "Not Found"),
    (Conflict, 409, "Conflict"),
    (IllegalTransition, 409, "Conflict"),
    (InvalidInput, 422, "Unprocessable Content"),
    (InvalidReference, 422, "Unprocessable Content"),
    (Unavailable, 503, "Service Unavailable"),
)


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """An RFC 9457 problem response."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def toolkit_error_response(exc: ToolkitError, retry_after: int) -> JSONResponse:
    """The response for one toolkit error."""
    known = next(((s, t) for kind, s, t in _STATUS if isinstance(exc, kind)), None)
    if known is None:
        # Unknown to the client, known to us: the message may name tables or hosts.
        if isinstance(exc, OutcomeUnknown):
            log.error("outcome unknown (transaction %s): %s", exc.xid, exc)
            return problem(
                500,
                "Outcome Unknown",
                "the change may or may not have been saved; read it back before retrying",
            )
        log.error("unexpected toolkit error: %s", exc, exc_info=exc)
        return problem(500, "Internal Server Error", "internal error")
    status, title = known
    if isinstance(exc, Unavailable):
        log.warning("service unavailable: %s", exc)
        return problem(
            status,
            title,
            "a service this request needs is unavailable; retry later",
            headers={"Retry-After": str(retry_after)},
        )
    if isinstance(exc, StaleVersion):
        return problem(
            status,
            title,
            str(exc),
            headers={"ETag": etag(exc.actual)},
            current_version=exc.actual,
        )
    if isinstance(exc, RetryableConflict):
        return problem(status, title, str(exc), headers={"Retry-After": "0"})
    if isinstance(exc, InvalidInput):
        return problem(status, title, str(exc), field=exc.field)
    return problem(status, title, str(exc))


def install(app: FastAPI, *, retry_after: int) -> None:
    """Register the handlers on ``app``."""

    async def on_toolkit_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ToolkitError)
        return toolkit_error_response(exc, retry_after)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        first = errors[0] if errors else {}
        # ("path", "agent_id") -> "agent_id"; ("body", "config", "x") -> "config.x"
        location = [str(part) for part in first.get("loc", ())[1:]]
        field = ".".join(location) or None
        detail = f"{field}: {first.get('msg', 'invalid')}" if field else "invalid request"
        return problem(422, "Unprocessable Content", detail, field=field)

    app.add_exception_handler(ToolkitError, on_toolkit_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
