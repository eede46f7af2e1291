"""The proxy listener: ``ProxyApp`` (judge, then forward) over a ``Forwarder``.

    ProxyApp(pipeline, forwarder, metrics)   the pure-ASGI app of the proxy listener
    Forwarder                                start / close / forward: the forwarding client
    open_forwarder(settings, upstreams, m)   the one the ``forwarder`` setting names (FORWARDERS)
    HeaderRules, request_id_of, ...          what every forwarder shares (SPEC §6)

Forwarders: ``aiohttp`` (the default) here, ``httpx`` (HTTP/2 to TLS upstreams that offer it) in
``gateway.forward_httpx``, imported only when chosen. aiohttp is the default by measurement
(README, "Forwarding client"): over HTTP/1.1 one forward costs ~140 us with aiohttp and ~375 us
with httpx's engine (pure-Python h11 and anyio); the gateway serves 4-7x fewer requests a second
with httpx. Each keeps one pool per upstream: at most ``POOL_SIZE`` connections, and a request
waits at most ``POOL_WAIT_S`` for one (-> 504). A client that goes away ends its exchange at once:
the upstream connection is closed, never read to the end nor pooled half-read. A request body
that makes no progress for ``BODY_IDLE_S`` ends its exchange the same way, answered 408 (and the
connection closed) when the upstream has not answered yet.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from random import getrandbits
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from yarl import URL

from gateway import responses
from gateway.access_log import Entry, route_of
from gateway.config import Settings
from gateway.errors import Outcome, Refusal, UpstreamError
from gateway.metrics import Metrics
from gateway.pipeline import Decision, Pipeline, identity_headers
from gateway.responses import rate_limit_headers

if TYPE_CHECKING:
    from gateway.assertion import Assertions
    from gateway.store import TokenRecord

__all__ = ["FORWARDERS", "ON_DISCONNECT", "UPSTREAM_FAILURES", "AiohttpForwarder", "Forwarder",
           "HeaderRules", "ProxyApp", "UpstreamError", "open_forwarder", "request_id_of",
           "upstream_failure"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
_JWKS_PATH = "/.well-known/jwks.json"  # gateway.assertion.JWKS_PATH (not imported: PyNaCl)

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
    b"trailer", b"trailers", b"transfer-encoding", b"upgrade", b"proxy-connection",
})
CHUNK = 64 * 1024
POOL_SIZE = 1024  # connections per upstream
POOL_WAIT_S = 5.0  # longest wait for a pooled connection, TCP connect included (-> 504)
# Longest silence within a request body being relayed (nginx's client_body_timeout): past it the
# exchange ends (408 and the connection closed) and its upstream connection is closed, so stalled
# uploads cannot hold the pool. A constant, as the head bound (server.HEAD_TIMEOUT_S).
BODY_IDLE_S = 60.0
# Scope key of a listener's disconnect hook: hook(callback) arms it, hook(None) disarms it.
ON_DISCONNECT = "authgate.on_disconnect"
# aiohttp adds these when the request lacks them; SPEC §6: forward the client's headers only.
_NOT_OURS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_NO_BODY = frozenset({204, 304})  # statuses whose answers never have a body
# What HeaderRules.request does with a client header that is not forwarded as it came.
_DROP, _HOST, _FORWARDED_FOR, _REQUEST_ID, _CONNECTION = range(5)
MAX_VERDICTS = 256  # header names whose verdict is remembered (a client chooses names freely)


def _connection_named(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    named: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            named.update(v.strip().lower() for v in value.split(b","))
    return named


def _normalised(name: bytes) -> bytes:
    """A header name as servers that treat ``_`` as ``-`` (CGI, many frameworks) see it."""
    return name.lower().replace(b"_", b"-")


class HeaderRules:
    """What goes to the upstream and what comes back (SPEC §6); with ``assertions``, each
    request with a token also carries its signed identity assertion (SPEC §11)."""

    def __init__(self, settings: Settings, assertions: Assertions | None = None) -> None:
        ih = self._names = settings.identity_headers
        names: tuple[str, ...] = (ih.subject, ih.token_id, ih.token_name, ih.scopes)
        ia = settings.identity_assertion
        self._assertions = assertions if ia is not None else None
        self._assertion_header = ia.header if ia is not None else ""
        if ia is not None:  # a client's copy, in any spelling, never reaches the upstream
            names += (ia.header,)
        # Compared normalised on both sides: a configured ``X_User`` and a client's ``x-user``
        # (or ``X_USER``) name the same header to the upstream.
        self._identity = frozenset(_normalised(h.encode()) for h in names)
        api_key = settings.api_key_header
        self._credential = {b"authorization"} | ({_normalised(api_key.encode())} if api_key
                                                  else set())
        self._verdicts: dict[bytes, str | int] = {}  # header name -> _verdict(name)

    def _drop(self, name: bytes) -> bool:
        n = _normalised(name)
        return (name in HOP_BY_HOP or n in self._credential or n.startswith(b"x-auth-")
                or n in self._identity or name == b"host")

    def _verdict(self, name: bytes) -> str | int:
        """What ``request`` does with a header of this name: forward it (its name as str), or
        one of the ``_DROP``/``_HOST``/``_FORWARDED_FOR``/``_REQUEST_ID``/``_CONNECTION``
        codes. Remembered per name (a client sends the same few names again and again), up
        to ``MAX_VERDICTS`` names: past that, worked out each time and not kept."""
        verdict: str | int
        if name == b"host":
            verdict = _HOST
        elif name == b"connection":
            verdict = _CONNECTION
        elif self._drop(name):
            verdict = _DROP
        elif name == b"x-forwarded-for":
            verdict = _FORWARDED_FOR
        elif name == b"x-request-id":
            verdict = _REQUEST_ID
        else:
            verdict = name.decode("latin-1")
        if len(self._verdicts) < MAX_VERDICTS:
            self._verdicts[bytes(name)] = verdict
        return verdict

    def request(self, scope: Scope, decision: Decision, request_id: bytes) -> list[tuple[str, str]]:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        verdicts = self._verdicts
        out: list[tuple[str, str]] = []
        kept: list[bytes] = []  # the names forwarded, in step with ``out``
        forwarded_for = host = None
        connection = False
        for name, value in headers:
            verdict = verdicts.get(name)
            if verdict is None:
                verdict = self._verdict(name)
            if verdict.__class__ is str:  # the common case: forwarded as it came
                out.append((verdict, value.decode("latin-1")))
                kept.append(name)
            elif verdict == _HOST:
                host = value
            elif verdict == _FORWARDED_FOR:
                forwarded_for = value
            elif verdict == _CONNECTION:
                connection = True
        if connection:  # rare: the headers a Connection header names are hop-by-hop too
            named = _connection_named(headers)
            if named:
                out = [h for h, name in zip(out, kept, strict=True) if name not in named]
                if b"x-forwarded-for" in named:
                    forwarded_for = None
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
            if self._assertions is not None:
                out.append((self._assertion_header,
                            self._assertions.sign(decision.record, request_id)))
        return out

    @staticmethod
    def response(raw: Iterable[tuple[bytes, bytes]],
                 status: int = 200) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        connection = False
        for name, value in raw:
            name = name.lower()  # clients keep the upstream's case
            if name in HOP_BY_HOP:
                connection = connection or name == b"connection"
            else:
                out.append((name, value))
        if not connection and status not in _NO_BODY:  # the common case: one pass
            return out
        named = _connection_named([(n.lower(), v) for n, v in raw]) if connection else set()
        if status in _NO_BODY:
            # RFC 9110 lets a 304 carry Content-Length (the length it would have had), but
            # uvicorn then waits for that many body bytes and closes the connection. HEAD
            # answers keep theirs: uvicorn sends no body for HEAD.
            named.add(b"content-length")
        return [(n, v) for n, v in out if n not in named]


def request_id_of(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == b"x-request-id" and 0 < len(value) <= 200:
            return bytes(value)
    # 128 random bits: as unique as uuid4. From the (fork-safe) Mersenne Twister, seeded from
    # the OS at start: a request id must be unique, not secret, and os.urandom is a syscall.
    return b"%032x" % getrandbits(128)


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-length":
            return value.strip() != b"0"
        if name == b"transfer-encoding":
            return True
    return False


def body_stalled() -> UpstreamError:
    """The error of an exchange ended by a stalled request body (``BODY_IDLE_S``)."""
    return UpstreamError(408, "invalid_request",
                         f"the request body stalled (no data for {BODY_IDLE_S:g} s)")


def _target(scope: Scope) -> str | None:
    """The upstream request target: the path as sent plus the query; None unless the path is
    origin-form (``/...``), so ``*`` or anything else can never change the upstream's host."""
    path: bytes = scope.get("raw_path") or scope["path"].encode()
    if not path.startswith(b"/"):
        return None
    target = path.decode("latin-1")
    if scope.get("query_string"):
        target += "?" + scope["query_string"].decode("latin-1")
    return target


