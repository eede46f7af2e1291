"""Processes the benchmark starts: the fast upstream and the bare pass-through baselines.

    python bench/servers.py upstream PORT
    python bench/servers.py bare PORT UPSTREAM               # the baseline: as the gateway, no auth
    python bench/servers.py baseline-aiohttp PORT UPSTREAM   # Starlette + aiohttp client
    python bench/servers.py baseline-httpx PORT UPSTREAM     # Starlette + httpx default transport

Nothing here imports ``gateway``: the baselines are the same whichever revision is measured.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

BODY = b"x" * 200
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
    b"trailer", b"trailers", b"transfer-encoding", b"upgrade", b"proxy-connection", b"host",
})
CHUNK = 64 * 1024
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def upstream(port: int) -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=BODY, content_type="text/plain")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def _serve(app: Any, port: int) -> None:
    """uvicorn configured and tuned as gateway/server.py runs the proxy listener."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", loop="uvloop",
                            interface="asgi3", http="httptools", log_level="warning",
                            access_log=False, server_header=False, proxy_headers=False,
                            date_header=False)
    gc.collect()
    gc.freeze()
    gc.set_threshold(7000, 20, 20)
    uvicorn.Server(config).run()


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-length":
            return value.strip() != b"0"
        if name == b"transfer-encoding":
            return True
    return False


async def _request_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("client disconnected")
        if message.get("body"):
            yield message["body"]
        if not message.get("more_body", False):
            return


def bare(port: int, target: str) -> None:
    """The baseline: what the gateway's forwarding does, and nothing else.

    A plain ASGI callable under the same uvicorn (uvloop + httptools), forwarding with the same
    pooled aiohttp session and streaming both ways as gateway/proxy.py does; no auth, no header
    rules beyond what any proxy must do (hop-by-hop and Host dropped), no metrics.
    """
    import aiohttp
    from yarl import URL

    sessions: list[aiohttp.ClientSession] = []

    def session() -> aiohttp.ClientSession:
        if not sessions:  # made inside the running loop, as the gateway's start() does
            sessions.append(aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1024, ttl_dns_cache=60),
                auto_decompress=False, skip_auto_headers=("User-Agent",),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=30)))
        return sessions[0]

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        if scope.get("query_string"):
            path += "?" + scope["query_string"].decode("latin-1")
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in scope["headers"]
                   if n not in HOP_BY_HOP]
        body = _request_body(receive) if _has_body(scope["headers"]) else None
        try:
            response = await session().request(
                scope["method"], URL(target + path, encoded=True), headers=headers, data=body,
                allow_redirects=False, compress=None)
        except (aiohttp.ClientError, OSError):
            await send({"type": "http.response.start", "status": 502, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        try:
            await send({"type": "http.response.start", "status": response.status,
                        "headers": [(n.lower(), v) for n, v in response.raw_headers
                                    if n.lower() not in HOP_BY_HOP]})
            length = response.content_length
            if length is not None and length <= CHUNK:
                await send({"type": "http.response.body", "body": await response.read()})
                return
            async for chunk in response.content.iter_chunked(CHUNK):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            response.release()

    _serve(app, port)


def baseline_aiohttp(port: int, target: str) -> None:
    """Reference: a Starlette route (body read whole) over the same aiohttp client, no auth."""
    import aiohttp
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    state: dict[str, aiohttp.ClientSession] = {}

    async def forward(request: Request) -> Response:
        session = state.get("s")
        if session is None:
            session = state["s"] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1024), auto_decompress=False)
        async with session.request(request.method, target + request.url.path,
                                   data=await request.body() or None) as r:
            return Response(await r.read(), status_code=r.status,
                            headers={"content-type": r.headers.get("content-type", "")})

    app = Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                log_level="warning", access_log=False)


def baseline_httpx(port: int, target: str) -> None:
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=1024))

    async def forward(request: Request) -> Response:
        r = await client.request(request.method, target + request.url.path,
                                 content=await request.body())
        return Response(r.content, status_code=r.status_code,
                        headers={"content-type": r.headers.get("content-type", "")})

    app = Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                log_level="warning", access_log=False)


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "upstream":
        upstream(port)
    elif kind == "bare":
        bare(port, sys.argv[3])
    elif kind == "baseline-aiohttp":
        baseline_aiohttp(port, sys.argv[3])
    else:
        baseline_httpx(port, sys.argv[3])
