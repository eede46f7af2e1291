"""Health, readiness, metrics and the forward-auth decision endpoint of the admin listener."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.admin import models as m
from gateway.admin.api import ERRORS, gateway_of
from gateway.errors import StoreUnavailable
from gateway.pipeline import Refusal, identity_headers, rate_limit_headers

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
async def readyz(request: Request) -> Any:
    """ok; degraded when only Redis is down (200); 503 when the store is unreachable."""
    gw = gateway_of(request)
    try:
        async with asyncio.timeout(2):
            await gw.store.ping()
    except (StoreUnavailable, TimeoutError):
        return JSONResponse({"status": "unavailable", "store": "down"}, status_code=503)
    if gw.shared is not None and not await gw.shared.ping():
        return {"status": "degraded", "store": "ok", "cache": "down"}
    return {"status": "ok"}


@router.get("/metrics", response_class=Response, tags=["operations"], responses={
    200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(gateway_of(request).metrics.registry),
                    media_type=CONTENT_TYPE_LATEST)


_AUTHORIZE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Allowed; identity and rate-limit headers set", "content": None},
    **{code: ERRORS[code] for code in (401, 403, 429, 503)}}


async def authorize(request: Request) -> Response:
    """Forward-auth decision (nginx auth_request, Traefik ForwardAuth, Envoy ext_authz): the
    proxy's own pipeline, on `X-Forwarded-Method` and `X-Forwarded-Uri` / `X-Original-URI`."""
    gw = gateway_of(request)
    h = request.headers
    method = h.get("x-forwarded-method") or request.method
    uri = (h.get("x-forwarded-uri") or h.get("x-original-uri")
           or "/" + request.path_params.get("path", ""))
    path = uri.split("?", 1)[0] or "/"
    client = request.client
    try:
        decision = await gw.pipeline.decide(method.upper(), path, request.scope["headers"],
                                            client.host if client else None)
    except Refusal as refusal:
        gw.metrics.outcome[refusal.reason].inc()
        raise  # rendered by the one refusal handler (gateway.admin.errors), as on the API
    gw.metrics.outcome["ok"].inc()
    out = {k.decode(): v.decode() for k, v in rate_limit_headers(decision.limit)} \
        if decision.limit else {}
    if decision.record is not None:
        out |= dict(identity_headers(gw.settings.identity_headers, decision.record))
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