def request_target(scope: Scope) -> str:
    """``_target``, or UpstreamError 400 for a target that is not a path: every forwarder's
    first step (the one check, written once)."""
    target = _target(scope)
    if target is None:
        raise UpstreamError(400, "bad_request", "the request target must be a path ('/...')")
    return target


# What aiohttp raises when the upstream cannot be reached or does not answer in time.
UPSTREAM_FAILURES = (TimeoutError, aiohttp.ClientError, OSError)


def upstream_failure(e: BaseException) -> UpstreamError:
    """The answer to an aiohttp failure (one of ``UPSTREAM_FAILURES``) to reach the upstream:
    504 when no pooled or new connection came in time, or no answer did; else 502."""
    if isinstance(e, aiohttp.ConnectionTimeoutError):  # a TimeoutError too: tested first
        return UpstreamError(504, "upstream_timeout",
                             "no connection to the upstream could be had in time")
    if isinstance(e, TimeoutError):
        return UpstreamError(504, "upstream_timeout", "the upstream did not answer in time")
    return UpstreamError(502, "upstream_error",
                         f"the upstream is unreachable ({type(e).__name__})")


class _ClientWatch:
    """Notices the client going away, to end its exchange at once (uvicorn drops response
    sends after a disconnect: ``send`` never tells). The gateway's own listener offers a hook
    in the scope (``ON_DISCONNECT``, called when the connection is lost: nothing to run per
    request); under another ASGI server a small task waits on ``receive()`` for
    ``http.disconnect`` once the request body is consumed. Either cancels the forwarding task."""

    __slots__ = ("_hook", "_receive", "_stopped", "_task", "_watcher", "gone", "stalled")

    def __init__(self, scope: Scope, receive: Receive, task: asyncio.Task[Any]) -> None:
        self._hook: Callable[[Callable[[], None] | None], None] | None = scope.get(ON_DISCONNECT)
        self._receive = receive
        self._task = task
        self._watcher: asyncio.Task[None] | None = None
        self._stopped = False
        self.gone = False
        self.stalled = False  # the request body made no progress for BODY_IDLE_S
        if self._hook is not None:
            self._hook(self._left)

    def start(self) -> None:
        """The request body is consumed (or there is none): watch ``receive()`` if need be."""
        if self._hook is None and not self._stopped:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        self._stopped = True
        if self._hook is not None:
            self._hook(None)
        if self._watcher is not None:
            self._watcher.cancel()

    def _left(self) -> None:
        if not (self._stopped or self.gone):  # after stop() the task is past forwarding
            self.gone = True
            self._task.cancel()

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._left()

    async def body(self) -> AsyncIterator[bytes]:
        """The request body as it arrives; then starts watching."""
        while True:
            try:
                async with asyncio.timeout(BODY_IDLE_S):
                    message = await self._receive()
            except TimeoutError:
                # The forwarder sees the upload fail (its upstream connection is closed, as
                # when the client leaves) and answers 408 on seeing ``stalled``.
                self.stalled = True
                raise ConnectionResetError("request body stalled") from None
            if message["type"] == "http.disconnect":
                self._left()
                # Raise, not return: a return would end the upload as if it were complete.
                raise ConnectionResetError("client disconnected")
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                self.start()
                return


