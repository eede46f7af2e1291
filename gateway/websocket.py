"""WebSocket proxying (SPEC §6): judged at the upgrade, then frames relayed both ways.

    WebSocketRelay(pipeline, settings, metrics, assertions)   the proxy's handler of
                                                              ``websocket`` scopes
    BoundedWebSocketProtocol                                  uvicorn's websockets (sans-I/O)
                                                              protocol; a client that stops
                                                              reading is cut off
    gateway.ws_watch.TokenWatch                               open connections by token: closes
                                                              those of an unusable token (1008)

The upgrade request is judged by ``Pipeline.decide`` like any request (method GET): a refusal is
the same HTTP response (status, WWW-Authenticate, JSON body, rate-limit headers, X-Request-Id)
sent before any upgrade through the ASGI WebSocket Denial Response extension, and counts one
outcome; an admitted upgrade counts one request in usage. The upstream connection is opened by
aiohttp (whatever the ``forwarder`` setting: httpx has no WebSocket client) with the proxy's
header rules (``proxy.HeaderRules``: credential and client ``X-Auth-*`` stripped, identity,
``X-Forwarded-*`` and ``X-Request-Id`` added) and the client's subprotocols offered; the client
is accepted with the upstream's choice. An upstream that refuses the upgrade (any status but
101), is down, or answers nothing within ``upstream_timeout_s``: 502 / 502 / 504, before the
client is upgraded.

Then text and binary messages are relayed both ways until either side closes; the close code and
reason are passed on (codes that cannot be sent in a close frame: 1005 becomes 1000; a peer lost
without a close frame (1006) becomes 1001 towards the upstream and 1011 towards the client).
Ping/pong: ASGI does not expose ping frames, so each hop answers its own pings and keeps itself
alive (uvicorn pings the client every 20 s, aiohttp pings the upstream every ``HEARTBEAT_S``; a
peer that does not answer in time is closed, and so is the other side).

Bounds per connection: messages of at most ``MAX_MESSAGE_BYTES`` each way (a larger one closes
the connection with 1009); uvicorn reads no further from the client until its last message was
taken, aiohttp pauses reading the upstream past 64 KiB buffered, and both writes wait for their
transport to drain, so at most a few messages are held. A side that stops reading for
``ws_watch.WRITE_STALL_S`` while we write to it is cut off (client: its TCP connection is aborted;
upstream: the connection is closed) and the other side closed; other connections are unaffected.

Access log (``pipeline.access_log``, when on): one line per upgrade, ``AccessLog.decided``: a
refusal (or 502/504) when it is answered; an admitted upgrade when its connection ends (status
101, outcome ``ok``, the message bytes relayed each way, total_ms its lifetime).

Revocation: each open connection is registered with a ``gateway.ws_watch.TokenWatch``, which
re-reads its token through the pipeline's cache every ``RECHECK_S`` and ends the connection (1008
both ways) once the token is no longer usable, within the revocation bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import aiohttp
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from yarl import URL

from gateway import responses, ws_watch
from gateway.access_log import route_of
from gateway.config import Settings
from gateway.errors import Outcome, Refusal, UpstreamError
from gateway.metrics import Metrics
from gateway.pipeline import Decision, Pipeline
from gateway.proxy import (
    POOL_WAIT_S,
    UPSTREAM_FAILURES,
    HeaderRules,
    request_id_of,
    request_target,
    upstream_failure,
)
from gateway.responses import rate_limit_headers
from gateway.ws_watch import POLICY, OpenSocket, TokenWatch

if TYPE_CHECKING:
    from gateway.assertion import Assertions

__all__ = ["MAX_MESSAGE_BYTES", "BoundedWebSocketProtocol", "WebSocketRelay"]

log = logging.getLogger("authgate.websocket")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_MESSAGE_BYTES = 1024 * 1024  # per message, each way (uvicorn's ws_max_size, aiohttp's)
HEARTBEAT_S = 20.0  # aiohttp pings the upstream this often (uvicorn's default for the client)
CLOSE_WAIT_S = 5.0  # longest wait for the upstream's reply to our close frame

# What the client's handshake says about its own hop; aiohttp writes the upstream's.
_HANDSHAKE = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-protocol",
                        "sec-websocket-extensions", "sec-websocket-accept"})


def _sendable(code: int | None, lost: int) -> int:
    """A close code that may go in a close frame: 1005 (none given) -> 1000, 1006 and other
    reserved ones -> ``lost``."""
    if code is None or code == 1005:
        return 1000
    if 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    return lost


def _reason(text: str | bytes | None) -> str:
    """A close reason that fits a close frame (123 bytes of UTF-8)."""
    if not text:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return text.encode()[:123].decode("utf-8", "ignore")


class BoundedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets (sans-I/O) protocol, which offers ``websocket.http.response`` (the
    refusal before the upgrade) and stops reading until the app took the last message. Added:
    a client whose socket takes nothing for ``WRITE_STALL_S`` while we have data for it is
    aborted (closing would wait for the buffer to drain, i.e. forever); the app's pending send
    then fails and its relay ends."""

    _stall: asyncio.TimerHandle | None = None

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall is None:
            self._stall = self.loop.call_later(ws_watch.WRITE_STALL_S, self._abort_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            # The denial response is complete: uvicorn would otherwise log "returned without
            # completing handshake" (and try a 500) when the app returns.
            self.handshake_complete = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self.handshake_complete and not self.close_sent and self.conn.close_rcvd is None:
            # Lost without a close frame: uvicorn says 1005 (as for a close frame without a
            # code); the app hears 1006 first, so the upstream is told "going away".
            self.queue.put_nowait({"type": "websocket.disconnect", "code": 1006})
        super().connection_lost(exc)

    def _abort_stalled(self) -> None:
        self._stall = None
        if not self.transport.is_closing() or self.transport.get_write_buffer_size():
            log.info("websocket client took nothing for %g s: connection aborted",
                     ws_watch.WRITE_STALL_S)
            self.transport.abort()


class WebSocketRelay:
    """The proxy listener's handler of ``websocket`` scopes (see the module docstring)."""

    def __init__(self, pipeline: Pipeline, settings: Settings, metrics: Metrics,
                 assertions: Assertions | None = None) -> None:
        self._pipeline = pipeline
        self._rules = HeaderRules(settings, assertions)
        self._timeout = settings.upstream_timeout_s
        self._metrics = metrics
        self.watch = TokenWatch(pipeline)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            # no pool bound: each open connection holds one upstream connection (not pooled)
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=60),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, connect=min(POOL_WAIT_S, self._timeout),
                                          sock_read=self._timeout))

    async def close(self) -> None:
        await self.watch.close()
        if self._session is not None:
            await self._session.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        wall = time.time()
        request_id = request_id_of(scope)
        await receive()  # websocket.connect
        client = scope.get("client")
        raw_path = scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else scope["path"]
        ip: str | None = None
        try:
            ip = self._pipeline.client_address(client[0] if client else None, scope["headers"])
            decision = await self._pipeline.decide("GET", path, scope["headers"], ip)
        except Refusal as refusal:
            status, headers, body = responses.refusal(refusal)
            await _deny(scope, send, status, body, headers, request_id)
            self._observe(refusal.reason, started)
            access = self._pipeline.access_log
            if access is not None:  # refused before any upgrade: which route it was judged under
                access.decided(wall, started, request_id, ip, "GET", path, status,
                               refusal.reason, route_of(self._pipeline.router, "GET", path), None,
                               refused=refusal.record)
            return
        extra = rate_limit_headers(decision.limit) if decision.limit else []
        extra.append((b"x-request-id", request_id))
        try:
            upstream = await self._connect(scope, decision, request_id)
        except UpstreamError as e:
            status, body = responses.upstream_error(e)
            await _deny(scope, send, status, body, extra, request_id=None)
            self._observe(e.reason, started)
            access = self._pipeline.access_log
            if access is not None:
                access.decided(wall, started, request_id, ip, "GET", path, status, e.reason,
                               decision.route.pattern, decision)
            return
        access = self._pipeline.access_log  # the log on at the upgrade is the one written to
        conn = OpenSocket(decision.record.token_hash if decision.record else "",
                          decision.route.scopes, asyncio.get_running_loop().create_future(),
                          path=path, counted=access is not None)
        try:
            await send({"type": "websocket.accept", "subprotocol": upstream.protocol,
                        "headers": extra})
            self._observe("ok", started)
            await self._relay(receive, send, upstream, conn)
        finally:
            if not upstream.closed:  # cancelled (shutdown), or an error: never leave it open
                await _close_upstream(upstream, 1001, "")
            if access is not None:  # one line when the socket ends: 101, its message bytes
                access.decided(wall, started, request_id, ip, "GET", path, 101, "ok",
                               decision.route.pattern, decision, conn.bytes_in, conn.bytes_out)

    async def _connect(self, scope: Scope, decision: Decision,
                       request_id: bytes) -> aiohttp.ClientWebSocketResponse:
        target = request_target(scope)
        assert self._session is not None
        headers = [(n, v) for n, v in self._rules.request(scope, decision, request_id)
                   if n.lower() not in _HANDSHAKE]
        started = time.perf_counter()
        try:
            upstream = await self._session.ws_connect(
                URL(decision.route.upstream + target, encoded=True),
                protocols=scope.get("subprotocols") or (), headers=headers,
                max_msg_size=MAX_MESSAGE_BYTES, autoclose=False, autoping=True,
                heartbeat=HEARTBEAT_S, compress=0,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_WAIT_S))
        except aiohttp.WSServerHandshakeError as e:
            raise UpstreamError(502, "upstream_error", "the upstream refused the WebSocket "
                                f"upgrade (HTTP {e.status})") from None
        except UPSTREAM_FAILURES as e:
            raise upstream_failure(e) from None
        self._metrics.upstream_seconds.observe(time.perf_counter() - started)
        return upstream

    async def _relay(self, receive: Receive, send: Send,
                     upstream: aiohttp.ClientWebSocketResponse, conn: OpenSocket) -> None:
        self.watch.add(conn)  # on an auth: none route, for stalled upstream writes only
        inbound = asyncio.ensure_future(_client_to_upstream(receive, upstream, conn))
        outbound = asyncio.ensure_future(_upstream_to_client(upstream, send, conn))
        try:
            await asyncio.wait({inbound, outbound, conn.ended},
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.watch.discard(conn)
            for task in (inbound, outbound):
                task.cancel()
            await asyncio.wait({inbound, outbound})
        if conn.ended.done():  # the watch ended it: revoked, or a stalled upstream
            code, reason = conn.ended.result()
            if reason == ws_watch.STALLED:
                _abort_upstream(upstream)
            await _close_client(send, code, reason)
            await _close_upstream(upstream, code, reason)
        elif inbound.done() and not inbound.cancelled() and inbound.exception() is None:
            code, reason = inbound.result()  # the client closed (or vanished)
            await _close_upstream(upstream, _sendable(code, 1001), reason)
        elif outbound.done() and not outbound.cancelled() and outbound.exception() is None:
            code, reason = outbound.result()  # the upstream closed (or was lost)
            await _close_client(send, _sendable(code, 1011), reason)
            await _close_upstream(upstream, _sendable(code, 1011), reason)
        else:  # a write failed: the client is gone (ClientDisconnected) or the upstream errored
            await _close_client(send, 1011, "")
            await _close_upstream(upstream, 1001, "")

    def _observe(self, outcome: Outcome, started: float) -> None:
        self._metrics.outcome[outcome].inc()
        self._metrics.request_seconds.observe(time.perf_counter() - started)


async def _client_to_upstream(receive: Receive, upstream: aiohttp.ClientWebSocketResponse,
                              conn: OpenSocket) -> tuple[int, str]:
    """Relay the client's messages; returns its close code and reason."""
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.receive":
            conn.upstream_since = time.monotonic()
            text = message.get("text")
            if text is not None:
                if conn.counted:  # the access log is on (encoding text costs a copy)
                    conn.bytes_in += len(text.encode())
                await upstream.send_str(text)
            else:
                conn.bytes_in += len(message["bytes"])
                await upstream.send_bytes(message["bytes"])
            conn.upstream_since = 0.0
        elif kind == "websocket.disconnect":
            return message.get("code", 1005), _reason(message.get("reason"))


async def _upstream_to_client(upstream: aiohttp.ClientWebSocketResponse,
                              send: Send, conn: OpenSocket) -> tuple[int, str]:
    """Relay the upstream's messages; returns its close code and reason (1006: lost)."""
    while True:
        msg = await upstream.receive()
        if msg.type is aiohttp.WSMsgType.TEXT:
            if conn.counted:
                conn.bytes_out += len(msg.data.encode())
            await send({"type": "websocket.send", "text": msg.data})
        elif msg.type is aiohttp.WSMsgType.BINARY:
            conn.bytes_out += len(msg.data)
            await send({"type": "websocket.send", "bytes": msg.data})
        elif msg.type is aiohttp.WSMsgType.CLOSE:
            return msg.data, _reason(msg.extra)
        elif msg.type is aiohttp.WSMsgType.ERROR:  # e.g. too big (1009), or a protocol error
            code = getattr(msg.data, "code", 1011)
            return code, "upstream error"
        else:  # CLOSED / CLOSING: lost without a close frame
            return upstream.close_code or 1006, ""


async def _close_client(send: Send, code: int, reason: str) -> None:
    # gone already: uvicorn's ClientDisconnected (an OSError), or a close already sent
    with contextlib.suppress(OSError, RuntimeError):
        await send({"type": "websocket.close", "code": code, "reason": reason})


def _transport_of(upstream: aiohttp.ClientWebSocketResponse) -> asyncio.BaseTransport | None:
    # aiohttp has no public abort: its close() closes the transport gracefully, which never
    # ends while an upstream that stopped reading leaves our write buffer full.
    connection = upstream._response.connection
    return connection.transport if connection is not None else None


def _abort_upstream(upstream: aiohttp.ClientWebSocketResponse) -> None:
    transport = _transport_of(upstream)
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()


async def _close_upstream(upstream: aiohttp.ClientWebSocketResponse, code: int,
                          reason: str) -> None:
    """Close frame, then the reply up to ``CLOSE_WAIT_S``; an upstream that takes neither is
    cut off (its TCP connection aborted: a graceful close would wait on it forever)."""
    transport = _transport_of(upstream)
    try:
        async with asyncio.timeout(CLOSE_WAIT_S):
            await upstream.close(code=code, message=reason.encode())
    except TimeoutError:
        if isinstance(transport, asyncio.WriteTransport):
            transport.abort()
    except (aiohttp.ClientError, OSError):
        pass


async def _deny(scope: Scope, send: Send, status: int, body: bytes,
                headers: list[tuple[bytes, bytes]], request_id: bytes | None) -> None:
    """The HTTP answer to a refused upgrade (ASGI WebSocket Denial Response); a server
    without it can only close before accepting (which servers answer 403)."""
    if request_id is not None:
        headers = [*headers, (b"x-request-id", request_id)]
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": POLICY})
        return
    await send({"type": "websocket.http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *headers]})
    await send({"type": "websocket.http.response.body", "body": body})
