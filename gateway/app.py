"""What ``serve`` runs: the services (``gateway.services``), the forwarder, and the two
listeners' ASGI apps on them. ``Gateway.start`` / ``stop`` open and close all of it.

    proxy_app    ``gateway.proxy.ProxyApp`` (pure ASGI: the pipeline, then the forwarder)
    admin_app()  ``gateway.admin.build_admin_app`` (FastAPI: its OpenAPI document comes from
                 typed models), on the services it uses
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

from fastapi import FastAPI

from gateway import reload
from gateway.access_log import AccessLog
from gateway.admin import build_admin_app
from gateway.authority import TokenAuthority, utcnow
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.proxy import Forwarder, ProxyApp, open_forwarder
from gateway.routes import Router
from gateway.services import Services
from gateway.store import SqlStore
from gateway.usage import UsageRecorder
from gateway.websocket import WebSocketRelay


class Gateway:
    """The services, the forwarder and the listeners' apps of one serving process."""

    def __init__(self, services: Services, forwarder: Forwarder,
                 websockets: WebSocketRelay | None = None) -> None:
        self.services = services
        self.forwarder = forwarder
        self.websockets = websockets
        jwks = None
        if services.assertions is not None:
            from gateway.assertion import JwksEndpoint

            jwks = JwksEndpoint(services.assertions)
        self.proxy_app = ProxyApp(services.pipeline, forwarder, services.metrics, jwks,
                                  websockets)

    @classmethod
    async def start(cls, settings: Settings, metrics: Metrics | None = None,
                    clock: Callable[[], datetime] = utcnow) -> Gateway:
        services = await Services.open(settings, metrics, clock)
        try:
            await services.check_cache()
            forwarder = open_forwarder(settings, services.router.upstreams, services.metrics,
                                       services.assertions)
            await forwarder.start()
        except BaseException:
            await services.close()
            raise
        # WebSockets go upstream through aiohttp whatever the forwarder (httpx has no client)
        websockets = WebSocketRelay(services.pipeline, settings, services.metrics,
                                    services.assertions)
        await websockets.start()
        services.start()
        services.access_log = AccessLog(services.metrics)
        services.apply_access_log()
        return cls(services, forwarder, websockets)

    async def reload(self, settings: Settings) -> Settings:
        """SIGHUP: the forwarder gains pools for any upstream the new routes name (before a
        request can be routed there), then the services take what may change
        (``Services.reload``). Returns the settings in effect."""
        merged = reload.merged(self.services.settings, settings)
        await self.forwarder.add_upstreams(Router(merged).upstreams)
        return self.services.reload(merged)

    async def stop(self) -> None:
        """Flush usage and close everything (graceful shutdown: nothing counted is lost)."""
        try:
            await self.services.close()
        finally:
            await self.forwarder.close()
            if self.websockets is not None:
                await self.websockets.close()
            if self.services.access_log is not None:  # the last lines, written off the loop
                await asyncio.to_thread(self.services.access_log.close)

    def admin_app(self) -> FastAPI:
        return build_admin_app(self.services)

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
