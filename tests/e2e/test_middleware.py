"""AuthGateMiddleware end to end (SPEC §9): a real Starlette app and a real FastAPI app under
uvicorn on loopback, on both backend pairs. Refusals are compared byte for byte with what the
proxy listener (``ProxyApp`` on the same settings) answers for the same request."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from gateway import AuthGateMiddleware
from gateway.authority import Actor
from gateway.config import Settings
from gateway.fastapi import Auth, requires_scopes
from gateway.proxy import ProxyApp
from gateway.services import Services
from gateway.tokens import generate
from tests.conftest import open_empty_store
from tests.e2e.conftest import free_port
from tests.e2e.test_cli import authgate

ADMIN = Actor("cli:test")
PEPPER = "mw-pepper"
ROUTES = [
    {"path": "/public*", "auth": "none"},
    {"path": "/reports/write*", "scopes": ["reports:write"]},
    {"path": "/reports*", "scopes": ["reports:read"]},
]


def bearer(secret: str, **more: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}", **more}


def _seen(request: Request) -> dict[str, Any]:
    auth = request.state.auth
    return {"auth": None if auth is None else {
                "subject": auth.subject, "token_id": auth.token_id,
                "token_name": auth.token_name, "scopes": list(auth.scopes)},
            "headers": [[k.decode(), v.decode()] for k, v in request.scope["headers"]]}


def starlette_app(events: list[str]) -> Any:
    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse(_seen(request))

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"subject": websocket.state.auth.subject})
        await websocket.close()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("app startup")
        yield
        events.append("app shutdown")

    app = Starlette(routes=[Route("/{path:path}", whoami, methods=["GET", "POST"]),
                           WebSocketRoute("/ws", ws)], lifespan=lifespan)
    return app


def fastapi_app(events: list[str]) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.append("app startup")
        yield
        events.append("app shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.get("/write-only")
    async def write_only(auth: Auth = Depends(requires_scopes("reports:write"))) -> dict[str, str]:
        return {"subject": auth.subject}

    @app.get("/public/needs-token", dependencies=[Depends(requires_scopes("reports:read"))])
    async def public_needs_token() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/{path:path}")
    async def whoami(request: Request) -> dict[str, Any]:
        return _seen(request)

    return app


APPS = {"starlette": starlette_app, "fastapi": fastapi_app}


@dataclass
class Served:
    url: str
    settings: Settings
    events: list[str]
    server: uvicorn.Server
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task


@pytest.fixture(params=list(APPS))
def app_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def fresh_pair(backend_pair: tuple[str, str]) -> tuple[str, str]:
    store_url, cache_url = backend_pair
    await (await open_empty_store(store_url)).close()
    if cache_url != "memory://":
        r = aioredis.from_url(cache_url)
        await r.flushdb()
        await r.aclose()
    return backend_pair


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve_app(fresh_pair: tuple[str, str], app_kind: str) -> AsyncIterator[Serve]:
    store_url, cache_url = fresh_pair
    running: list[Served] = []

    async def start(**overrides: Any) -> Served:
        settings = Settings(**{"store": store_url, "cache": cache_url, "pepper": PEPPER,
                               "usage_flush_interval_s": 0.2, "routes": ROUTES, **overrides})
        events: list[str] = []
        app = APPS[app_kind](events)
        app.add_middleware(AuthGateMiddleware, settings=settings)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on",
                                               log_level="warning"))
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        served = Served(f"http://127.0.0.1:{port}", settings, events, server, task)
        running.append(served)
        return served

    yield start
    for s in running:
        if not s.task.done():
            await s.stop()


@contextlib.asynccontextmanager
async def beside(settings: Settings) -> AsyncIterator[tuple[Services, httpx.AsyncClient]]:
    """The same settings' services, and the proxy listener's app on them (refusals only: the
    forwarder is never reached), to create tokens and to say what the proxy would answer."""
    async with Services.opened(settings) as services:
        proxy = ProxyApp(services.pipeline, None, services.metrics)  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=proxy, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            yield services, client


def same_refusal(got: httpx.Response, want: httpx.Response) -> None:
    assert (got.status_code, got.json()) == (want.status_code, want.json())
    skip = {"date", "server", "ratelimit", "x-ratelimit-remaining", "x-ratelimit-reset",
            "retry-after"}
    assert [(k, v) for k, v in got.headers.items() if k not in skip] == \
           [(k, v) for k, v in want.headers.items() if k not in skip]


async def test_admitted_request_sees_auth_and_no_credential(serve_app):
    served = await serve_app()
    async with beside(served.settings) as (services, _), httpx.AsyncClient() as http:
        record, secret = await services.authority.create(
            ADMIN, subject="alice", name="ci", scopes=["reports:*"])
        r = await http.get(f"{served.url}/reports/q1", headers=bearer(
            secret, **{"X-Auth-Subject": "root", "X-Auth-Scopes": "*", "X-Request-Id": "rid-1"}))
        assert r.status_code == 200, r.text
        seen = r.json()
        assert seen["auth"] == {"subject": "alice", "token_id": record.id, "token_name": "ci",
                                "scopes": ["reports:*"]}
        names = [k for k, _ in seen["headers"]]
        assert "authorization" not in names and not any(n.startswith("x-auth-") for n in names)
        assert ["x-request-id", "rid-1"] in seen["headers"]
        assert r.headers["x-request-id"] == "rid-1"
        assert r.headers["ratelimit-policy"] == '"default";q=1000;w=60'
        assert r.headers["x-ratelimit-remaining"] == "999"
        # an auth: none route: admitted without a token, state.auth is None whatever is sent
        r = await http.get(f"{served.url}/public/x", headers={
            "X-Auth-Subject": "root", "X_Auth_Subject": "root", "Authorization": "Bearer nope"})
        assert r.status_code == 200 and r.json()["auth"] is None
        names = [k for k, _ in r.json()["headers"]]
        assert not any(n.startswith(("x-auth", "x_auth", "authorization")) for n in names)
        assert len(r.headers["x-request-id"]) == 32  # generated, as the proxy does
    assert served.events == ["app startup"]
    await served.stop()
    assert served.events == ["app startup", "app shutdown"]


async def test_refusals_match_the_proxy(serve_app, app_kind):
    served = await serve_app()
    async with beside(served.settings) as (services, proxy), httpx.AsyncClient() as http:
        _, reader = await services.authority.create(ADMIN, subject="a", name="r",
                                                    scopes=["reports:read"])
        gone, revoked = await services.authority.create(ADMIN, subject="a", name="x")
        await services.authority.revoke(ADMIN, gone.id)
        cases: list[tuple[str, dict[str, str]]] = [
            ("/anything", {}),                                          # 401 no credential
            ("/anything", bearer("agt_garbage")),                       # 401 malformed
            ("/anything", bearer(generate("agt"))),                     # 401 unknown
            ("/anything", bearer(revoked)),                             # 401 revoked
            ("/reports/write/x", bearer(reader)),                       # 403 route scope
            ("/a/%2e%2e/reports/write", bearer(reader)),                # 400 the path rule
        ]
        for path, headers in cases:
            headers = {**headers, "X-Request-Id": "same"}
            got = await http.get(served.url + path, headers=headers)
            want = await proxy.get(path, headers=headers)
            assert got.status_code in (400, 401, 403)
            same_refusal(got, want)
        if app_kind == "fastapi":
            headers = bearer(reader, **{"X-Request-Id": "same"})
            got = await http.get(f"{served.url}/write-only", headers=headers)
            want = await proxy.get("/reports/write/x", headers=headers)
            assert got.status_code == 403
            same_refusal(got, want)
            got = await http.get(f"{served.url}/public/needs-token", headers={"X-Request-Id": "s"})
            want = await proxy.get("/anything", headers={"X-Request-Id": "s"})
            assert got.status_code == 401
            same_refusal(got, want)
            _, writer = await services.authority.create(ADMIN, subject="w", name="w",
                                                        scopes=["reports:*"])
            ok = await http.get(f"{served.url}/write-only", headers=bearer(writer))
            assert ok.status_code == 200 and ok.json() == {"subject": "w"}


async def test_rate_limit_429_like_the_proxy(serve_app):
    served = await serve_app()
    async with beside(served.settings) as (services, _), httpx.AsyncClient() as http:
        _, secret = await services.authority.create(ADMIN, subject="a", name="b",
                                                    rate_limit="2/minute")
        codes = [(await http.get(f"{served.url}/x", headers=bearer(secret))).status_code
                 for _ in range(2)]
        r = await http.get(f"{served.url}/x", headers=bearer(secret))
        assert codes == [200, 200] and r.status_code == 429
        assert r.json() == {"error": "rate_limited",
                            "error_description": "the token's rate limit is exhausted"}
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert r.headers["ratelimit-policy"] == '"default";q=2;w=60'
        assert r.headers["ratelimit"].startswith('"default";r=0;t=')
        assert r.headers["x-ratelimit-remaining"] == "0"


async def test_revocation_from_the_cli_is_seen_within_the_cache_ttl(serve_app):
    served = await serve_app(local_cache_ttl_s=1.0)
    async with beside(served.settings) as (services, _), httpx.AsyncClient() as http:
        record, secret = await services.authority.create(ADMIN, subject="a", name="b")
        assert (await http.get(f"{served.url}/x", headers=bearer(secret))).status_code == 200
    env = {"AUTHGATE_PEPPER": PEPPER, "AUTHGATE_CACHE": served.settings.cache}
    await asyncio.to_thread(authgate, "tokens", "revoke", record.id,
                            store=served.settings.store, env=env)
    revoked_at = time.monotonic()
    async with httpx.AsyncClient() as http:
        while (r := await http.get(f"{served.url}/x", headers=bearer(secret))).status_code == 200:
            assert time.monotonic() - revoked_at < served.settings.local_cache_ttl_s + 1
            await asyncio.sleep(0.05)
    assert r.status_code == 401 and r.json()["error_description"] == "the token has been revoked"


async def test_usage_is_flushed_at_shutdown(serve_app):
    served = await serve_app(usage_flush_interval_s=3600)  # only the shutdown flush writes
    async with beside(served.settings) as (services, _):
        record, secret = await services.authority.create(ADMIN, subject="a", name="b")
    async with httpx.AsyncClient() as http:
        for _ in range(7):
            assert (await http.get(f"{served.url}/x", headers=bearer(secret))).status_code == 200
        await http.get(f"{served.url}/x")  # one auth_failed event (missing), flushed too
    await served.stop()
    async with Services.opened(served.settings) as services:
        stored = await services.authority.get(record.id)
        assert stored.usage_count == 7 and stored.last_used_ip == "127.0.0.1"
        events, _ = await services.authority.events(type="auth_failed")
        assert events, "the refusal event was flushed at shutdown"


async def test_websocket_judged_at_the_handshake(serve_app, app_kind):
    if app_kind != "starlette":
        pytest.skip("one app is enough for the handshake")
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    served = await serve_app()
    async with beside(served.settings) as (services, _):
        _, secret = await services.authority.create(ADMIN, subject="ws-user", name="b")
    url = served.url.replace("http", "ws") + "/ws"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url):
            pass
    # uvicorn offers websocket.http.response: the refusal is the HTTP one
    assert refused.value.response.status_code == 401
    assert b'"error": "invalid_request"' in refused.value.response.body
    async with connect(url, additional_headers=bearer(secret)) as ws:
        assert await ws.recv() == '{"subject":"ws-user"}'
