"""A real webhook receiver on loopback for the alert tests: records every request, can answer
5xx for the first N, or hang."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.e2e.conftest import free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: str

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    url: str
    requests: list[Received] = field(default_factory=list)
    fail_first: int = 0       # answer 503 to this many requests first
    status: int = 200         # then this
    hang: bool = False        # never answer

    def ok(self) -> list[Received]:
        """Requests answered 2xx (after the failures)."""
        return self.requests[self.fail_first:] if 200 <= self.status < 300 else []


@asynccontextmanager
async def receiver(**kw: Any) -> AsyncIterator[Receiver]:
    port = free_port()
    rec = Receiver(url=f"http://127.0.0.1:{port}", **kw)

    async def handle(request: web.Request) -> web.Response:
        rec.requests.append(Received(request.path, dict(request.headers),
                                     (await request.read()).decode()))
        if rec.hang:
            await asyncio.sleep(3600)
        if len(rec.requests) <= rec.fail_first:
            return web.Response(status=503, text="try later")
        return web.Response(status=rec.status, text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield rec
    finally:
        await runner.cleanup()
