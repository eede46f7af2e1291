"""The gateway inside a Python ASGI app (SPEC §9): ``AuthGateMiddleware``, no network hop.

    app.add_middleware(AuthGateMiddleware, config="authgate.yaml")     # or settings=Settings(...)

The same settings as ``serve`` (file + ``AUTHGATE_*``; ``upstream`` and the listeners unused),
the same composition root (``gateway.services.Services``) and the same pipeline: routes with the
path rule, scopes, limits, the client address (``trusted_proxies``), usage, events, revocation.

    http        judged like the proxy listener; a refusal is rendered by ``gateway.responses``
                (same status, headers, body, plus ``X-Request-Id``); an admitted request reaches
                the app with ``scope["state"]["auth"]`` (an ``Auth``; None on an ``auth: none``
                route), without ``Authorization``, the API-key header, ``X-Auth-*`` or the
                identity headers, with ``X-Request-Id`` set; the response gains the rate-limit
                headers and ``X-Request-Id`` as the proxy's does.
    websocket   judged at the handshake (method GET). A refusal is the same HTTP response when
                the server offers ``websocket.http.response``, else a close (1008) before accept,
                which servers answer with 403. Admitted: the app sees ``state["auth"]`` as above;
                once the token is no longer usable the connection is closed (1008) within the
                revocation bound (``gateway.ws_watch``).
    lifespan    startup opens and starts the services before the app's own startup runs;
                shutdown closes them (usage flushed) after the app's shutdown, before the server
                is told it is complete. An app that does not speak lifespan is stood in for.

A ``Refusal`` raised by the app before it answers (``gateway.fastapi.requires_scopes``) is
rendered here the same way, and counted as the gateway counts its own 403.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from gateway import responses
from gateway.config import Settings, load_settings
from gateway.errors import ConfigError, Refusal
from gateway.pipeline import Decision
from gateway.responses import rate_limit_headers
from gateway.routes import Router
from gateway.services import Services
from gateway.ws_watch import SOCKET_STATE, OpenSocket, TokenWatch

log = logging.getLogger("authgate.middleware")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Auth:
    """Who an admitted request is: ``request.state.auth`` in Starlette and FastAPI."""
    subject: str
    token_id: str
    token_name: str
    scopes: tuple[str, ...]


def request_id_of(scope: Scope) -> bytes:
    """The client's X-Request-Id (1-200 bytes) or a fresh one: ``gateway.proxy.request_id_of``,
    repeated so that ``import gateway`` does not load the proxy's HTTP client (aiohttp)."""
    for name, value in scope["headers"]:
        if name == b"x-request-id" and 0 < len(value) <= 200:
            return bytes(value)
    return os.urandom(16).hex().encode()


def _normalised(name: str) -> bytes:
    """As the proxy compares header names: ``X_User`` and ``x-user`` are one header."""
    return name.lower().replace("_", "-").encode()


_STOPPED = Refusal(503, "unavailable", "the service is shutting down", retry_after=5)


