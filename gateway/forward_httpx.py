"""The httpx forwarder (``forwarder: httpx``): HTTP/2 to upstreams that offer it.

It drives httpx's own HTTP engine, httpcore (installed with httpx; HTTP/2 by h2), one connection
pool per upstream, below httpx's ``AsyncClient``: the client would add Accept, Accept-Encoding,
Connection and User-Agent to every request, keep one cookie jar fed by every upstream's
Set-Cookie (shared by all the gateway's clients, and unbounded), and its URL model normalises the
target (``/a/../b`` -> ``/b``, ``"`` -> ``%22``), where the proxy forwards it exactly as sent.

HTTP/2 is negotiated by TLS ALPN: an ``https://`` upstream that offers h2 gets it (many requests
share a connection), any other gets HTTP/1.1. ``http://`` upstreams get HTTP/1.1: h2c by prior
knowledge would break every HTTP/1.1 upstream, and httpcore does not do the h2c upgrade.

Everything else is the aiohttp forwarder's (``gateway.proxy``): the same HeaderRules, nothing
added but Host and the body's framing, no decompression, redirects passed back, streaming both
ways, 502/504 (``POOL_SIZE`` connections per upstream, ``POOL_WAIT_S`` to get one), and a client
that goes away ends its exchange at once, the upstream connection closed, never pooled half-read.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import httpcore

from gateway import proxy
from gateway.config import Settings
from gateway.errors import UpstreamError
from gateway.metrics import Metrics
from gateway.pipeline import Decision
from gateway.proxy import (
    CHUNK,
    HeaderRules,
    Receive,
    Scope,
    Send,
    _ClientWatch,
    _has_body,
    request_target,
)

if TYPE_CHECKING:
    from gateway.assertion import Assertions

_DEFAULT_PORTS = {"http": 80, "https": 443}
_KEEPALIVE_S = 15.0  # idle pooled connections are closed after this (aiohttp's default too)
# Everything httpcore raises for a failed exchange (there is no common base class).
_FAILED = (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol,
           httpcore.ConnectionNotAvailable, OSError)


class _Origin:
    """An upstream URL split once: where to connect, the Host header, the path prefix."""

    __slots__ = ("authority", "host", "port", "prefix", "scheme")

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.scheme = parts.scheme.encode()
        self.host = (parts.hostname or "").encode("idna")
        self.port = parts.port or _DEFAULT_PORTS[parts.scheme]
        host = parts.netloc.rpartition("@")[2]  # Host as aiohttp sends it: no default port
        if parts.port is not None and parts.port == _DEFAULT_PORTS[parts.scheme]:
            host = host.rpartition(":")[0]
        self.authority = host.encode("idna")
        self.prefix = parts.path.encode("latin-1")


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class HttpxForwarder:
    def __init__(self, settings: Settings, upstreams: set[str], metrics: Metrics,
                 assertions: Assertions | None = None) -> None:
        self._rules = HeaderRules(settings, assertions)
        self._timeout = settings.upstream_timeout_s
        self._origins = {u: _Origin(u) for u in upstreams}
        self._metrics = metrics
        self._pools: dict[str, httpcore.AsyncConnectionPool] = {}
        self._extensions: dict[str, Any] = {}

    async def start(self) -> None:
        try:
            import h2  # noqa: F401  (httpcore imports it at the first h2 connection: fail now)
        except ImportError:
            raise RuntimeError("forwarder: httpx needs the h2 package "
                               "(pip install 'httpx[http2]')") from None
        wait = min(proxy.POOL_WAIT_S, self._timeout)
        # pool: the wait for a pooled connection; connect: the TCP (+TLS) connect; read: the
        # wait for the response headers (-> 504) and any stall in the body after. One dict,
        # shared by every request (httpcore only reads it).
        self._extensions = {"timeout": {"pool": wait, "connect": wait, "read": self._timeout,
                                        "write": None}}
        tls = ssl.create_default_context()  # the system's trust store, as aiohttp's
        for upstream in self._origins.keys() - self._pools.keys():
            self._pools[upstream] = httpcore.AsyncConnectionPool(
                ssl_context=tls, max_connections=proxy.POOL_SIZE, keepalive_expiry=_KEEPALIVE_S,
                http1=True, http2=True)

    async def close(self) -> None:
        await asyncio.gather(*(p.aclose() for p in self._pools.values()))

    async def add_upstreams(self, upstreams: set[str]) -> None:
        """Pools for upstreams a reload brought (existing pools stay as they are)."""
        self._origins.update({u: _Origin(u) for u in upstreams - self._origins.keys()})
        await self.start()

    async def forward(self, scope: Scope, receive: Receive, send: Send, decision: Decision,
                      extra_headers: list[tuple[bytes, bytes]], request_id: bytes) -> None:
        """Send the request upstream and stream the answer back; raises UpstreamError before
        anything was sent to the client. Returns quietly when the client goes away."""
        target = request_target(scope)
        upstream = decision.route.upstream
        origin = self._origins[upstream]
        headers = [(b"host", origin.authority)]
        headers.extend((n.encode("latin-1"), v.encode("latin-1"))
                       for n, v in self._rules.request(scope, decision, request_id))
        task = asyncio.current_task()
        assert task is not None
        watch = _ClientWatch(scope, receive, task)
        try:
            body: AsyncIterator[bytes] | None = None
            if _has_body(scope["headers"]):
                body = watch.body()
                if _content_length(headers) is None:  # the client's chunked framing is hop-by-hop
                    headers.append((b"transfer-encoding", b"chunked"))
            else:
                watch.start()
            url = httpcore.URL(scheme=origin.scheme, host=origin.host, port=origin.port,
                               target=origin.prefix + target.encode("latin-1"))
            request = httpcore.Request(scope["method"].encode(), url, headers=headers,
                                       content=body, extensions=self._extensions)
            await self._exchange(self._pools[upstream], request, send, extra_headers)
        except asyncio.CancelledError:
            # Ours (the client left) unless someone else cancelled too, e.g. a shutdown.
            if not watch.gone or task.uncancel() > 0:
                raise
        except UpstreamError:
            if watch.stalled:
                raise proxy.body_stalled() from None
            raise
        finally:
            watch.stop()

    async def _exchange(self, pool: httpcore.AsyncConnectionPool, request: httpcore.Request,
                        send: Send, extra_headers: list[tuple[bytes, bytes]]) -> None:
        started = time.perf_counter()
        try:
            response = await pool.handle_async_request(request)
        except (httpcore.PoolTimeout, httpcore.ConnectTimeout):
            raise UpstreamError(504, "upstream_timeout",
                                "no connection to the upstream could be had in time") from None
        except httpcore.TimeoutException:
            raise UpstreamError(504, "upstream_timeout", "the upstream did not answer in time") \
                from None
        except _FAILED as e:
            raise UpstreamError(502, "upstream_error",
                                f"the upstream is unreachable ({type(e).__name__})") from None
        self._metrics.upstream_seconds.observe(time.perf_counter() - started)
        stream = cast(AsyncIterable[bytes], response.stream)  # async, from an async pool
        try:
            status = response.status
            await send({"type": "http.response.start", "status": status,
                        "headers": self._rules.response(response.headers, status)
                        + extra_headers})
            length = _content_length(response.headers)
            if length is not None and length <= CHUNK:  # small: one body message
                await send({"type": "http.response.body",
                            "body": b"".join([chunk async for chunk in stream])})
                return
            async for chunk in stream:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            # Read to the end: the connection goes back to the pool. Cut short (an upstream
            # error, or the client left): httpcore closes it, never pools it half-read.
            await response.aclose()
