"""WebSocket proxying (SPEC §6) through the real gateway on loopback, with a real WebSocket
upstream and client (the ``websockets`` package): judged at the upgrade (every refusal is the
HTTP one, before any upgrade), relayed both ways (text, binary, large messages, close codes,
subprotocols), bounded (a client that never reads is cut off, others unaffected), and closed
(1008) within the revocation bound once its token is revoked, locally or through another
replica."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request, Response

from gateway import websocket as ws_module
from gateway import ws_watch
from gateway.authority import Actor
from tests.e2e.conftest import RunningGateway, free_port

ADMIN = Actor("cli:test")
ADMIN_SECRET = "websocket-admin-secret-0001"


@dataclass
class Upstream:
    """A WebSocket upstream: what it saw, per connection, and how each ended."""
    url: str
    server: Server | None = None
    headers: list[dict[str, list[str]]] = field(default_factory=list)
    closed: list[tuple[str, int | None, str | None]] = field(default_factory=list)
    open: int = 0


async def _handler(up: Upstream, conn: ServerConnection) -> None:
    assert conn.request is not None
    path = conn.request.path
    seen: dict[str, list[str]] = {}
    for name, value in conn.request.headers.raw_items():
        seen.setdefault(name.lower(), []).append(value)
    up.headers.append(seen)
    up.open += 1
    try:
        if path.startswith("/flood"):  # sends until the connection is gone
            chunk = "x" * 16384
            while True:
                await conn.send(chunk)
        if path.startswith("/deaf"):  # never reads: the library's queue fills, then TCP's
            await conn.wait_closed()
        if path.startswith("/headers"):
            await conn.send(json.dumps(seen))
        async for message in conn:
            if isinstance(message, str) and message.startswith("close:"):
                _, code, reason = message.split(":", 2)
                await conn.close(int(code), reason)
                break
            if message == "size?":
                await conn.send(str(len(message)))
                continue
            if isinstance(message, str) and message.startswith("send-bytes:"):
                await conn.send(b"\x00" * int(message.split(":")[1]))
                continue
            await conn.send(message)
    except ConnectionClosed:
        pass
    finally:
        up.open -= 1
        up.closed.append((path, conn.close_code, conn.close_reason))


def _process_request(conn: ServerConnection, request: Request) -> Response | None:
    if request.path.startswith("/refuse"):
        return conn.respond(HTTPStatus.FORBIDDEN, "no\n")
    if request.path.startswith("/broken"):
        return conn.respond(HTTPStatus.INTERNAL_SERVER_ERROR, "broken\n")
    return None


@pytest.fixture
async def ws_upstream() -> AsyncIterator[Upstream]:
    port = free_port()
    up = Upstream(f"http://127.0.0.1:{port}")

    async def handler(conn: ServerConnection) -> None:
        await _handler(up, conn)

    def select(conn: ServerConnection, offered: Sequence[str]) -> str | None:
        return next((p for p in ("chat.v2", "chat.v1") if p in offered), None)

    async with serve(handler, "127.0.0.1", port, select_subprotocol=select,  # type: ignore[arg-type]
                     process_request=_process_request, max_size=4 * 1024 * 1024) as server:
        up.server = server
        yield up


def ws_url(rg: RunningGateway, path: str) -> str:
    return rg.proxy.replace("http://", "ws://") + path


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


ROUTES = [{"path": "/admin-only/*", "scopes": ["admin"]}, {"path": "/*"}]


async def gateway(start_gateway, up: Upstream, **overrides: Any) -> RunningGateway:  # type: ignore[no-untyped-def]
    settings: dict[str, Any] = {"upstream": up.url, "routes": ROUTES,
                                "default_rate_limit": None, **overrides}
    return await start_gateway(**settings)


async def token(rg: RunningGateway, **kw: Any) -> tuple[str, str]:
    record, secret = await rg.gateway.authority.create(ADMIN, subject=kw.pop("subject", "alice"),
                                                      name="ws", **kw)
    return record.id, secret


async def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def connections_to(port: int) -> int:
    """TCP sockets a process still holds (inode set: not an orphan the kernel is finishing)
    whose remote end is ``port``, i.e. this process's connections to that server."""
    count = 0
    with open("/proc/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            remote_port, inode = int(fields[2].split(":")[1], 16), fields[9]
            if remote_port == port and inode != "0":
                count += 1
    return count


# --- admitted: relayed both ways --------------------------------------------------------------


async def test_text_binary_and_a_large_message_are_relayed(start_gateway, ws_upstream):
    rg = await gateway(start_gateway, ws_upstream)
    _, secret = await token(rg)
    async with connect(ws_url(rg, "/echo?x=1"), additional_headers=bearer(secret),
                       max_size=4 * 1024 * 1024) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\x01\xff")
        assert await ws.recv() == b"\x00\x01\xff"
        near = ws_module.MAX_MESSAGE_BYTES - 16
        await ws.send(b"b" * near)
        assert await ws.recv() == b"b" * near
        await ws.send("t" * near)
        assert await ws.recv() == "t" * near
        await ws.send(f"send-bytes:{near}")  # the upstream's own, near the limit
        assert await ws.recv() == b"\x00" * near


async def test_forwarded_headers_follow_the_proxy_rules(start_gateway, ws_upstream):
    rg = await gateway(start_gateway, ws_upstream)
    token_id, secret = await token(rg, subject="bob")
    spoofed = {**bearer(secret), "X-Auth-Subject": "root", "X-Auth-Token-Id": "tok_evil",
               "X_Auth_Scopes": "admin", "X-Forwarded-For": "10.9.9.9", "X-Request-Id": "rid-7",
               "Origin": "http://app.example"}
    async with connect(ws_url(rg, "/headers"), additional_headers=spoofed) as ws:
        seen = json.loads(await ws.recv())
        assert ws.response is not None
        assert ws.response.headers["X-Request-Id"] == "rid-7"
    assert seen["x-auth-subject"] == ["bob"]
    assert seen["x-auth-token-id"] == [token_id]
    assert seen["x-auth-token-name"] == ["ws"]
    assert "x_auth_scopes" not in seen and "authorization" not in seen
    assert seen["x-forwarded-for"] == ["10.9.9.9, 127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["ws"]
    assert seen["x-forwarded-host"] == [rg.proxy.removeprefix("http://")]
    assert seen["x-request-id"] == ["rid-7"]
    assert seen["origin"] == ["http://app.example"]
    assert secret not in json.dumps(seen)
    assert len(seen["sec-websocket-key"]) == 1  # the upstream hop's own handshake


async def test_subprotocol_chosen_by_the_upstream_is_accepted(start_gateway, ws_upstream):
    rg = await gateway(start_gateway, ws_upstream)
    _, secret = await token(rg)
    async with connect(ws_url(rg, "/echo"), additional_headers=bearer(secret),
                       subprotocols=["chat.v1", "chat.v2"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "chat.v2"  # the upstream's preference
        await ws.send("x")
        assert await ws.recv() == "x"
    offered = ",".join(ws_upstream.headers[-1]["sec-websocket-protocol"]).split(",")
    assert [p.strip() for p in offered] == ["chat.v1", "chat.v2"]
    async with connect(ws_url(rg, "/echo"), additional_headers=bearer(secret)) as ws:
        assert ws.subprotocol is None


async def test_close_codes_and_reasons_pass_both_ways(start_gateway, ws_upstream):
    rg = await gateway(start_gateway, ws_upstream)
    _, secret = await token(rg)
    async with connect(ws_url(rg, "/echo"), additional_headers=bearer(secret)) as ws:
        await ws.send("close:4001:upstream says bye")
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert (ws.close_code, ws.close_reason) == (4001, "upstream says bye")
    async with connect(ws_url(rg, "/client-closes"), additional_headers=bearer(secret)) as ws:
        await ws.send("ping")
        assert await ws.recv() == "ping"
        await ws.close(4002, "client says bye")
    await wait_for(lambda: any(p == "/client-closes" for p, _, _ in ws_upstream.closed))
    assert ("/client-closes", 4002, "client says bye") in ws_upstream.closed


async def test_a_client_that_vanishes_closes_its_upstream_connection(start_gateway,
                                                                     ws_upstream):
    rg = await gateway(start_gateway, ws_upstream)
    _, secret = await token(rg)
    ws = await connect(ws_url(rg, "/vanish"), additional_headers=bearer(secret))
    await ws.send("a")
    assert await ws.recv() == "a"
    assert ws.transport is not None
    ws.transport.abort()  # no close frame: the TCP connection just goes
    await wait_for(lambda: any(p == "/vanish" for p, _, _ in ws_upstream.closed))
    assert ("/vanish", 1001, "") in ws_upstream.closed
    assert ws_upstream.open == 0
    await wait_for(lambda: len(rg.gateway.websockets.watch) == 0)  # type: ignore[union-attr]


# --- refusals before the upgrade ---------------------------------------------------------------


async def refused(url: str, headers: dict[str, str] | None = None) -> Response:
    with pytest.raises(InvalidStatus) as e:
        async with connect(url, additional_headers=headers):
            pass
    return e.value.response


async def test_every_refusal_is_the_http_one_before_any_upgrade(start_gateway, ws_upstream):
    rg = await gateway(start_gateway, ws_upstream)
    _, reader = await token(rg, scopes=["read"])
    r = await refused(ws_url(rg, "/echo"))
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="authgate"'
    assert json.loads(r.body) == {"error": "invalid_request",
                                  "error_description": "a bearer token is required"}
    assert r.headers["X-Request-Id"]
    r = await refused(ws_url(rg, "/echo"), bearer("agt_notatoken"))
    assert r.status_code == 401 and json.loads(r.body)["error"] == "invalid_token"
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    r = await refused(ws_url(rg, "/admin-only/x"), bearer(reader))
    assert r.status_code == 403 and json.loads(r.body)["error"] == "insufficient_scope"
    assert 'scope="admin"' in r.headers["WWW-Authenticate"]
    assert ws_upstream.headers == []  # nothing reached the upstream


async def test_rate_limited_upgrades_get_429_with_its_headers(start_gateway, ws_upstream):
    rg = await gateway(start_gateway, ws_upstream)
    _, secret = await token(rg, rate_limit="2/minute")
    for _ in range(2):
        async with connect(ws_url(rg, "/echo"), additional_headers=bearer(secret)) as ws:
            assert ws.response is not None
            assert ws.response.headers["RateLimit-Policy"] == '"default";q=2;w=60'
            assert ws.response.headers["X-RateLimit-Limit"] == "2"
    r = await refused(ws_url(rg, "/echo"), bearer(secret))
    assert r.status_code == 429
    assert json.loads(r.body)["error"] == "rate_limited"
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert r.headers["X-RateLimit-Remaining"] == "0"
    assert r.headers["RateLimit"].startswith('"default";r=0;t=')


async def test_usage_counts_each_upgrade_as_one_request(start_gateway, ws_upstream):
    rg = await gateway(start_gateway, ws_upstream)
    token_id, secret = await token(rg)
    async with connect(ws_url(rg, "/echo"), additional_headers=bearer(secret)) as ws:
        for i in range(5):
            await ws.send(str(i))
            assert await ws.recv() == str(i)
    await rg.gateway.usage.flush()
    stored = await rg.gateway.authority.get(token_id)
    assert stored.usage_count == 1


@pytest.mark.parametrize("path,status", [("/refuse", 502), ("/broken", 502)])
async def test_an_upstream_refusing_the_upgrade_is_502(start_gateway, ws_upstream, path, status):
    rg = await gateway(start_gateway, ws_upstream)
    _, secret = await token(rg)
    r = await refused(ws_url(rg, path), bearer(secret))
    assert r.status_code == status
    assert json.loads(r.body)["error"] == "upstream_error"
    assert r.headers["X-Request-Id"]


async def test_an_upstream_that_is_down_is_502_and_a_silent_one_504(start_gateway, ws_upstream):
    down = free_port()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (the kernel does) but never answers the upgrade
    try:
        rg = await gateway(start_gateway, ws_upstream, upstream_timeout_s=1, routes=[
            {"path": "/down/*", "upstream": f"http://127.0.0.1:{down}"},
            {"path": "/silent/*", "upstream": f"http://127.0.0.1:{silent.getsockname()[1]}"},
            {"path": "/*"}])
        _, secret = await token(rg)
        r = await refused(ws_url(rg, "/down/x"), bearer(secret))
        assert r.status_code == 502 and json.loads(r.body)["error"] == "upstream_error"
        started = time.monotonic()
        r = await refused(ws_url(rg, "/silent/x"), bearer(secret))
        assert r.status_code == 504 and json.loads(r.body)["error"] == "upstream_timeout"
        assert time.monotonic() - started < 10
    finally:
        silent.close()


async def test_a_quiet_connection_outlives_the_upstream_timeout(start_gateway, ws_upstream):
    rg = await gateway(start_gateway, ws_upstream, upstream_timeout_s=0.5)
    _, secret = await token(rg)
    async with connect(ws_url(rg, "/echo"), additional_headers=bearer(secret)) as ws:
        await asyncio.sleep(1.5)  # silence is not a timeout once upgraded
        await ws.send("still here")
        assert await ws.recv() == "still here"


# --- bounds ----------------------------------------------------------------------------------


async def test_a_message_over_the_limit_closes_with_1009(start_gateway, ws_upstream):
    rg = await gateway(start_gateway, ws_upstream)
    _, secret = await token(rg)
    async with connect(ws_url(rg, "/too-big"), additional_headers=bearer(secret),
                       max_size=None) as ws:
        await ws.send(b"x" * (ws_module.MAX_MESSAGE_BYTES + 1))
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 1009
    async with connect(ws_url(rg, "/too-big-up"), additional_headers=bearer(secret),
                       max_size=None) as ws:
        await ws.send(f"send-bytes:{ws_module.MAX_MESSAGE_BYTES + 1}")
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 1009
    await wait_for(lambda: ws_upstream.open == 0)


async def test_a_client_that_never_reads_is_cut_off_and_others_are_not(
        start_gateway, ws_upstream, monkeypatch):
    monkeypatch.setattr(ws_watch, "WRITE_STALL_S", 1.0)
    rg = await gateway(start_gateway, ws_upstream)
    _, secret = await token(rg)
    host, port = rg.proxy.removeprefix("http://").split(":")
    # A raw client with a small receive buffer that sends the upgrade and never reads.
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect((host, int(port)))
    stuck.sendall((f"GET /flood HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {secret}\r\n\r\n"
                   ).encode())
    try:
        await wait_for(lambda: any(h.get("authorization") is None for h in ws_upstream.headers)
                       and ws_upstream.open >= 1)
        # Meanwhile another client is served as usual.
        async with connect(ws_url(rg, "/echo"), additional_headers=bearer(secret)) as ws:
            for i in range(20):
                await ws.send(f"m{i}")
                assert await ws.recv() == f"m{i}"
        # The flood's upstream connection is closed once the stuck client is cut off.
        await wait_for(lambda: any(p == "/flood" for p, _, _ in ws_upstream.closed), 15)
        assert ws_upstream.open == 0
        stuck.setblocking(False)
        with pytest.raises((ConnectionResetError, BlockingIOError, OSError)):
            while stuck.recv(65536):  # what was buffered, then the reset
                pass
            raise ConnectionResetError
    finally:
        stuck.close()


async def test_an_upstream_that_never_reads_is_closed_and_the_client_told(
        start_gateway, ws_upstream, monkeypatch):
    monkeypatch.setattr(ws_watch, "WRITE_STALL_S", 1.0)
    rg = await gateway(start_gateway, ws_upstream)
    _, secret = await token(rg)
    chunk = os.urandom(65536)  # incompressible, and no compression: real bytes on the wire
    async with connect(ws_url(rg, "/deaf"), additional_headers=bearer(secret),
                       compression=None) as ws:

        async def flood() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await ws.send(chunk)
                    await asyncio.sleep(0)  # send() does not yield while the socket takes it

        sending = asyncio.create_task(flood())
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 20)
        sending.cancel()
        await asyncio.wait({sending})
    assert (ws.close_code, ws.close_reason) == (1001, "upstream stalled")
    # The gateway let go of its upstream connection (aborted: a graceful close would hold it
    # until the full buffer drained, i.e. forever). The deaf upstream does not read, so it
    # cannot notice; the kernel finishes the orphaned socket.
    port = int(ws_upstream.url.rsplit(":", 1)[1])
    await wait_for(lambda: connections_to(port) == 0)


# --- revocation closes open connections ---------------------------------------------------------


async def closed_within(ws: ClientConnection, bound_s: float) -> float:
    started = time.monotonic()
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), bound_s + 2)
    return time.monotonic() - started


async def test_a_local_revoke_closes_open_connections_with_1008(start_gateway, ws_upstream):
    rg = await gateway(start_gateway, ws_upstream, local_cache_ttl_s=1.0)
    token_id, secret = await token(rg)
    _, other = await token(rg, subject="carol")
    async with connect(ws_url(rg, "/echo"), additional_headers=bearer(secret)) as ws, \
            connect(ws_url(rg, "/echo"), additional_headers=bearer(other)) as kept:
        await ws.send("a")
        assert await ws.recv() == "a"
        await rg.gateway.authority.revoke(ADMIN, token_id)
        took = await closed_within(ws, 2.0)
        assert ws.close_code == 1008
        assert took <= 2.0
        await kept.send("still")  # another token's connection stays
        assert await kept.recv() == "still"
    await wait_for(lambda: ("/echo", 1008, "token no longer valid") in ws_upstream.closed)


async def test_a_changed_scope_closes_the_route_connections(start_gateway, ws_upstream):
    rg = await gateway(start_gateway, ws_upstream, local_cache_ttl_s=1.0)
    token_id, secret = await token(rg, scopes=["admin"])
    async with connect(ws_url(rg, "/admin-only/x"), additional_headers=bearer(secret)) as ws:
        await rg.gateway.authority.update(ADMIN, token_id, scopes=["read"])
        await closed_within(ws, 2.0)
        assert ws.close_code == 1008


@pytest.mark.parametrize("backend_pair", ["postgresql+redis"], indirect=True)
async def test_a_revoke_through_another_replica_closes_within_the_bound(
        start_gateway, ws_upstream, http, backend_pair):
    ttl = 1.0
    a = await gateway(start_gateway, ws_upstream, local_cache_ttl_s=ttl,
                      admin_token=ADMIN_SECRET)
    b = await gateway(start_gateway, ws_upstream, local_cache_ttl_s=ttl)
    token_id, secret = await token(a)
    async with connect(ws_url(b, "/echo"), additional_headers=bearer(secret)) as ws:
        await ws.send("a")
        assert await ws.recv() == "a"
        r = await http.post(f"{a.admin}/v1/tokens/{token_id}/revoke",
                            headers={"Authorization": f"Bearer {ADMIN_SECRET}"})
        assert r.status_code == 200
        took = await closed_within(ws, ttl + 1)
        assert ws.close_code == 1008
        assert took <= ttl + 1
        print(f"revoked on replica A, B's WebSocket closed after {took * 1000:.0f} ms")


async def test_the_gateway_stopping_closes_connections_with_1012(start_gateway, ws_upstream):
    rg = await gateway(start_gateway, ws_upstream)
    _, secret = await token(rg)
    ws = await connect(ws_url(rg, "/echo"), additional_headers=bearer(secret))
    await ws.send("a")
    assert await ws.recv() == "a"
    await rg.stop()
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 15)
    assert ws.close_code == 1012
    await wait_for(lambda: ws_upstream.open == 0)
    assert ws_upstream.closed[-1][1] == 1012


