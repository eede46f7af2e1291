"""AuthGateMiddleware in process (raw ASGI messages): options, lifespan, header hygiene."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI

from gateway import AuthGateMiddleware, ConfigError
from gateway.authority import Actor
from gateway.config import Settings
from gateway.fastapi import Auth, requires_scopes
from gateway.middleware import request_id_of
from gateway.proxy import request_id_of as proxy_request_id_of

Message = MutableMapping[str, Any]
ADMIN = Actor("cli:test")


async def echo_app(scope: Message, receive: Any, send: Any) -> None:
    """A raw app that does not speak lifespan (fails on it, as many do)."""
    assert scope["type"] == "http"
    auth = scope["state"]["auth"]
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"x-app", b"1")]})
    await send({"type": "http.response.body", "body": repr(
        (auth, [n for n, _ in scope["headers"]])).encode()})


def settings(tmp_path: Path, **more: Any) -> Settings:
    return Settings(store=f"sqlite:///{tmp_path}/mw.db", pepper="unit", **more)


async def lifespan(mw: AuthGateMiddleware, *messages: str) -> list[Message]:
    """Run the lifespan scope: send ``messages`` one by one, collect what the server hears."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    for m in messages:
        inbox.put_nowait({"type": m})
    heard: list[Message] = []

    async def send(message: Message) -> None:
        heard.append(message)

    await asyncio.wait_for(mw({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                              inbox.get, send), 10)
    return heard


def test_options_are_validated_at_construction(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n  - path: nope\n")
    with pytest.raises(ConfigError, match=r"routes\.0\.path"):
        AuthGateMiddleware(echo_app, config=str(bad), env={})
    with pytest.raises(ConfigError, match="not both"):
        AuthGateMiddleware(echo_app, config=str(bad), settings=settings(tmp_path))
    with pytest.raises(ConfigError, match="local_cache_ttl_s"):
        AuthGateMiddleware(echo_app, env={"AUTHGATE_LOCAL_CACHE_TTL_S": "soon"})


def test_file_and_environment_as_serve(tmp_path):
    conf = tmp_path / "authgate.yaml"
    conf.write_text("token_prefix: acme\nroutes:\n  - path: /health\n    auth: none\n")
    mw = AuthGateMiddleware(echo_app, config=str(conf), env={"AUTHGATE_TOKEN_PREFIX": "beta"})
    assert mw.settings.token_prefix == "beta" and mw.settings.routes[0].auth == "none"
    mw = AuthGateMiddleware(echo_app, env={"AUTHGATE_CONFIG": str(conf)})
    assert mw.settings.token_prefix == "acme"


def test_request_id_as_the_proxy():
    scope = {"headers": [(b"x-request-id", b"abc")]}
    assert request_id_of(scope) == proxy_request_id_of(scope) == b"abc"
    assert len(request_id_of({"headers": [(b"x-request-id", b"x" * 201)]})) == 32


async def test_an_app_without_lifespan_is_stood_in_for_and_usage_flushed(tmp_path):
    mw = AuthGateMiddleware(echo_app, settings=settings(tmp_path, usage_flush_interval_s=3600))
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    heard: list[Message] = []

    async def send(message: Message) -> None:
        heard.append(message)

    inbox.put_nowait({"type": "lifespan.startup"})
    task = asyncio.create_task(mw({"type": "lifespan"}, inbox.get, send))
    while not heard:
        await asyncio.sleep(0.01)
    assert heard == [{"type": "lifespan.startup.complete"}] and mw.services is not None
    record, secret = await mw.services.authority.create(ADMIN, subject="s", name="n",
                                                        scopes=["a:b"])
    transport = httpx.ASGITransport(app=mw)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        r = await client.get("/x", headers={"Authorization": f"Bearer {secret}",
                                            "X-Auth-Token-Id": "forged", "X-Forwarded-For": "1"})
    assert r.status_code == 200 and r.headers["x-app"] == "1"
    assert r.text == repr((Auth("s", record.id, "n", ("a:b",)),
                           [b"host", b"accept", b"accept-encoding", b"connection",
                            b"user-agent", b"x-forwarded-for", b"x-request-id"]))
    services = mw.services
    inbox.put_nowait({"type": "lifespan.shutdown"})
    await asyncio.wait_for(task, 10)
    assert heard[-1] == {"type": "lifespan.shutdown.complete"} and mw.services is None
    # closed: the shutdown flush wrote the one use
    from gateway.store import open_store

    store = await open_store(services.settings.store)
    try:
        assert (await store.get_token(record.id)).usage_count == 1  # type: ignore[union-attr]
    finally:
        await store.close()


async def test_startup_fails_when_the_store_cannot_open(tmp_path):
    mw = AuthGateMiddleware(echo_app, settings=Settings(
        store="postgresql://nobody@127.0.0.1:1/none", pepper="unit"))
    heard = await lifespan(mw, "lifespan.startup")
    assert heard[0]["type"] == "lifespan.startup.failed"
    assert heard[0]["message"].startswith("authgate:")


async def test_the_apps_own_lifespan_runs_inside_ours(tmp_path):
    order: list[str] = []
    mw: AuthGateMiddleware

    async def app(scope: Message, receive: Any, send: Any) -> None:
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                order.append(f"app startup, services open: {mw.services is not None}")
                await send({"type": "lifespan.startup.complete"})
            else:
                order.append(f"app shutdown, services open: {mw.services is not None}")
                await send({"type": "lifespan.shutdown.complete"})
                return

    mw = AuthGateMiddleware(app, settings=settings(tmp_path))
    heard = await lifespan(mw, "lifespan.startup", "lifespan.shutdown")
    assert order == ["app startup, services open: True", "app shutdown, services open: True"]
    assert [m["type"] for m in heard] == ["lifespan.startup.complete",
                                          "lifespan.shutdown.complete"]
    assert mw.services is None


async def test_a_failed_app_startup_closes_the_services(tmp_path):
    async def app(scope: Message, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "app says no"})

    mw = AuthGateMiddleware(app, settings=settings(tmp_path))
    heard = await lifespan(mw, "lifespan.startup")
    assert heard == [{"type": "lifespan.startup.failed", "message": "app says no"}]
    assert mw.services is None


async def test_requires_scopes_wildcards_and_no_auth():
    from gateway.errors import Refusal

    class Conn:
        def __init__(self, auth: Auth | None) -> None:
            self.scope = {"state": {"auth": auth}}

    dep = requires_scopes("reports:read", "billing:write")
    auth = Auth("s", "tok", "n", ("reports:*", "billing:write"))
    assert await dep(Conn(auth)) is auth  # type: ignore[arg-type]
    with pytest.raises(Refusal) as e:
        await dep(Conn(Auth("s", "tok", "n", ("reports:*",))))  # type: ignore[arg-type]
    assert (e.value.status, e.value.description, e.value.scope) == (
        403, "the token lacks scope billing:write", "reports:read billing:write")
    with pytest.raises(Refusal) as e:
        await dep(Conn(None))  # type: ignore[arg-type]
    assert (e.value.status, e.value.reason) == (401, "no_credential")


async def test_a_request_after_shutdown_is_503_not_a_reopened_store(tmp_path):
    async def app(scope: Message, receive: Any, send: Any) -> None:
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})

    mw = AuthGateMiddleware(app, settings=settings(tmp_path))
    await lifespan(mw, "lifespan.startup", "lifespan.shutdown")
    transport = httpx.ASGITransport(app=mw)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        r = await client.get("/x")
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert r.json()["error"] == "temporarily_unavailable" and mw.services is None


async def test_requires_scopes_403_is_an_access_denied_event_as_in_the_gateway(tmp_path):
    app = FastAPI()  # (annotations resolve in module globals: Annotated, Depends imported there)

    @app.get("/w")
    async def w(auth: Annotated[Auth, Depends(requires_scopes("w"))]) -> str:
        return auth.subject

    app.add_middleware(AuthGateMiddleware, settings=settings(tmp_path))
    transport = httpx.ASGITransport(app=app, client=("10.0.0.7", 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        assert (await client.get("/w")).status_code == 401  # opens the services on first use
        mw: Any = app.middleware_stack
        while not isinstance(mw, AuthGateMiddleware):  # FastAPI adds middleware of its own
            mw = mw.app
        record, secret = await mw.services.authority.create(ADMIN, subject="s", name="n")
        r = await client.get("/w", headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 403 and r.headers["www-authenticate"] == (
            'Bearer realm="authgate", error="insufficient_scope", '
            'error_description="the token lacks scope w", scope="w"')
        events = mw.services.usage._events  # the batch the next flush writes
        assert ("access_denied", record.id, "10.0.0.7", "insufficient_scope", "gateway") in events
        await mw._close()