class AuthGateMiddleware:
    """Pure ASGI middleware: judge every HTTP (and WebSocket) request with the gateway's
    pipeline before the wrapped app sees it. Options are validated here, once: a bad config
    raises ``ConfigError`` naming the key."""

    def __init__(self, app: ASGIApp, config: str | None = None, settings: Settings | None = None,
                 *, env: MutableMapping[str, str] | None = None) -> None:
        if config is not None and settings is not None:
            raise ConfigError(["config: give config= (a file) or settings=, not both"])
        self.app = app
        self.settings = settings if settings is not None else load_settings(config, env)
        Router(self.settings)  # route problems surface now, not at the first request
        self.services: Services | None = None
        self._stopped = False  # the lifespan shut down: never reopen for a straggler
        self._opening: asyncio.Lock | None = None
        self._watch: TokenWatch | None = None  # open WebSockets, made on the first one
        ih = self.settings.identity_headers
        api_key = self.settings.api_key_header
        # What a client may not hand the app: its credential and anything that looks like an
        # identity the gateway asserts (the app reads state["auth"], never these).
        self._strip = frozenset(
            {b"authorization", b"x-request-id"}
            | {_normalised(h) for h in (ih.subject, ih.token_id, ih.token_name, ih.scopes)}
            | ({_normalised(api_key)} if api_key else set()))

    # --- lifecycle --------------------------------------------------------------------------

    async def _open(self) -> Services:
        """Open and start the services once (at startup; on first use without lifespan)."""
        if self.services is not None:
            return self.services
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self.services is None:
                services = await Services.open(self.settings)
                services.start()
                self.services = services
        return self.services

    async def _close(self) -> None:
        self._stopped = True
        watch, self._watch = self._watch, None
        if watch is not None:
            await watch.close()
        services, self.services = self.services, None
        if services is not None:
            await services.close()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        first = await receive()
        if first["type"] == "lifespan.startup":
            try:
                await self._open()
            except Exception as e:  # the store is unreachable, a bad URL...: the server exits
                log.exception("authgate: startup failed")
                await send({"type": "lifespan.startup.failed", "message": f"authgate: {e}"})
                return
        pending: Message | None = first
        answered = False  # the app answered startup: it speaks lifespan

        async def app_receive() -> Message:
            nonlocal pending
            if pending is not None:
                message, pending = pending, None
                return message
            return await receive()

        async def app_send(message: Message) -> None:
            nonlocal answered
            kind = message["type"]
            if kind.startswith("lifespan.startup."):
                answered = True
                if kind == "lifespan.startup.failed":
                    await self._close()
            elif kind.startswith("lifespan.shutdown."):
                await self._close()  # usage flushed before the server hears "complete"
            await send(message)

        try:
            await self.app(scope, app_receive, app_send)
        except Exception as e:
            if answered:
                await self._close()
                raise
            log.info("the app does not speak lifespan (%r): authgate answers it alone", e)
        except BaseException:  # cancelled: the server is going away
            await self._close()
            raise
        if answered:
            await self._close()
            return
        # Stand in for an app without lifespan support: startup done, wait for shutdown.
        await send({"type": "lifespan.startup.complete"})
        while (await app_receive())["type"] != "lifespan.shutdown":
            pass
        await self._close()
        await send({"type": "lifespan.shutdown.complete"})

    # --- requests ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" or kind == "websocket":
            await self._request(scope, receive, send, kind == "http")
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _request(self, scope: Scope, receive: Receive, send: Send, http: bool) -> None:
        services = self.services
        if services is None and self._stopped:
            await self._refuse(scope, receive, send, _STOPPED, request_id_of(scope), http)
            return
        if services is None:  # a server without lifespan: open on first use
            log.warning("authgate: no lifespan startup seen; opening on first request "
                        "(usage not flushed at shutdown)")
            services = await self._open()
        pipeline = services.pipeline
        request_id = request_id_of(scope)
        client = scope.get("client")
        ip: str | None = None
        try:
            raw_path = scope.get("raw_path")
            path = raw_path.decode("latin-1") if raw_path else scope["path"]
            ip = pipeline.client_address(client[0] if client else None, scope["headers"])
            decision = await pipeline.decide(scope["method"] if http else "GET", path,
                                             scope["headers"], ip)
        except Refusal as refusal:
            await self._refuse(scope, receive, send, refusal, request_id, http)
            return
        inner = self._inner_scope(scope, decision, request_id)
        if not http:
            await self._websocket(services, inner, receive, send, decision, ip)
            return
        extra = rate_limit_headers(decision.limit) if decision.limit else []
        extra.append((b"x-request-id", request_id))
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        try:
            await self.app(inner, receive, send_with_headers)
        except Refusal as refusal:  # gateway.fastapi.requires_scopes, before any answer
            if started:
                raise
            auth = inner["state"]["auth"]
            if refusal.status == 403:
                services.usage.event("access_denied", "insufficient_scope", ip,
                                     auth.token_id if auth else None,
                                     auth.subject if auth else None)
            status, headers, body = responses.refusal(refusal)
            await responses.send_json(send, status, body,
                                      [*headers, (b"x-request-id", request_id)])

    async def _websocket(self, services: Services, scope: Scope, receive: Receive, send: Send,
                         decision: Decision, ip: str | None) -> None:
        """An admitted WebSocket: the app runs it; once its token is no longer usable (revoked,
        expired, suspended, scope removed: ``gateway.ws_watch``) the connection is closed with
        1008 within the revocation bound. The app then receives ``websocket.disconnect`` (the
        server's answer to our close) and what it still sends is dropped. A ``Refusal`` the app
        raises before answering the handshake (``requires_scopes``) is the HTTP refusal."""
        record = decision.record
        answered = closed = False

        async def guarded_send(message: Message) -> None:
            nonlocal answered
            if closed:
                return
            answered = True
            await send(message)

        async def close_when_ended(conn: OpenSocket) -> None:
            nonlocal closed
            code, reason = await conn.ended
            closed = True
            with contextlib.suppress(OSError, RuntimeError):  # the client is gone already
                await send({"type": "websocket.close", "code": code, "reason": reason})

        conn = closer = None
        if record is not None:  # an auth: none route has no token to watch
            if self._watch is None:
                self._watch = TokenWatch(services.pipeline)
            raw_path = scope.get("raw_path")  # judged again against the router after a reload
            conn = OpenSocket(record.token_hash, decision.route.scopes,
                              asyncio.get_running_loop().create_future(),
                              path=raw_path.decode("latin-1") if raw_path else scope["path"])
            self._watch.add(conn)
            scope["state"][SOCKET_STATE] = conn  # requires_scopes adds the scopes it demands
            closer = asyncio.create_task(close_when_ended(conn))
        try:
            await self.app(scope, receive, guarded_send)
        except Refusal as refusal:
            if answered or closed:
                raise
            if refusal.status == 403:
                services.usage.event("access_denied", "insufficient_scope", ip,
                                     record.id if record else None,
                                     record.subject if record else None)
            status, headers, body = responses.refusal(refusal)
            request_id = dict(scope["headers"]).get(b"x-request-id", b"")
            await _deny_websocket(scope, send, status, body,
                                  [*headers, (b"x-request-id", request_id)])
        finally:
            if conn is not None and self._watch is not None:
                self._watch.discard(conn)
            if closer is not None:
                closer.cancel()

    def _inner_scope(self, scope: Scope, decision: Decision, request_id: bytes) -> Scope:
        """The scope the app sees: its own copy, with ``state["auth"]`` and clean headers."""
        strip = self._strip
        headers: Headers = [(n, v) for n, v in scope["headers"]
                            if not (n in strip or n.startswith(b"x-auth-")
                                    or (b"_" in n and n.replace(b"_", b"-") in strip))]
        headers.append((b"x-request-id", request_id))
        record = decision.record
        state = dict(scope.get("state") or ())
        state["auth"] = None if record is None else Auth(record.subject, record.id,
                                                         record.name, record.scopes)
        inner = dict(scope)
        inner["headers"] = headers
        inner["state"] = state
        return inner

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, refusal: Refusal,
                      request_id: bytes, http: bool) -> None:
        status, headers, body = responses.refusal(refusal)
        headers = [*headers, (b"x-request-id", request_id)]
        if http:
            await responses.send_json(send, status, body, headers)
            return
        await receive()  # websocket.connect
        await _deny_websocket(scope, send, status, body, headers)


async def _deny_websocket(scope: Scope, send: Send, status: int, body: bytes,
                          headers: Headers) -> None:
    """A refused handshake: the HTTP refusal when the server offers the denial response,
    else a close (1008) before accept, which servers answer with 403."""
    if "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), *headers]})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})
