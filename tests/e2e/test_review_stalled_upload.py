"""Review finding: a stalled request body holds its upstream connection for ever.

A request head is bounded in size and time (server.HEAD_TIMEOUT_S), but once the head is in, a
client may send one byte of a declared body and then nothing, for ever: the forwarder has no idle
bound while it relays the request body (aiohttp's sock_read/upstream_timeout_s only times the
upstream's answer), so the exchange holds one of the POOL_SIZE upstream connections. On an
``auth: none`` route that needs no token: POOL_SIZE (1,024) idle sockets starve every other
client of that upstream (504 after POOL_WAIT_S). Shown here with the pool patched down to 2 and
upstream_timeout_s and the head bound at 1 s: two stalled uploads still starve a third request
3 s later. Expected:
a body that makes no progress for a bounded time ends the exchange (e.g. 408 / connection closed,
as nginx's client_body_timeout), freeing the pool.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway import proxy, server

PUBLIC = [{"path": "/public/*", "auth": "none"}]


@pytest.mark.xfail(strict=True, reason="review: no idle bound on a request body being relayed")
@pytest.mark.parametrize("backend_pair", ["sqlite+memory"], indirect=True)
async def test_stalled_uploads_do_not_hold_the_pool(start_gateway, monkeypatch, http):
    monkeypatch.setattr(proxy, "POOL_SIZE", 2, raising=False)
    monkeypatch.setattr(proxy, "POOL_WAIT_S", 0.5, raising=False)
    monkeypatch.setattr(server, "HEAD_TIMEOUT_S", 1.0, raising=False)
    rg = await start_gateway(routes=PUBLIC, upstream_timeout_s=1)
    host, port = rg.proxy.removeprefix("http://").rsplit(":", 1)
    writers = []
    try:
        for _ in range(2):
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /public/upload HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 1000\r\n\r\nu")
            await writer.drain()
            writers.append(writer)
        await asyncio.sleep(3.0)  # 3x upstream_timeout_s, and far past the head bound of 1 s
        r = await http.get(f"{rg.proxy}/public/echo")
        assert r.status_code == 200, (r.status_code, r.text)
    finally:
        for writer in writers:
            writer.close()
