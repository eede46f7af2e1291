"""AuthGateMiddleware and WebSockets (SPEC §9): a real Starlette app under uvicorn on loopback,
a real client (``websockets``). Judged at the handshake (refusals are the HTTP ones), the app
sees ``state["auth"]`` and no credential, and a revoked token's open connection is closed with
1008 within the revocation bound (the app hears the disconnect)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway import AuthGateMiddleware
from gateway.authority import Actor
from gateway.config import Settings
from gateway.services import Services
from tests.conftest import open_empty_store
from tests.e2e.conftest import free_port

ADMIN = Actor("cli:test")
TTL_S = 1.0


@contextlib.asynccontextmanager
async def running(app: Any) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on",
                                           log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def served(backend_pair: tuple[str, str]) -> AsyncIterator[tuple[str, Settings, list[Any]]]:
    store_url, cache_url = backend_pair
    await (await open_empty_store(store_url)).close()
    if cache_url != "memory://":
        r = aioredis.from_url(cache_url)
        await r.flushdb()
        await r.aclose()
    settings = Settings(store=store_url, cache=cache_url, pepper="mw-ws-pepper",
                        local_cache_ttl_s=TTL_S, usage_flush_interval_s=0.2,
                        routes=[{"path": "/admin/*", "scopes": ["admin"]}, {"path": "/*"}])
    disconnects: list[Any] = []

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        auth = websocket.state.auth
        await websocket.send_json({"subject": auth.subject, "headers": [
            k.decode() for k, _ in websocket.scope["headers"]]})
        try:
            while True:
                await websocket.send_text(await websocket.receive_text())
        except WebSocketDisconnect as e:
            disconnects.append(e.code)

    app = Starlette(routes=[WebSocketRoute("/{path:path}", echo)])
    app.add_middleware(AuthGateMiddleware, settings=settings)
    async with running(app) as url:
        yield url, settings, disconnects


async def test_judged_at_the_handshake_and_closed_on_revoke(served):
    url, settings, disconnects = served
    async with Services.opened(settings) as services:
        record, secret = await services.authority.create(ADMIN, subject="ws-user", name="b")
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{url}/admin/x",
                               additional_headers={"Authorization": f"Bearer {secret}"}):
                pass
        assert refused.value.response.status_code == 403
        assert json.loads(refused.value.response.body)["error"] == "insufficient_scope"
        async with connect(f"{url}/chat", additional_headers={
                "Authorization": f"Bearer {secret}", "X-Auth-Subject": "root"}) as ws:
            hello = json.loads(await ws.recv())
            assert hello["subject"] == "ws-user"
            assert "authorization" not in hello["headers"]
            assert "x-auth-subject" not in hello["headers"]
            await ws.send("a")
            assert await ws.recv() == "a"
            await services.authority.revoke(ADMIN, record.id)  # another process, same store
            started = time.monotonic()
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), TTL_S + 3)
            took = time.monotonic() - started
        assert ws.close_code == 1008
        assert took <= TTL_S + 1
    deadline = time.monotonic() + 5
    while not disconnects and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert disconnects, "the app heard the disconnect"


async def test_a_connection_of_a_valid_token_stays_open(served):
    url, settings, _ = served
    async with Services.opened(settings) as services:
        _, secret = await services.authority.create(ADMIN, subject="ws-user", name="b")
    async with connect(f"{url}/chat",
                       additional_headers={"Authorization": f"Bearer {secret}"}) as ws:
        await ws.recv()
        for i in range(3):
            await asyncio.sleep(TTL_S)  # several sweeps, past the cache's TTL
            await ws.send(str(i))
            assert await ws.recv() == str(i)


@pytest.mark.parametrize("backend_pair", ["sqlite+memory"], indirect=True)
async def test_requires_scopes_on_a_fastapi_websocket_is_the_http_refusal(backend_pair,
                                                                           tmp_path):
    from fastapi import Depends, FastAPI

    from gateway.fastapi import Auth, requires_scopes

    settings = Settings(store=backend_pair[0], cache="memory://", pepper="mw-ws-pepper")
    app = FastAPI()

    @app.websocket("/feed")
    async def feed(websocket: WebSocket,
                   auth: Auth = Depends(requires_scopes("feed:read"))) -> None:
        await websocket.accept()
        await websocket.send_text(auth.subject)
        await websocket.close()

    app.add_middleware(AuthGateMiddleware, settings=settings)
    await (await open_empty_store(settings.store)).close()
    async with Services.opened(settings) as services:
        _, reader = await services.authority.create(ADMIN, subject="r", name="b",
                                                    scopes=["feed:read"])
        _, other = await services.authority.create(ADMIN, subject="o", name="b",
                                                   scopes=["other"])
    async with running(app) as url:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{url}/feed",
                               additional_headers={"Authorization": f"Bearer {other}"}):
                pass
        response = refused.value.response
        assert response.status_code == 403
        assert json.loads(response.body) == {
            "error": "insufficient_scope", "error_description": "the token lacks scope feed:read"}
        assert 'scope="feed:read"' in response.headers["WWW-Authenticate"]
        assert response.headers["X-Request-Id"]
        async with connect(f"{url}/feed",
                           additional_headers={"Authorization": f"Bearer {reader}"}) as ws:
            assert await ws.recv() == "r"


@pytest.mark.parametrize("backend_pair", ["sqlite+memory"], indirect=True)
async def test_a_token_losing_the_scope_requires_scopes_demanded_is_closed(backend_pair):
    from fastapi import Depends, FastAPI

    from gateway.fastapi import Auth, requires_scopes

    settings = Settings(store=backend_pair[0], cache="memory://", pepper="mw-ws-pepper",
                        local_cache_ttl_s=TTL_S)
    app = FastAPI()

    @app.websocket("/chat")
    async def chat(websocket: WebSocket,
                   auth: Auth = Depends(requires_scopes("chat"))) -> None:
        await websocket.accept()
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await websocket.send_text(await websocket.receive_text())

    app.add_middleware(AuthGateMiddleware, settings=settings)
    await (await open_empty_store(settings.store)).close()
    async with Services.opened(settings) as services:
        record, secret = await services.authority.create(ADMIN, subject="c", name="b",
                                                         scopes=["chat", "other"])
        async with running(app) as url:
            async with connect(f"{url}/chat",
                               additional_headers={"Authorization": f"Bearer {secret}"}) as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
                await services.authority.update(ADMIN, record.id, scopes=["other"])
                started = time.monotonic()
                with pytest.raises(ConnectionClosed):
                    while True:
                        await asyncio.wait_for(ws.recv(), TTL_S + 3)
                took = time.monotonic() - started
            assert ws.close_code == 1008
            assert ws.close_reason == "token lacks the endpoint's scope"
            assert took <= TTL_S + 2