class AiohttpForwarder:
    def __init__(self, settings: Settings, upstreams: set[str], metrics: Metrics,
                 assertions: Assertions | None = None) -> None:
        self._rules = HeaderRules(settings, assertions)
        self._timeout = settings.upstream_timeout_s
        self._upstreams = upstreams
        self._metrics = metrics
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    async def add_upstreams(self, upstreams: set[str]) -> None:
        """Pools for upstreams a reload brought (existing pools stay as they are)."""
        self._upstreams = self._upstreams | upstreams
        await self.start()

    async def start(self) -> None:
        for upstream in self._upstreams - self._sessions.keys():
            connector = aiohttp.TCPConnector(limit=POOL_SIZE, ttl_dns_cache=60)
            self._sessions[upstream] = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, skip_auto_headers=_NOT_OURS,
                # connect bounds the wait for a pooled connection plus the TCP connect; sock_read
                # the wait for the response headers (-> 504) and any stall in the body after.
                timeout=aiohttp.ClientTimeout(total=None,
                                              connect=min(POOL_WAIT_S, self._timeout),
                                              sock_read=self._timeout))

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self._sessions.values()))

    async def forward(self, scope: Scope, receive: Receive, send: Send, decision: Decision,
                      extra_headers: list[tuple[bytes, bytes]], request_id: bytes) -> None:
        """Send the request upstream and stream the answer back; raises UpstreamError before
        anything was sent to the client. Returns quietly when the client goes away.

        One coroutine for the whole exchange (no helper awaited in between): every resumption
        of the request's task passes down each frame of the chain, several times a request."""
        target = request_target(scope)
        upstream = decision.route.upstream
        url = URL(upstream + target, encoded=True)
        headers = self._rules.request(scope, decision, request_id)
        task = asyncio.current_task()
        assert task is not None
        watch = _ClientWatch(scope, receive, task)
        try:
            body = watch.body() if _has_body(scope["headers"]) else None
            if body is None:
                watch.start()
            started = time.perf_counter()
            try:
                response = await self._sessions[upstream].request(
                    scope["method"], url, headers=headers, data=body, allow_redirects=False,
                    compress=None)
            except UPSTREAM_FAILURES as e:
                raise upstream_failure(e) from None
            self._metrics.upstream_seconds.observe(time.perf_counter() - started)
            try:
                status = response.status
                await send({"type": "http.response.start", "status": status,
                            "headers": self._rules.response(response.raw_headers, status)
                            + extra_headers})
                length = response.content_length
                if length is not None and length <= CHUNK:  # small: one body message
                    await send({"type": "http.response.body", "body": await response.read()})
                else:
                    async for chunk in response.content.iter_chunked(CHUNK):
                        await send({"type": "http.response.body", "body": chunk,
                                    "more_body": True})
                    await send({"type": "http.response.body", "body": b""})
            except BaseException:
                # Cut short (an upstream error, or the client left): close the connection,
                # never pool it half-read. Headers are out: nothing else to answer.
                response.close()
                raise
            finally:
                response.release()
        except asyncio.CancelledError:
            # Ours (the client left) unless someone else cancelled too, e.g. a shutdown.
            if not watch.gone or task.uncancel() > 0:
                raise
        except UpstreamError:
            if watch.stalled:
                raise body_stalled() from None
            raise
        finally:
            watch.stop()


