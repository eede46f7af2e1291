"""Builds the gateway from settings: the services (store, caches, limiter, usage, forwarder) and
the two ASGI apps on them. ``Gateway.start`` / ``stop`` own every long-lived resource.

The proxy is a plain ASGI callable (measured faster than a Starlette catch-all route); the admin
listener is a FastAPI app (``gateway.admin``): its OpenAPI document comes from typed models.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from datetime import datetime

from fastapi import FastAPI

from gateway.authority import TokenAuthority, utcnow
from gateway.cache import LocalCache, RedisShared, TokenCache
from gateway.config import Settings
from gateway.errors import StoreUnavailable
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline, Refusal, rate_limit_headers, render_refusal
from gateway.proxy import AiohttpForwarder, Receive, Scope, Send, UpstreamError, request_id_of
from gateway.ratelimit import MemoryLimiter, RateLimiter, RedisLimiter
from gateway.routes import Router
from gateway.store import STATUSES, SqlStore, open_store
from gateway.usage import UsageRecorder

log = logging.getLogger("authgate")
TOKEN_GAUGE_INTERVAL_S = 30


class Gateway:
    def __init__(self, settings: Settings, store: SqlStore, metrics: Metrics,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.shared = RedisShared(settings.cache) if settings.cache != "memory://" else None
        if self.shared is not None:
            self.shared.on_error = metrics.redis_errors.inc
        self.cache = TokenCache(LocalCache(settings.local_cache_ttl_s), self.shared)
        self.limiter: RateLimiter = RedisLimiter(self.shared) if self.shared else MemoryLimiter()
        self.authority = TokenAuthority(store, settings, clock, invalidate=self.cache.invalidate)
        self.usage = UsageRecorder(store, settings.usage_flush_interval_s, metrics, clock)
        self.router = Router(settings)
        self.pipeline = Pipeline(settings, self.router, self.cache, store, self.authority,
                                 self.limiter, self.usage, metrics, clock)
        self.forwarder = AiohttpForwarder(settings, self.router.upstreams, metrics)
        self._gauge_task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, settings: Settings, metrics: Metrics | None = None,
                    clock: Callable[[], datetime] = utcnow) -> Gateway:
        store = await open_store(settings.store)
        gw = cls(settings, store, metrics or Metrics(), clock)
        await gw.forwarder.start()
        gw.cache.start()
        gw.usage.start()
        gw._gauge_task = asyncio.create_task(gw._refresh_token_gauge())
        return gw

    async def stop(self) -> None:
        """Flush usage and close everything (graceful shutdown: nothing counted is lost)."""
        if self._gauge_task is not None:
            self._gauge_task.cancel()
            await asyncio.gather(self._gauge_task, return_exceptions=True)
        await self.usage.stop()
        await self.cache.close()
        await self.forwarder.close()
        if self.shared is not None:
            await self.shared.close()
        await self.store.close()

    async def _refresh_token_gauge(self) -> None:
        while True:
            with contextlib.suppress(StoreUnavailable):
                stats = await self.store.stats(self.clock(), top=1)
                for status in STATUSES:
                    self.metrics.tokens.labels(status).set(getattr(stats, status))
            await asyncio.sleep(TOKEN_GAUGE_INTERVAL_S)

    # --- the proxy listener -------------------------------------------------------------------

    async def proxy_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        started = time.perf_counter()
        request_id = request_id_of(scope)
        client = scope.get("client")
        try:
            raw_path = scope.get("raw_path")
            path = raw_path.decode("latin-1") if raw_path else scope["path"]
            ip = self.pipeline.client_address(client[0] if client else None, scope["headers"])
            decision = await self.pipeline.decide(scope["method"], path, scope["headers"], ip)
        except Refusal as refusal:
            await self._send_refusal(send, refusal, request_id)
            self._observe(refusal.reason, started)
            return
        extra = rate_limit_headers(decision.limit) if decision.limit else []
        extra.append((b"x-request-id", request_id))
        try:
            await self.forwarder.forward(scope, receive, send, decision, extra, request_id)
        except UpstreamError as e:
            await _send_json(send, e.status, {"error": e.reason, "error_description":
                                              e.description}, [(b"x-request-id", request_id)])
            self._observe(e.reason, started)
            return
        self._observe("ok", started)

    def _observe(self, outcome: str, started: float) -> None:
        self.metrics.outcome[outcome].inc()
        self.metrics.request_seconds.observe(time.perf_counter() - started)

    @staticmethod
    async def _send_refusal(send: Send, refusal: Refusal, request_id: bytes) -> None:
        status, headers, body = render_refusal(refusal)
        await _send_json(send, status, body, [*headers, (b"x-request-id", request_id)])

    # --- the admin listener -------------------------------------------------------------------

    def admin_app(self) -> FastAPI:
        from gateway.admin import build_admin_app

        return build_admin_app(self)


async def _send_json(send: Send, status: int, body: dict[str, str],
                     headers: list[tuple[bytes, bytes]]) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
        *headers]})
    await send({"type": "http.response.body", "body": payload})