async def test_with_the_httpx_forwarder_websockets_are_relayed_by_aiohttp(start_gateway,
                                                                         ws_upstream):
    rg = await gateway(start_gateway, ws_upstream, forwarder="httpx")
    _, secret = await token(rg)
    async with connect(ws_url(rg, "/echo"), additional_headers=bearer(secret)) as ws:
        await ws.send("via aiohttp")
        assert await ws.recv() == "via aiohttp"


async def test_an_auth_none_route_is_relayed_without_a_token(start_gateway, ws_upstream):
    rg = await gateway(start_gateway, ws_upstream,
                       routes=[{"path": "/public/*", "auth": "none"}, {"path": "/*"}])
    async with connect(ws_url(rg, "/public/feed")) as ws:
        await ws.send("open")
        assert await ws.recv() == "open"
    assert "x-auth-subject" not in ws_upstream.headers[-1]


@pytest.mark.parametrize("backend_pair", ["sqlite+memory"], indirect=True)
@pytest.mark.parametrize("target", ["http://evil.example/x", "*", "//evil.example/x"])
async def test_a_target_never_reaches_another_host(start_gateway, ws_upstream, backend_pair,
                                                  target):
    rg = await gateway(start_gateway, ws_upstream)
    _, secret = await token(rg)
    host, port = rg.proxy.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write((f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {secret}\r\n\r\n"
                  ).encode())
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    if target.startswith("/"):  # a path ("//evil.example/x"): relayed to the upstream itself
        assert b" 101 " in status
        await wait_for(lambda: len(ws_upstream.headers) == 1)
        assert ws_upstream.headers[0]["host"] == [ws_upstream.url.removeprefix("http://")]
    else:  # not origin-form: refused, nothing forwarded
        assert status.startswith(b"HTTP/1.1 4"), status
        assert ws_upstream.headers == []


