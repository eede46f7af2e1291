"""A stalled request body does not hold its upstream connection (issue 9's review finding).

A request head is bounded in size and time (server.HEAD_TIMEOUT_S); a request body being relayed
is bounded by its silence: no body bytes for ``proxy.BODY_IDLE_S`` (60 s, nginx's
client_body_timeout) ends the exchange, 408 and the connection closed, and the upstream
connection is closed, not pooled. Without it, POOL_SIZE clients sending one byte of a declared
body on an ``auth: none`` route would starve every other client of that upstream (504 after
POOL_WAIT_S). Shown with the pool patched down to 2 and the bounds at 1 s: two stalled uploads
are answered 408 and a third request 3 s later is served. Both forwarders, both backend pairs.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway import proxy, server

PUBLIC = [{"path": "/public/*", "auth": "none"}]


@pytest.mark.parametrize("forwarder", ["aiohttp", "httpx"])
async def test_stalled_uploads_do_not_hold_the_pool(start_gateway, monkeypatch, http, forwarder):
    monkeypatch.setattr(proxy, "POOL_SIZE", 2)
    monkeypatch.setattr(proxy, "POOL_WAIT_S", 0.5)
    monkeypatch.setattr(proxy, "BODY_IDLE_S", 1.0)
    monkeypatch.setattr(server, "HEAD_TIMEOUT_S", 1.0)
    rg = await start_gateway(routes=PUBLIC, upstream_timeout_s=1, forwarder=forwarder)
    host, port = rg.proxy.removeprefix("http://").rsplit(":", 1)
    streams = []
    try:
        for _ in range(2):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /public/upload HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 1000\r\n\r\nu")
            await writer.drain()
            streams.append((reader, writer))
        await asyncio.sleep(3.0)  # 3x every bound
        r = await http.get(f"{rg.proxy}/public/echo")
        assert r.status_code == 200, (r.status_code, r.text)
        for reader, _ in streams:
            answer = await asyncio.wait_for(reader.read(), 5)  # read to EOF: closed
            head = answer.split(b"\r\n\r\n", 1)[0].lower()
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert b"connection: close" in head and b"x-request-id: " in head
            assert b"invalid_request" in answer.split(b"\r\n\r\n", 1)[1]
    finally:
        for _, writer in streams:
            writer.close()


@pytest.mark.parametrize("forwarder", ["aiohttp", "httpx"])
async def test_a_slow_body_that_keeps_coming_is_relayed(start_gateway, monkeypatch, forwarder):
    """The bound is on silence, not on the whole body: bytes every 0.5 s with a bound of 1 s."""
    monkeypatch.setattr(proxy, "BODY_IDLE_S", 1.0)
    rg = await start_gateway(routes=PUBLIC, forwarder=forwarder)
    host, port = rg.proxy.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"POST /public/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
        for byte in b"abcd":
            await asyncio.sleep(0.5)
            writer.write(bytes([byte]))
            await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 "), head
    finally:
        writer.close()
