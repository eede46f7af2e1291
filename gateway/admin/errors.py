"""Every admin-API error as SPEC's JSON ``{"error", "error_description"}`` (the body built by
``gateway.responses``, as on the proxy listener), mapped to a status here only.

    RequestValidationError   422 (400 for a body that is not JSON), naming the field
    InvalidInput             422, naming the field
    NotFound                 404        Refused            409
    Forbidden                403 insufficient_scope (names the scope)
    Refusal                  as on the proxy: 401 / 429 / 503 (responses.refusal)
    StoreUnavailable         503 with Retry-After
    HTTPException            its status (unknown path, method, body too large)
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from gateway import responses
from gateway.admin.access import refusal_from_forbidden
from gateway.admin.deps import services_of
from gateway.errors import (
    Forbidden,
    InvalidInput,
    NotFound,
    Refusal,
    Refused,
    StoreUnavailable,
)

_HTTP_ERRORS = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed",
                413: "request_too_large", 415: "unsupported_media_type"}


def error(status: int, code: str, description: str,
          headers: dict[str, str] | None = None) -> Response:
    return Response(responses.error_json(code, description), status, headers=headers,
                    media_type="application/json")


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(p) for p in loc) or "request"


async def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        return error(400, "invalid_request", "body: is not valid JSON")
    msg = str(first["msg"]).removeprefix("Value error, ")
    return error(422, "invalid_request", f"{_field(first['loc'])}: {msg}")


async def _invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidInput)
    return error(422, "invalid_request", f"{exc.field}: {exc.message}")


async def _refusal(request: Request, exc: Exception) -> Response:
    if isinstance(exc, Forbidden):
        _audit_denied(request)
    refusal = refusal_from_forbidden(exc) if isinstance(exc, Forbidden) else exc
    assert isinstance(refusal, Refusal)
    status, headers, body = responses.refusal(refusal)
    return Response(body, status, headers={k.decode(): v.decode() for k, v in headers},
                    media_type="application/json")


def _audit_denied(request: Request) -> None:
    """A 403 of a known caller (a self token beyond its bounds, a self token on an admin call)
    is an access_denied event (SPEC §8), counted in memory like the proxy's."""
    who = getattr(request.state, "caller", None)
    if who is None:  # refused while authenticating: recorded there
        return
    kind, _, token_id = who.actor.name.partition(":")
    services_of(request).usage.event(
        "access_denied", "admin_api", who.actor.ip, token_id if kind == "self" else None,
        who.subject, actor=who.actor.name)


async def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 405:  # Allow: every method of the path, not just the first route's
        headers = {"allow": ", ".join(sorted(_methods_of(request)))}
    return error(exc.status_code, _HTTP_ERRORS.get(exc.status_code, "invalid_request"),
                 str(exc.detail), headers)


def _methods_of(request: Request) -> set[str]:
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods or set()
    return methods


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(InvalidInput, _invalid)
    app.add_exception_handler(Refusal, _refusal)
    app.add_exception_handler(Forbidden, _refusal)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(Refused, _conflict)
    app.add_exception_handler(StoreUnavailable, _unavailable)


async def _not_found(request: Request, exc: Exception) -> Response:
    return error(404, "not_found", str(exc))


async def _conflict(request: Request, exc: Exception) -> Response:
    return error(409, "conflict", str(exc))


async def _unavailable(request: Request, exc: Exception) -> Response:
    return error(503, "temporarily_unavailable", "the token store is unreachable; retry shortly",
                 {"retry-after": "5"})
