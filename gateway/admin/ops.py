"""Health, readiness, metrics and the forward-auth decision endpoint of the admin listener."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.access_log import route_of
from gateway.admin import models as m
from gateway.admin.deps import (
    AssertionsDep,
    MetricsDep,
    PipelineDep,
    SettingsDep,
    SharedDep,
    StoreDep,
)
from gateway.errors import Refusal, StoreUnavailable
from gateway.proxy import request_id_of
from gateway.responses import error_json, identity_headers, rate_limit_headers

router = APIRouter()
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@router.get("/healthz", response_model=m.Health, response_model_exclude_none=True,
            tags=["operations"])
async def healthz() -> dict[str, str]:
    """Liveness: 200 while the process runs."""
    return {"status": "ok"}


@router.get("/readyz", response_model=m.Health, response_model_exclude_none=True,
            tags=["operations"],
            responses={503: {"model": m.Health, "description": "The store is unreachable"}})
async def readyz(store: StoreDep, shared: SharedDep) -> Any:
    """ok; degraded when only Redis is down (200); 503 when the store is unreachable."""
    try:
        async with asyncio.timeout(2):
            await store.ping()
    except (StoreUnavailable, TimeoutError):
        return JSONResponse({"status": "unavailable", "store": "down"}, status_code=503)
    if not await shared.ping():  # memory://: nothing shared, always up
        return {"status": "degraded", "store": "ok", "cache": "down"}
    return {"status": "ok"}


@router.get("/metrics", response_class=Response, tags=["operations"], responses={
    200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/.well-known/jwks.json", response_class=Response, tags=["operations"], responses={
    200: {"content": {"application/json": {"schema": {"type": "object"}}},
          "description": "The JWKS of the identity assertion (SPEC §11)"},
    404: m.ERRORS[404]})
async def jwks(assertions: AssertionsDep) -> Response:
    """The public keys that verify the identity assertion: 404 unless it is configured."""
    if assertions is None:
        return Response(error_json("not_found", "no key set: identity_assertion is not "
                                   "configured"), status_code=404, media_type="application/json")
    from gateway.assertion import JWKS_MAX_AGE_S

    return Response(assertions.jwks(), media_type="application/json",
                    headers={"cache-control": f"public, max-age={JWKS_MAX_AGE_S}"})


router.add_api_route("/.well-known/jwks.json", jwks, methods=["HEAD"], response_class=Response,
                     include_in_schema=False)


_AUTHORIZE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Allowed; identity and rate-limit headers set", "content": None},
    **{code: m.ERRORS[code] for code in (400, 401, 403, 429, 503)}}


_URI_HEADERS = ("x-forwarded-uri", "x-original-uri")
_PREFIX = "/v1/authorize"


def _invalid(why: str) -> Refusal:
    return Refusal(400, "invalid_request", why)


def requested_path(request: Request) -> str:
    """The path to judge (SPEC §7), still percent-encoded: from X-Forwarded-Uri, X-Original-URI
    and the path after /v1/authorize, which must agree when more than one is present: a proxy
    sets one of them, and a client may have added another (nginx passes client headers on)."""
    found: list[str] = []
    for name in _URI_HEADERS:
        found.extend(v.partition("?")[0] for v in request.headers.getlist(name))
    raw = request.scope.get("raw_path")
    raw_path = raw.decode("latin-1") if raw else request.scope["path"]
    if not raw_path.startswith(_PREFIX):  # an encoded /v1/authorize: read no path from it
        raise _invalid("the decision endpoint's own path is percent-encoded")
    if tail := raw_path[len(_PREFIX):]:
        found.append(tail)  # Envoy ext_authz appends the original path (its query is not here)
    if any(uri != found[0] for uri in found[1:]):
        raise _invalid("X-Forwarded-Uri, X-Original-URI and the path after /v1/authorize "
                       "disagree")
    return found[0] if found else "/"


# An RFC 9110 method token (tchar+), bounded. Lower case is refused too: the proxy listener's
# parser (httptools) refuses such a request line with a 400, and routes compare methods as
# sent (case-sensitively, as HTTP does), so "delete" or "POST " must not fall through to
# another route than the upstream's reading of it.
_METHOD_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Z-]{1,32}")


def _claimed_method(request: Request) -> str:
    """The method to judge, as sent: X-Forwarded-Method, else the request's own."""
    claimed = request.headers.getlist("x-forwarded-method")
    if len(set(claimed)) > 1:
        raise _invalid("X-Forwarded-Method is given twice, with different methods")
    return claimed[0] if claimed else request.method


def _check_method(method: str) -> None:
    if _METHOD_TOKEN.fullmatch(method) is None:
        raise _invalid("X-Forwarded-Method is not an upper-case HTTP method token")


async def authorize(request: Request, pipeline: PipelineDep, metrics: MetricsDep,
                    settings: SettingsDep, assertions: AssertionsDep) -> Response:
    """Forward-auth decision (nginx auth_request, Traefik ForwardAuth, Envoy ext_authz): the
    proxy's own pipeline, on `X-Forwarded-Method` and the URI sources of ``requested_path``,
    judged by the proxy listener's path rule. With identity_assertion configured, a 200 for a
    token also carries the signed assertion and the X-Request-Id it is bound to (``jti``)."""
    client = request.client
    log = pipeline.access_log  # the access log, when on: one line per decision
    wall, started = (time.time(), time.perf_counter()) if log is not None else (0.0, 0.0)
    request_id = request_id_of(request.scope) if log is not None else None
    ip = method = path = None
    try:
        ip = pipeline.client_address(client.host if client else None, request.scope["headers"])
        method, path = _claimed_method(request), requested_path(request)
        _check_method(method)  # after both are read: a refusal logs what was claimed
        decision = await pipeline.decide(method, path, request.scope["headers"], ip)
    except Refusal as refusal:
        metrics.outcome[refusal.reason].inc()
        if log is not None:
            log.decided(wall, started, request_id or b"", ip, method, path, refusal.status,
                        refusal.reason, route_of(pipeline.router, method, path), None,
                        refused=refusal.record)
        raise  # rendered by the one refusal handler (gateway.admin.errors), as on the API
    metrics.outcome["ok"].inc()
    if log is not None:
        log.decided(wall, started, request_id or b"", ip, method, path, 200, "ok",
                    decision.route.pattern, decision)
    out = {k.decode(): v.decode() for k, v in rate_limit_headers(decision.limit)} \
        if decision.limit else {}
    if decision.record is not None:
        out |= dict(identity_headers(settings.identity_headers, decision.record))
        ia = settings.identity_assertion
        if assertions is not None and ia is not None:
            request_id = request_id or request_id_of(request.scope)  # the logged one, if any
            out[ia.header] = assertions.sign(decision.record, request_id)
            out["X-Request-Id"] = request_id.decode("latin-1")
    return Response(status_code=200, headers=out)


# Any method: Traefik and Envoy pass the original request's. One route per method, so each
# documented operation has its own id.
for _method in _ALL_METHODS:
    router.add_api_route("/v1/authorize", authorize, methods=[_method], response_class=Response,
                         responses=_AUTHORIZE_RESPONSES, tags=["forward auth"],
                         operation_id=f"authorize_{_method.lower()}")
# Envoy's ext_authz appends the original path: /v1/authorize/<path>.
router.add_api_route("/v1/authorize/{path:path}", authorize, methods=_ALL_METHODS,
                     include_in_schema=False)
