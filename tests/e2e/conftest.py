"""Real servers on loopback: an upstream app and the gateway (uvicorn), on both backend pairs."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn

from gateway.app import Gateway
from gateway.config import Settings
from gateway.server import serve
from tests.conftest import open_empty_store

# A database of its own, flushed per test (AUTHGATE_TEST_REDIS: another, for parallel runs).
REDIS_URL = os.environ.get("AUTHGATE_TEST_REDIS", "redis://127.0.0.1:6379/9")
PAIRS = {"sqlite+memory": ("sqlite", "memory://"), "postgresql+redis": ("postgresql", REDIS_URL)}


_PORTS = random.Random()


_HANDED: set[int] = set()  # ports handed out in this run: never twice (two calls before a bind)


def free_port() -> int:
    """A free loopback port below the ephemeral range (32768+), so that the outgoing connections
    of other tests and sessions cannot take it between this check and the server's bind; outside
    the test Redis Clusters' ports (20000-22700) and bus ports (30000-32700); never one this run
    handed out before."""
    for _ in range(200):
        port = _PORTS.randrange(23000, 30000)
        if port in _HANDED:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED.add(port)
            return port
    raise AssertionError("no free loopback port in 23000-30000")


async def upstream_app(scope: dict[str, Any], receive, send) -> None:  # type: ignore[no-untyped-def]
    """/echo: request as JSON; /slow?s=N: waits; /bytes?n=N: streams N bytes; /upload: counts."""
    if scope["type"] != "http":
        return
    path, query = scope["path"], scope["query_string"].decode()
    params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
    if path == "/slow":
        await asyncio.sleep(float(params.get("s", "5")))
    if path.startswith("/bytes"):
        n = int(params["n"])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(n).encode())]})
        chunk = b"x" * 65536
        while n > 0:
            await send({"type": "http.response.body", "body": chunk[:n], "more_body": True})
            n -= len(chunk)
        await send({"type": "http.response.body", "body": b""})
        return
    received = 0
    while True:
        message = await receive()
        received += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    if path == "/redirect":
        await send({"type": "http.response.start", "status": 302,
                    "headers": [(b"location", b"http://127.0.0.1:1/elsewhere")]})
        await send({"type": "http.response.body", "body": b""})
        return
    body = json.dumps({
        "method": scope["method"], "path": path, "query": query, "received": received,
        "headers": [[k.decode(), v.decode("latin-1")] for k, v in scope["headers"]],
    }).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"connection", b"keep-alive, x-hop"),
        (b"x-hop", b"secret"), (b"x-upstream", b"yes")]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(upstream_app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off",
                                           interface="asgi3"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


@dataclass
class RunningGateway:
    gateway: Gateway
    proxy: str
    admin: str
    shutdown: asyncio.Event
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.shutdown.set()
        await self.task


@pytest.fixture(params=list(PAIRS))
def backend_pair(request: pytest.FixtureRequest, tmp_path) -> tuple[str, str]:
    store_kind, cache = PAIRS[request.param]
    if store_kind == "sqlite":
        return f"sqlite:///{tmp_path}/gw.db", cache
    return request.getfixturevalue("pg_database"), cache


StartGateway = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def start_gateway(backend_pair, upstream) -> AsyncIterator[StartGateway]:
    """Start gateways (replicas) sharing the pair's (emptied) store and cache."""
    store_url, cache_url = backend_pair
    await (await open_empty_store(store_url)).close()
    if cache_url != "memory://":
        r = aioredis.from_url(cache_url)
        await r.flushdb()
        await r.aclose()
    running: list[RunningGateway] = []

    async def start(**overrides: Any) -> RunningGateway:
        proxy, admin = free_port(), free_port()
        settings = Settings(**{
            "store": store_url, "cache": cache_url, "upstream": upstream,
            "listen": f"127.0.0.1:{proxy}", "admin_listen": f"127.0.0.1:{admin}",
            "pepper": "e2e-pepper", "usage_flush_interval_s": 0.2, **overrides})
        ready = asyncio.Event()
        holder: dict[str, Gateway] = {}

        async def on_ready(gw: Gateway) -> None:
            holder["gw"] = gw
            ready.set()

        shutdown = asyncio.Event()
        task = asyncio.create_task(serve(settings, on_ready, loop="asyncio", shutdown=shutdown))
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED, timeout=15)
        if task.done():
            task.result()
        rg = RunningGateway(holder["gw"], f"http://127.0.0.1:{proxy}",
                            f"http://127.0.0.1:{admin}", shutdown, task)
        running.append(rg)
        return rg

    yield start
    for rg in running:
        if not rg.task.done():
            await rg.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client