# --- the forwarder surface and the proxy app ----------------------------------------------


class Forwarder(Protocol):
    """A forwarding client: one pool per upstream, opened by ``start`` and closed by ``close``."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def add_upstreams(self, upstreams: set[str]) -> None:
        """Pools for upstreams a reload (SIGHUP) brought; existing ones stay."""

    async def forward(self, scope: Scope, receive: Receive, send: Send, decision: Decision,
                      extra_headers: list[tuple[bytes, bytes]], request_id: bytes) -> None:
        """Send the request upstream and stream the answer back, adding ``extra_headers`` to
        the response. Raises UpstreamError before anything was sent to the client; returns
        quietly when the client goes away."""


def _httpx(settings: Settings, upstreams: set[str], metrics: Metrics,
           assertions: Assertions | None = None) -> Forwarder:
    from gateway.forward_httpx import HttpxForwarder  # httpx + h2 imported only when chosen

    return HttpxForwarder(settings, upstreams, metrics, assertions)


# The ``forwarder`` setting's values (gateway.config.FORWARDERS names the same keys).
FORWARDERS: dict[str, Callable[[Settings, set[str], Metrics, Assertions | None], Forwarder]] = {
    "aiohttp": AiohttpForwarder,
    "httpx": _httpx,
}


def open_forwarder(settings: Settings, upstreams: set[str], metrics: Metrics,
                   assertions: Assertions | None = None) -> Forwarder:
    """The forwarder the ``forwarder`` setting names, not yet started; ``assertions`` signs
    the identity assertion of each request with a token (when configured)."""
    return FORWARDERS[settings.forwarder](settings, upstreams, metrics, assertions)


class ProxyApp:
    """The proxy listener's ASGI app: judge each request with the pipeline, then forward it.

    A refusal is answered as ``render_refusal`` says, an upstream failure as a JSON error
    (400/502/504), both with the request id; an admitted request goes to the forwarder with
    the rate-limit headers and the request id added to the response. The path judged is the
    raw one as sent (``raw_path``), the client address the pipeline's (``trusted_proxies``).
    Every request counts one outcome and its duration. WebSockets go to ``websockets``
    (``gateway.websocket.WebSocketRelay``: judged at the upgrade, then relayed); without it
    they are closed (1008).
    With ``jwks`` (identity assertion configured), ``/.well-known/jwks.json`` is answered here,
    with no credential, and not forwarded.
    """

    __slots__ = ("_forwarder", "_jwks", "_metrics", "_pipeline", "_websockets")

    def __init__(self, pipeline: Pipeline, forwarder: Forwarder, metrics: Metrics,
                 jwks: ASGIApp | None = None, websockets: ASGIApp | None = None) -> None:
        self._pipeline = pipeline
        self._forwarder = forwarder
        self._metrics = metrics
        self._jwks = jwks
        self._websockets = websockets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                if self._websockets is not None:
                    await self._websockets(scope, receive, send)
                else:
                    await send({"type": "websocket.close", "code": 1008})
            return
        if self._jwks is not None and scope["path"] == _JWKS_PATH:
            await self._jwks(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_of(scope)
        client = scope.get("client")
        entry = None
        if self._pipeline.access_log is not None:  # off: one attribute test
            entry = Entry(self._pipeline.access_log, scope, receive, send, started, request_id)
            receive, send = entry.receive, entry.send
        try:
            raw_path = scope.get("raw_path")
            path = raw_path.decode("latin-1") if raw_path else scope["path"]
            ip = self._pipeline.client_address(client[0] if client else None, scope["headers"])
            decision = await self._pipeline.decide(scope["method"], path, scope["headers"], ip)
        except Refusal as refusal:
            status, headers, body = responses.refusal(refusal)
            await responses.send_json(send, status, body, [*headers, (b"x-request-id", request_id)])
            self._observe(refusal.reason, started)
            if entry is not None:
                self._log(entry, refusal.reason, ip, refusal.record)
            return
        extra = rate_limit_headers(decision.limit) if decision.limit else []
        extra.append((b"x-request-id", request_id))
        if entry is not None:
            entry.forwarding(decision)
        try:
            await self._forwarder.forward(scope, receive, send, decision, extra, request_id)
        except UpstreamError as e:
            status, body = responses.upstream_error(e)
            headers = [(b"x-request-id", request_id)]
            if status == 408:  # the rest of the body may still come: not a keep-alive stream
                headers.append((b"connection", b"close"))
            await responses.send_json(send, status, body, headers)
            self._observe(e.reason, started)
            if entry is not None:
                self._log(entry, e.reason, ip)
            return
        self._observe("ok", started)
        if entry is not None:
            self._log(entry, "ok", ip)

    def _observe(self, outcome: Outcome, started: float) -> None:
        self._metrics.outcome[outcome].inc()
        self._metrics.request_seconds.observe(time.perf_counter() - started)

    def _log(self, entry: Entry, outcome: Outcome, ip: str | None,
             refused: TokenRecord | None = None) -> None:
        """The request's end, with the access log on: one line queued (gateway.access_log)."""
        if entry.decision is None:  # refused: which route it was judged under
            raw_path = entry.scope.get("raw_path")
            entry.route = route_of(self._pipeline.router, entry.scope["method"],
                                   raw_path.decode("latin-1") if raw_path
                                   else entry.scope["path"])
        entry.log.record(entry, outcome, ip, refused)
