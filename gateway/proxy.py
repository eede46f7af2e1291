"""Forwarding: header rules, streaming both ways, upstream failures -> 502/504.

The forwarding client is aiohttp's, chosen by measurement (README, "Forwarding client"): httpx's
default transport forwarded ~10x slower here. It sits behind the small ``Forwarder`` surface,
with one pooled session per upstream.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
from yarl import URL

from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.pipeline import Decision, identity_headers

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
    b"trailer", b"trailers", b"transfer-encoding", b"upgrade", b"proxy-connection",
})
CHUNK = 64 * 1024


class UpstreamError(Exception):
    def __init__(self, status: int, reason: str, description: str) -> None:
        self.status, self.reason, self.description = status, reason, description


def _connection_named(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    named: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            named.update(v.strip().lower() for v in value.split(b","))
    return named


def _normalised(name: bytes) -> bytes:
    return name.lower().replace(b"_", b"-")


class HeaderRules:
    """What goes to the upstream and what comes back (SPEC §6)."""

    def __init__(self, settings: Settings) -> None:
        ih = self._names = settings.identity_headers
        names = (ih.subject, ih.token_id, ih.token_name, ih.scopes)
        self._identity_lower = frozenset(h.lower().encode() for h in names)
        api_key = settings.api_key_header
        self._credential = {b"authorization"} | ({api_key.lower().encode()} if api_key else set())

    def _drop(self, name: bytes) -> bool:
        n = _normalised(name)
        return (name in HOP_BY_HOP or name in self._credential or n.startswith(b"x-auth-")
                or n in self._identity_lower or name == b"host")

    def request(self, scope: Scope, decision: Decision, request_id: bytes) -> list[tuple[str, str]]:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        named = _connection_named(headers)
        out: list[tuple[str, str]] = []
        forwarded_for = host = None
        for name, value in headers:
            if self._drop(name) or name in named:
                if name == b"host":
                    host = value
                continue
            if name == b"x-forwarded-for":
                forwarded_for = value
            elif name == b"x-request-id":
                continue
            else:
                out.append((name.decode("latin-1"), value.decode("latin-1")))
        client = scope.get("client")
        ip = client[0] if client else ""
        chain = f"{forwarded_for.decode('latin-1')}, {ip}" if forwarded_for else ip
        out.append(("X-Forwarded-For", chain))
        out.append(("X-Forwarded-Proto", scope.get("scheme", "http")))
        if host is not None:
            out.append(("X-Forwarded-Host", host.decode("latin-1")))
        out.append(("X-Request-Id", request_id.decode("latin-1")))
        if decision.record is not None:
            out.extend(identity_headers(self._names, decision.record))
        return out

    @staticmethod
    def response(raw: tuple[tuple[bytes, bytes], ...]) -> list[tuple[bytes, bytes]]:
        headers = [(n.lower(), v) for n, v in raw]  # aiohttp keeps the upstream's case
        named = _connection_named(headers)
        return [(n, v) for n, v in headers if n not in HOP_BY_HOP and n not in named]


def request_id_of(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == b"x-request-id" and 0 < len(value) <= 200:
            return value
    return os.urandom(16).hex().encode()  # as unique as uuid4, at a fraction of the cost


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
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


class AiohttpForwarder:
    def __init__(self, settings: Settings, upstreams: set[str], metrics: Metrics) -> None:
        self._rules = HeaderRules(settings)
        self._timeout = settings.upstream_timeout_s
        self._upstreams = upstreams
        self._metrics = metrics
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    async def start(self) -> None:
        for upstream in self._upstreams:
            connector = aiohttp.TCPConnector(limit=1024, ttl_dns_cache=60)
            self._sessions[upstream] = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",),
                # sock_read bounds the wait for the response headers (-> 504) and any stall
                # in the body after them.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout,
                                              sock_read=self._timeout))

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self._sessions.values()))

    async def forward(self, scope: Scope, receive: Receive, send: Send, decision: Decision,
                      extra_headers: list[tuple[bytes, bytes]], request_id: bytes) -> None:
        """Send the request upstream and stream the answer back; raises UpstreamError before
        anything was sent to the client."""
        upstream = decision.route.upstream
        path = scope.get("raw_path") or scope["path"].encode()
        target = path.decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        headers = self._rules.request(scope, decision, request_id)
        body = _request_body(receive) if _has_body(scope["headers"]) else None
        started = time.perf_counter()
        try:
            response = await self._sessions[upstream].request(
                scope["method"], URL(upstream + target, encoded=True), headers=headers,
                data=body, allow_redirects=False, compress=None)
        except TimeoutError:
            raise UpstreamError(504, "upstream_timeout", "the upstream did not answer in time") \
                from None
        except (aiohttp.ClientError, OSError) as e:
            raise UpstreamError(502, "upstream_error",
                                f"the upstream is unreachable ({type(e).__name__})") from None
        self._metrics.upstream_seconds.observe(time.perf_counter() - started)
        try:
            await send({"type": "http.response.start", "status": response.status,
                        "headers": self._rules.response(response.raw_headers) + extra_headers})
            length = response.content_length
            if length is not None and length <= CHUNK:  # small: one body message, no iterator
                await send({"type": "http.response.body", "body": await response.read()})
                return
            async for chunk in response.content.iter_chunked(CHUNK):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except (TimeoutError, aiohttp.ClientError, OSError):
            # Headers are out: all we can do is cut the stream short.
            response.close()
            raise
        finally:
            response.release()
