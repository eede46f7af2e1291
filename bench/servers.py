"""Processes the benchmark starts: the fast upstream and the bare pass-through baselines.

    python bench/servers.py upstream PORT
    python bench/servers.py baseline-aiohttp PORT UPSTREAM   # Starlette + aiohttp client
    python bench/servers.py baseline-httpx PORT UPSTREAM     # Starlette + httpx default transport
"""

from __future__ import annotations

import sys

import uvicorn

BODY = b"x" * 200


def upstream(port: int) -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=BODY, content_type="text/plain")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def baseline_aiohttp(port: int, target: str) -> None:
    """The same server and forwarding client as the gateway, with no auth at all."""
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
    elif kind == "baseline-aiohttp":
        baseline_aiohttp(port, sys.argv[3])
    else:
        baseline_httpx(port, sys.argv[3])
