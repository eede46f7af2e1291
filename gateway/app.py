"""What ``serve`` runs: the services (``gateway.services``), the forwarder, and the two
listeners' ASGI apps on them. ``Gateway.start`` / ``stop`` open and close all of it.

The proxy is a plain ASGI callable (measured faster than a Starlette catch-all route); the admin
listener is a FastAPI app (``gateway.admin``): its OpenAPI document comes from typed models.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from fastapi import FastAPI

from gateway import responses
from gateway.admin import build_admin_app
from gateway.authority import TokenAuthority, utcnow
from gateway.config import Settings
from gateway.errors import Outcome, Refusal
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.proxy import AiohttpForwarder, Receive, Scope, Send, UpstreamError, request_id_of
from gateway.services import Services
from gateway.store import SqlStore
from gateway.usage import UsageRecorder


class Gateway:
    """The services, the forwarder and the listeners' apps of one serving process."""

    def __init__(self, services: Services, forwarder: AiohttpForwarder) -> None:
        self.services = services
        self.forwarder = forwarder

    @classmethod
    async def start(cls, settings: Settings, metrics: Metrics | None = None,
                    clock: Callable[[], datetime] = utcnow) -> Gateway:
        services = await Services.open(settings, metrics, clock)
        try:
            forwarder = AiohttpForwarder(settings, services.router.upstreams, services.metrics)
            await forwarder.start()
        except BaseException:
            await services.close()
            raise
        services.start()
        return cls(services, forwarder)

    async def stop(self) -> None:
        """Flush usage and close everything (graceful shutdown: nothing counted is lost)."""
        try:
            await self.services.close()
        finally:
            await self.forwarder.close()

    # What callers (the demo, tests) reach through the gateway: the services' own.
    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def store(self) -> SqlStore:
        return self.services.store

    @property
    def authority(self) -> TokenAuthority:
        return self.services.authority

    @property
    def usage(self) -> UsageRecorder:
        return self.services.usage

    @property
    def metrics(self) -> Metrics:
        return self.services.metrics

    @property
    def pipeline(self) -> Pipeline:
        return self.services.pipeline

    # --- the proxy listener -------------------------------------------------------------------

    async def proxy_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        started = time.perf_counter()
        request_id = request_id_of(scope)
        client = scope.get("client")
        pipeline = self.services.pipeline
        try:
            raw_path = scope.get("raw_path")
            path = raw_path.decode("latin-1") if raw_path else scope["path"]
            ip = pipeline.client_address(client[0] if client else None, scope["headers"])
            decision = await pipeline.decide(scope["method"], path, scope["headers"], ip)
        except Refusal as refusal:
            status, headers, body = responses.refusal(refusal)
            await responses.send_json(send, status, body,
                                      [*headers, (b"x-request-id", request_id)])
            self._observe(refusal.reason, started)
            return
        extra = responses.rate_limit_headers(decision.limit) if decision.limit else []
        extra.append((b"x-request-id", request_id))
        try:
            await self.forwarder.forward(scope, receive, send, decision, extra, request_id)
        except UpstreamError as e:
            await responses.send_json(send, e.status, responses.error_json(
                e.reason, e.description), [(b"x-request-id", request_id)])
            self._observe(e.reason, started)  # type: ignore[arg-type]
            return
        self._observe("ok", started)

    def _observe(self, outcome: Outcome, started: float) -> None:
        metrics = self.services.metrics
        metrics.outcome[outcome].inc()
        metrics.request_seconds.observe(time.perf_counter() - started)

    # --- the admin listener -------------------------------------------------------------------

    def admin_app(self) -> FastAPI:
        return build_admin_app(self.services)
