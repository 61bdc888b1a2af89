"""Every error the app returns, as one kind of body: RFC 9457 problem details.

Routes let toolkit errors propagate; the handlers installed here turn them,
FastAPI's request validation errors, Starlette's 404 and 405 and any
unexpected exception into an ``application/problem+json`` body of the
:class:`Problem` schema, which :func:`install` also puts in the OpenAPI
document (and which :func:`problem_responses` declares per route):

=====================  ======  ===============================================
error                  status  notes
=====================  ======  ===============================================
no such route          404     Starlette's, reshaped
method not allowed     405     with ``Allow``
``StaleVersion``       412     ``current_version`` in the body, the current
                               tag in ``ETag``
``NotFound``           404
``Conflict``           409     ``field`` for a taken unique value;
                               ``RetryableConflict`` adds ``Retry-After: 0``
``IllegalTransition``  409
request validation     422     ``errors`` lists every invalid input
``InvalidInput``       422     ``field`` names the offending input
``InvalidReference``   422     ``field`` names the id that points nowhere
``Unavailable``        503     with ``Retry-After``; details only in the log
``OutcomeUnknown``     500     may have committed: do not retry blindly
anything else          500     details only in the log
=====================  ======  ===============================================

(413 and 428 are sent by the routes themselves, with :func:`problem`.)

An error the toolkit translated from PostgreSQL carries the query's name and
the server's words (table, constraint); the client gets a sentence of its
own instead, naming the request field where the constraint tells it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

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

TITLES = {
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    412: "Precondition Failed",
    413: "Content Too Large",
    422: "Unprocessable Content",
    428: "Precondition Required",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

Part = Literal["body", "query", "path", "header", "cookie"]
_PARTS: frozenset[object] = frozenset(("body", "query", "path", "header", "cookie"))


class FieldError(BaseModel):
    """One refused input (an item of a problem's ``errors``)."""

    model_config = ConfigDict(populate_by_name=True)

    field: str | None = None
    """The input: a dotted path in the body (``config.temperature``), a query or
    path parameter, a header; absent when the body as a whole is refused."""
    location: Part | None = Field(default=None, alias="in")
    """The part of the request it is in (the ``in`` of an OpenAPI parameter)."""
    pointer: str | None = None
    """For the body: a JSON Pointer to the value, as a URI fragment (``#/config/temperature``)."""
    position: int | None = None
    """For a body that is not JSON: the character (from 0) where parsing stopped."""
    detail: str
    """What is wrong with it."""


class Problem(BaseModel):
    """An error response (RFC 9457), sent as ``application/problem+json``."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    """What went wrong, for a person; never a table, constraint or query name."""
    field: str | None = None
    """The input at fault (with several, the first of ``errors``)."""
    errors: list[FieldError] | None = None
    """Every refused input (422)."""
    current_version: int | None = None
    """412: the version the record is at now (also in ``ETag``)."""


def problem_body(body: Problem) -> dict[str, Any]:
    """``body`` as JSON, without the members it does not have."""
    return body.model_dump(mode="json", by_alias=True, exclude_none=True)


def problem(
    status: int,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    field: str | None = None,
    errors: list[FieldError] | None = None,
    current_version: int | None = None,
) -> JSONResponse:
    """An ``application/problem+json`` response of the :class:`Problem` schema."""
    body = Problem(
        title=TITLES.get(status, "Error"),
        status=status,
        detail=detail,
        field=field,
        errors=errors,
        current_version=current_version,
    )
    return problem_response(body, headers=headers)


def problem_response(body: Problem, *, headers: dict[str, str] | None = None) -> JSONResponse:
    """``body`` (a :class:`Problem` or an extension of it) as the response."""
    return JSONResponse(
        problem_body(body), status_code=body.status, headers=headers, media_type=PROBLEM_JSON
    )


# --- OpenAPI -------------------------------------------------------------------------

_DESCRIPTIONS = {
    404: "No such record",
    409: "Conflicts with the stored data",
    412: "The record changed since the version in If-Match",
    413: "The upload is over the limit",
    422: "An input is invalid; `errors` lists each",
    428: "If-Match is missing",
    500: "Internal error",
    503: "A service the request needs is unavailable; retry after Retry-After",
}


def problem_responses(*statuses: int, schema: str = "Problem") -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route for ``statuses``, each a :class:`Problem`."""
    return {
        status: {
            "description": _DESCRIPTIONS.get(status, TITLES.get(status, "Error")),
            "content": {PROBLEM_JSON: {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        }
        for status in statuses
    }


SERVICE_ERRORS = problem_responses(422, 500, 503)
"""What any route with inputs that uses a service can answer."""


def _add_schemas(app: FastAPI, models: Sequence[type[BaseModel]]) -> None:
    """Add ``models`` to the OpenAPI components: the responses above refer to them by name."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()  # sets app.openapi_schema
            _, definitions = models_json_schema(
                [(model, "serialization") for model in models],
                ref_template="#/components/schemas/{model}",
            )
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in definitions.get("$defs", {}).items():
                schemas.setdefault(name, schema)
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way


# --- toolkit errors -----------------------------------------------------------------

# Most specific first: RetryableConflict before Conflict, MessageTooLarge (an
# InvalidInput) is caught by InvalidInput.
_STATUS: tuple[tuple[type[ToolkitError], int], ...] = (
    (StaleVersion, 412),
    (NotFound, 404),
    (Conflict, 409),
    (IllegalTransition, 409),
    (InvalidInput, 422),
    (InvalidReference, 422),
    (Unavailable, 503),
)


def _constraint_column(exc: ToolkitError, suffix: str) -> str | None:
    """The column of the constraint PostgreSQL reported, when it has the default name.

    ``agents_owner_id_fkey`` on table ``agents`` -> ``owner_id`` (PostgreSQL
    names a one-column constraint ``<table>_<column>_fkey``/``_key``). This
    app's request fields are named as the columns they fill.
    """
    diag = getattr(exc.driver_error, "diag", None)
    table = getattr(diag, "table_name", None)
    constraint = getattr(diag, "constraint_name", None)
    if not table or not constraint:
        return getattr(diag, "column_name", None)  # a NOT NULL violation names its column
    prefix = f"{table}_"
    if constraint.startswith(prefix) and constraint.endswith(suffix):
        return constraint[len(prefix) : -len(suffix)] or None
    return None


def _field_problem(status: int, field: str | None, detail: str, fallback: str) -> JSONResponse:
    """A problem about one input, with ``field`` and ``errors`` when it is known."""
    if field is None:
        return problem(status, fallback)
    return problem(
        status, f"{field} {detail}", field=field, errors=[FieldError(field=field, detail=detail)]
    )


def _database_error_response(exc: ToolkitError, status: int) -> JSONResponse:
    """A constraint PostgreSQL enforced, told without its table, constraint or query."""
    log.info("refused by the database: %s", exc)
    if isinstance(exc, RetryableConflict):
        return problem(
            status,
            "a concurrent change got in the way and nothing was written: retry",
            headers={"Retry-After": "0"},
        )
    if isinstance(exc, Conflict):
        field = _constraint_column(exc, "_key")
        return _field_problem(
            status, field, "is already taken", "the request conflicts with a stored record"
        )
    if isinstance(exc, InvalidReference):
        field = _constraint_column(exc, "_fkey")
        return _field_problem(
            status,
            field,
            "refers to a record that does not exist",
            "the request refers to a record that does not exist",
        )
    # A CHECK or NOT NULL the model let through.
    return _field_problem(
        status,
        _constraint_column(exc, "_check"),
        "is not an allowed value",
        "a value in the request is not allowed",
    )


def toolkit_error_response(exc: ToolkitError, retry_after: int) -> JSONResponse:
    """The response for one toolkit error."""
    status = next((s for kind, s in _STATUS if isinstance(exc, kind)), None)
    if status is None:
        # Unknown to the client, known to us: the message may name tables or hosts.
        if isinstance(exc, OutcomeUnknown):
            log.error("outcome unknown (transaction %s): %s", exc.xid, exc)
            return problem(
                500, "the change may or may not have been saved; read it back before retrying"
            )
        log.error("unexpected toolkit error: %s", exc, exc_info=exc)
        return problem(500, "internal error")
    if isinstance(exc, Unavailable):
        log.warning("service unavailable: %s", exc)
        return problem(
            status,
            "a service this request needs is unavailable; retry later",
            headers={"Retry-After": str(retry_after)},
        )
    if exc.driver_error is not None:
        return _database_error_response(exc, status)
    if isinstance(exc, StaleVersion):
        return problem(
            status, str(exc), headers={"ETag": etag(exc.actual)}, current_version=exc.actual
        )
    if isinstance(exc, RetryableConflict):
        return problem(status, str(exc), headers={"Retry-After": "0"})
    if isinstance(exc, InvalidInput) and exc.field is not None:
        return problem(
            status, str(exc), field=exc.field, errors=[FieldError(field=exc.field, detail=str(exc))]
        )
    return problem(status, str(exc))


# --- request validation --------------------------------------------------------------


def _pointer(path: Iterable[object]) -> str:
    """A JSON Pointer (RFC 6901) as a URI fragment: ``#/config/temperature``."""
    tokens = (str(part).replace("~", "~0").replace("/", "~1") for part in path)
    return "#" + "".join(f"/{token}" for token in tokens)


def field_errors(errors: Sequence[Any]) -> list[FieldError]:
    """FastAPI's (pydantic's) validation errors as :class:`FieldError` items, every one."""
    found: list[FieldError] = []
    for error in errors:
        loc = tuple(error.get("loc", ()))
        part = loc[0] if loc and loc[0] in _PARTS else None
        path = loc[1:] if part is not None else loc
        if error.get("type") == "json_invalid":
            # loc is ("body", <character>): where parsing stopped, not a field.
            position = path[0] if path and isinstance(path[0], int) else None
            reason = str((error.get("ctx") or {}).get("error", "cannot be parsed"))
            at = f" at character {position}" if position is not None else ""
            found.append(
                FieldError(
                    location="body",
                    position=position,
                    detail=f"the request body is not valid JSON: {reason}{at}",
                )
            )
            continue
        field = ".".join(str(part) for part in path) or None
        found.append(
            FieldError(
                field=field,
                location=part,
                pointer=_pointer(path) if part == "body" else None,
                detail=str(error.get("msg", "invalid")),
            )
        )
    return found


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    """422 listing every invalid input of the request."""
    errors = field_errors(exc.errors())
    if not errors:
        return problem(422, "the request is invalid")
    first = errors[0]
    if len(errors) == 1:
        label = first.field or first.location or "request"
        detail = first.detail if first.position is not None else f"{label}: {first.detail}"
    else:
        names = ", ".join(e.field or e.location or "request" for e in errors)
        detail = f"{len(errors)} inputs are invalid: {names}"
    return problem(422, detail, field=first.field, errors=errors)


# --- Starlette's own errors ---------------------------------------------------------------


def http_error_response(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's 404 (no route) and 405 (with ``Allow``), and any other HTTPException."""
    if exc.status_code == 404:
        detail = "there is nothing at this path"
    elif exc.status_code == 405:
        allowed = _allowed_methods(request) or (exc.headers or {}).get("Allow", "")
        detail = f"{request.method} is not allowed here; allowed: {allowed}"
        return problem(405, detail, headers={**(exc.headers or {}), "Allow": allowed})
    else:
        detail = exc.detail if isinstance(exc.detail, str) else TITLES.get(exc.status_code, "")
    return problem(exc.status_code, detail, headers=dict(exc.headers or {}))


def _allowed_methods(request: Request) -> str:
    """Every method some route answers at the request's path, for ``Allow``.

    Starlette's 405 names only the methods of the first route of the path
    (``GET /agents``, not ``POST /agents``). Each method is tried against
    the routes with Starlette's own matching, so included routers count.
    """
    routes = request.app.router.routes
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]
    return ", ".join(allowed)


def install(app: FastAPI, *, retry_after: int, schemas: Sequence[type[BaseModel]] = ()) -> None:
    """Register the handlers on ``app``, and the problem schemas in its OpenAPI document.

    ``schemas``: extensions of :class:`Problem` that routes declare.
    """

    async def on_toolkit_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ToolkitError)
        return toolkit_error_response(exc, retry_after)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return validation_error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return http_error_response(request, exc)

    async def on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs and re-raises it after this response is sent.
        return problem(500, "internal error")

    app.add_exception_handler(ToolkitError, on_toolkit_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected_error)
    _add_schemas(app, [Problem, *schemas])