async def test_refused_and_admitted_upgrades_are_access_logged(start_gateway, ws_upstream):
    from gateway.access_log import FIELDS, AccessLog, format_line
    rg = await gateway(start_gateway, ws_upstream)
    log = AccessLog()  # not started: its queued lines are read here
    rg.gateway.pipeline.access_log = log
    token_id, secret = await token(rg, scopes=["read"])
    r = await refused(ws_url(rg, "/admin-only/x"), bearer(secret))
    assert r.status_code == 403
    async with connect(ws_url(rg, "/echo"), additional_headers=bearer(secret)) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
    await wait_for(lambda: len(log._pending) == 2)
    lines = [format_line(values) for values in log._pending]
    assert all(secret.encode() not in line for line in lines)
    denied, admitted = (json.loads(line) for line in lines)
    assert set(denied) == set(admitted) == set(FIELDS)
    assert denied["status"] == 403 and denied["outcome"] == "insufficient_scope"
    assert denied["route"] == "/admin-only/*" and denied["path"] == "/admin-only/x"
    assert denied["method"] == "GET" and denied["request_id"] == r.headers["X-Request-Id"]
    assert admitted["status"] == 101 and admitted["outcome"] == "ok"
    assert admitted["path"] == "/echo" and admitted["route"] == "/*"
    assert admitted["token_id"] == token_id and admitted["subject"] == "alice"
    assert admitted["bytes_in"] == 5 and admitted["bytes_out"] >= 5
