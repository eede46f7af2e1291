"""Every refusal of the pipeline, in process: status, reason (the metric outcome), headers, body.

The services are built on SQLite + memory (``gateway.services.Services``, no background work)
and the listeners' ASGI apps are called directly: the proxy app over a stand-in forwarder, the
admin app's forward-auth endpoint through httpx's ASGI transport. No sockets.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from gateway import tokens
from gateway.app import Gateway
from gateway.authority import Actor
from gateway.config import RateLimit, Settings
from gateway.errors import StoreUnavailable, UpstreamError
from gateway.services import Services

ACTOR = Actor("test")
PEER = "203.0.113.7"


class StandInForwarder:
    """Answers 200 with the headers the proxy asked to add; or raises ``error``."""

    def __init__(self) -> None:
        self.error: Exception | None = None
        self.forwarded = 0

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def forward(self, scope: Any, receive: Any, send: Any, decision: Any,
                      extra: list[tuple[bytes, bytes]], request_id: bytes) -> None:
        if self.error is not None:
            raise self.error
        self.forwarded += 1
        await send({"type": "http.response.start", "status": 200, "headers": extra})
        await send({"type": "http.response.body", "body": b"upstream"})


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


async def call(app: Any, target: str, headers: dict[str, str] | None = None,
               method: str = "GET", peer: str = PEER) -> Answer:
    """One request through a raw ASGI app; the whole response collected."""
    path, _, query = target.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": unquote(path),
             "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
             "client": (peer, 40000), "server": ("127.0.0.1", 8080)}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    return Answer(start["status"],
                  {k.decode(): v.decode() for k, v in start.get("headers", [])},
                  b"".join(m.get("body", b"") for m in sent[1:]))


@dataclass
class World:
    services: Services
    gateway: Gateway
    forwarder: StandInForwarder
    now: list[datetime]
    secrets: dict[str, str] = field(default_factory=dict)

    def outcome(self, reason: str) -> float:
        value = self.services.metrics.registry.get_sample_value(
            "authgate_requests_total", {"outcome": reason})
        return value or 0.0


@pytest.fixture
async def world(tmp_path: Any) -> AsyncIterator[World]:
    settings = Settings(
        store=f"sqlite:///{tmp_path}/gw.db", cache="memory://", pepper="unit",
        default_rate_limit=None, failed_auth_limit=RateLimit(3, 60),
        routes=[{"path": "/public*", "auth": "none", "rate_limit": RateLimit(1, 60)},
                {"path": "/admin*", "scopes": ["admin"]},
                {"path": "/limited*", "rate_limit": RateLimit(1, 60)},
                {"path": "/*"}])
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    services = await Services.open(settings, clock=lambda: now[0])
    forwarder = StandInForwarder()
    w = World(services, Gateway(services, forwarder), forwarder, now)  # type: ignore[arg-type]
    auth = services.authority
    for name, extra in (("reader", {}), ("slow", {"rate_limit": RateLimit(1, 60)}),
                        ("short", {"expires_in": 60}), ("revoked", {}), ("rotated", {})):
        record, w.secrets[name] = await auth.create(ACTOR, subject=name, name=name,
                                                    scopes=["read"], **extra)
        if name == "revoked":
            await auth.revoke(ACTOR, record.id)
        if name == "rotated":
            await auth.rotate(ACTOR, record.id, grace=0)
    yield w
    await services.close()


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


# name -> (request, status, reason (metric outcome), error (body), headers that must be present)
Request = Callable[[World], tuple[str, dict[str, str]]]
CASES: dict[str, tuple[Request, int, str, str, dict[str, str]]] = {
    "no credential": (lambda w: ("/x", {}), 401, "no_credential", "invalid_request",
                      {"www-authenticate": 'Bearer realm="authgate"'}),
    "not a bearer scheme": (lambda w: ("/x", {"authorization": "Basic YTpi"}), 401,
                            "no_credential", "invalid_request",
                            {"www-authenticate": 'Bearer realm="authgate"'}),
    "headers too large": (lambda w: ("/x", {**bearer(w.secrets["reader"]),
                                            "x-big": "a" * 33_000}),
                          431, "bad_request", "invalid_request", {}),
    "malformed": (lambda w: ("/x", bearer("agt_nonsense")), 401, "invalid_token",
                  "invalid_token", {"www-authenticate": 'Bearer realm="authgate", '
                                    'error="invalid_token", error_description="the token is '
                                    'malformed"'}),
    "unknown": (lambda w: ("/x", bearer(tokens.generate("agt").plaintext)), 401,
                "invalid_token", "invalid_token", {}),
    "revoked": (lambda w: ("/x", bearer(w.secrets["revoked"])), 401, "invalid_token",
                "invalid_token", {}),
    "replayed after rotation": (lambda w: ("/x", bearer(w.secrets["rotated"])), 401,
                                "invalid_token", "invalid_token", {}),
    "insufficient scope": (lambda w: ("/admin/x", bearer(w.secrets["reader"])), 403,
                           "insufficient_scope", "insufficient_scope",
                           {"www-authenticate": 'Bearer realm="authgate", '
                            'error="insufficient_scope", error_description="the token lacks '
                            'scope admin", scope="admin"'}),
    "ambiguous path": (lambda w: ("/a/%2e%2e/admin", bearer(w.secrets["reader"])), 400,
                       "invalid_request", "invalid_request", {}),
}


DESCRIPTIONS = {"no credential": "a bearer token is required",
                "headers too large": "request headers too large",
                "malformed": "the token is malformed", "unknown": "the token is unknown",
                "revoked": "the token has been revoked",
                "replayed after rotation": "the token has been revoked",
                "insufficient scope": "the token lacks scope admin"}


@pytest.mark.parametrize("case", list(CASES))
async def test_each_refusal_on_the_proxy(world: World, case: str) -> None:
    request, status, reason, error, headers = CASES[case]
    target, sent = request(world)
    before = world.outcome(reason)
    got = await call(world.gateway.proxy_app, target, {**sent, "x-request-id": "rid-1"})
    assert got.status == status, got.body
    assert set(got.json) == {"error", "error_description"}
    assert got.json["error"] == error
    assert got.headers["content-type"] == "application/json"
    assert got.headers["content-length"] == str(len(got.body))
    assert got.headers["x-request-id"] == "rid-1"
    if case in DESCRIPTIONS:
        assert got.json["error_description"] == DESCRIPTIONS[case]
    for name, value in headers.items():
        assert got.headers[name] == value
    assert world.outcome(reason) == before + 1
    assert world.forwarder.forwarded == 0


async def test_an_expired_token_is_refused_once_its_time_passes(world: World) -> None:
    assert (await call(world.gateway.proxy_app, "/x", bearer(world.secrets["short"]))).status \
        == 200
    world.now[0] += timedelta(seconds=61)  # judged now, not by the cache entry's age
    got = await call(world.gateway.proxy_app, "/x", bearer(world.secrets["short"]))
    assert (got.status, got.json["error_description"]) == (401, "the token has expired")


async def test_the_token_rate_limit(world: World) -> None:
    ok = await call(world.gateway.proxy_app, "/x", bearer(world.secrets["slow"]))
    assert ok.status == 200
    assert (ok.headers["x-ratelimit-limit"], ok.headers["x-ratelimit-remaining"]) == ("1", "0")
    got = await call(world.gateway.proxy_app, "/x", bearer(world.secrets["slow"]))
    assert (got.status, got.json["error"]) == (429, "rate_limited")
    assert got.json["error_description"] == "the token's rate limit is exhausted"
    assert 1 <= int(got.headers["retry-after"]) <= 60
    assert got.headers["ratelimit-policy"] == '"default";q=1;w=60'
    assert world.outcome("rate_limited") == 1


async def test_the_route_rate_limit(world: World) -> None:
    assert (await call(world.gateway.proxy_app, "/limited/a",
                       bearer(world.secrets["reader"]))).status == 200
    got = await call(world.gateway.proxy_app, "/limited/a", bearer(world.secrets["reader"]))
    assert (got.status, got.json["error"]) == (429, "rate_limited")
    assert "retry-after" in got.headers and "x-ratelimit-limit" in got.headers


async def test_a_public_route_is_limited_per_address(world: World) -> None:
    assert (await call(world.gateway.proxy_app, "/public/a")).status == 200
    got = await call(world.gateway.proxy_app, "/public/a")
    assert (got.status, got.json["error_description"]) == (429, "too many requests")
    assert (await call(world.gateway.proxy_app, "/public/a", peer="198.51.100.1")).status == 200


async def test_refused_credentials_brake_the_address(world: World) -> None:
    for _ in range(3):  # failed_auth_limit: 3 a minute
        assert (await call(world.gateway.proxy_app, "/x", bearer("agt_bad"))).status == 401
    got = await call(world.gateway.proxy_app, "/x", bearer("agt_bad"))
    assert (got.status, got.json["error_description"]) == (
        429, "too many refused credentials from this address")
    assert int(got.headers["retry-after"]) >= 1
    # braked before any work: even a good token from that address is refused now
    braked = await call(world.gateway.proxy_app, "/x", bearer(world.secrets["reader"]))
    assert braked.status == 429
    other = await call(world.gateway.proxy_app, "/x", bearer(world.secrets["reader"]),
                       peer="198.51.100.1")
    assert other.status == 200


async def test_an_unreachable_store_is_a_503_with_retry_after(world: World,
                                                              monkeypatch: Any) -> None:
    async def down(token_hash: str) -> None:
        raise StoreUnavailable("down")

    monkeypatch.setattr(world.services.store, "get_by_hash", down)
    got = await call(world.gateway.proxy_app, "/x", bearer(world.secrets["reader"]))
    assert (got.status, got.json["error"]) == (503, "temporarily_unavailable")
    assert got.headers["retry-after"] == "5"
    assert world.outcome("unavailable") == 1


@pytest.mark.parametrize(("status", "reason"), [(400, "bad_request"), (502, "upstream_error"),
                                                (504, "upstream_timeout")])
async def test_upstream_failures(world: World, status: int, reason: str) -> None:
    world.forwarder.error = UpstreamError(status, reason, "it failed")
    got = await call(world.gateway.proxy_app, "/x", {**bearer(world.secrets["reader"]),
                                                     "x-request-id": "rid-2"})
    assert got.status == status
    assert got.json == {"error": reason, "error_description": "it failed"}
    assert got.headers["x-request-id"] == "rid-2"
    assert world.outcome(reason) == 1


async def test_an_admitted_request_reaches_the_forwarder(world: World) -> None:
    got = await call(world.gateway.proxy_app, "/x", bearer(world.secrets["reader"]))
    assert (got.status, got.body, world.forwarder.forwarded) == (200, b"upstream", 1)
    assert world.outcome("ok") == 1


async def test_websockets_are_closed(world: World) -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await world.gateway.proxy_app({"type": "websocket", "headers": []}, None, send)  # type: ignore[arg-type]
    assert sent == [{"type": "websocket.close", "code": 1008}]


# The forward-auth endpoint runs the same pipeline: the same refusals, as the admin app says.
@pytest.mark.parametrize("case", ["no credential", "malformed", "revoked",
                                  "insufficient scope", "ambiguous path"])
async def test_each_refusal_on_forward_auth(world: World, case: str) -> None:
    request, status, reason, error, headers = CASES[case]
    target, sent = request(world)
    app = build_admin(world)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(PEER, 1)),
                                 base_url="http://admin") as client:
        got = await client.get("/v1/authorize", headers={**sent, "x-forwarded-uri": target})
    assert got.status_code == status
    assert got.json()["error"] == error
    for name, value in headers.items():
        assert got.headers[name] == value
    assert world.outcome(reason) == 1


async def test_forward_auth_admits_with_identity_headers(world: World) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_admin(world)),
                                 base_url="http://admin") as client:
        got = await client.get("/v1/authorize", headers={**bearer(world.secrets["reader"]),
                                                          "x-forwarded-uri": "/x"})
    assert got.status_code == 200
    assert got.headers["x-auth-subject"] == "reader"


def build_admin(world: World) -> Any:
    return world.gateway.admin_app()
