"""Runs both listeners in one process under uvicorn (uvloop + httptools).

SIGTERM/SIGINT: both servers stop accepting, in-flight requests finish (bounded by
``GRACEFUL_S``), then usage is flushed and everything closed; exit status 0.

Both listeners bound every request head (request line + headers), on every route, before any
of it reaches an app: at most ``MAX_HEAD_BYTES`` (else 431, JSON, and the connection closed) and
complete within ``HEAD_TIMEOUT_S`` of its first byte, or of the connection's opening (else the
connection is closed). An idle keep-alive connection is uvicorn's ``timeout_keep_alive``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.app import Gateway
from gateway.config import Settings, split_hostport
from gateway.proxy import ON_DISCONNECT
from gateway.reload import Reloads
from gateway.responses import error_json
from gateway.websocket import MAX_MESSAGE_BYTES, BoundedWebSocketProtocol

GRACEFUL_S = 10
MAX_HEAD_BYTES = 32 * 1024  # request line + headers, as sent
HEAD_TIMEOUT_S = 10.0  # to receive a whole request head
LINGER_S = 2.0  # after a 431, bytes still arriving are read and dropped this long (see _refuse)
log = logging.getLogger("authgate")


def _head_too_large() -> bytes:
    body = error_json("invalid_request", "request headers too large")
    return (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))


_HEAD_TOO_LARGE = _head_too_large()
_BASE = HttpToolsProtocol


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with each request head bounded in size and time.

    httptools buffers a header it has not seen the end of, so the bytes are counted as they
    arrive (``data_received``), not as parsed headers. A head "is open" from the connection's
    opening, and from the end of each request to the end of the next head; its clock starts at
    its first byte (at the opening, for the first). Bytes after a completed message in the same
    read count towards nothing: the bound is exact for a head's first read and at most one read
    (<= 256 KiB) looser for a pipelined one. One timer per connection checks the clock every
    ``HEAD_TIMEOUT_S`` at most (not a timer per request: this is the hot path).

    Each request's scope also carries ``ON_DISCONNECT``: the forwarder arms it to hear of the
    connection's loss at once, without a task waiting on ``receive()``.
    """

    _head_open = True
    _head_left = 0
    _heads = 0  # heads completed on this connection
    _head_started: float | None = None
    _refused = False
    _timer: asyncio.TimerHandle | None = None
    _on_lost: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_left = MAX_HEAD_BYTES
        self._head_started = self.loop.time()
        self._timer = self.loop.call_later(HEAD_TIMEOUT_S, self._check_head)
        self._hook = self._arm  # bound once per connection, handed to each request

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        super().connection_lost(exc)
        on_lost, self._on_lost = self._on_lost, None
        if on_lost is not None:
            on_lost()

    def _arm(self, on_lost: Callable[[], None] | None) -> None:
        self._on_lost = on_lost

    # The base class's methods are called directly, not through super(): the hot path.
    def data_received(self, data: bytes) -> None:
        if not self._head_open:
            if not self._refused:  # lingering after a 431: input is dropped
                _BASE.data_received(self, data)
            return
        if self._head_started is None:
            self._head_started = self.loop.time()
        if len(data) <= self._head_left:
            self._head_left -= len(data)
            _BASE.data_received(self, data)
            return
        allowed, self._head_left, heads = self._head_left, 0, self._heads
        _BASE.data_received(self, data[:allowed])  # the head may end within what is allowed
        if self._heads == heads:
            self._refuse()
        elif not self.transport.is_closing():
            self.data_received(data[allowed:])  # a body, or the next head, counted afresh

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._heads += 1
        self.scope[ON_DISCONNECT] = self._hook  # type: ignore[literal-required]
        _BASE.on_headers_complete(self)

    def on_message_complete(self) -> None:
        _BASE.on_message_complete(self)
        self._head_open, self._head_left, self._head_started = True, MAX_HEAD_BYTES, None

    def _check_head(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return  # closed, or handed over (WebSocket)
        started = self._head_started if self._head_open else None
        now = self.loop.time()
        if started is not None and now - started >= HEAD_TIMEOUT_S:
            self.transport.close()
            return
        wait = HEAD_TIMEOUT_S if started is None else started + HEAD_TIMEOUT_S - now
        self._timer = self.loop.call_later(wait, self._check_head)

    def _refuse(self) -> None:
        """431 and close. Closing a socket with unread input sends a reset that can reach the
        client before the 431 does, so: answer, half-close, drop input for ``LINGER_S``."""
        self._refused, self._head_open = True, False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a response is under way: a 431 cannot go in front of it
            return
        self.transport.write(_HEAD_TOO_LARGE)
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._timer = self.loop.call_later(LINGER_S, self.transport.close)


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal capture: we stop both servers together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _config(app: Callable[..., Awaitable[None]], listen: str, loop: str) -> uvicorn.Config:
    host, port = split_hostport(listen)
    return uvicorn.Config(app, host=host, port=port, lifespan="off", loop=loop, interface="asgi3",
                          http=BoundedHttpToolsProtocol, log_level="warning", access_log=False,
                          timeout_graceful_shutdown=GRACEFUL_S, server_header=False,
                          # The client address is the peer's: a client must not choose its IP
                          # (per-IP limits, X-Forwarded-For) by sending X-Forwarded-For itself.
                          proxy_headers=False,
                          date_header=False,
                          # WebSockets (gateway.websocket): websockets' sans-I/O protocol, which
                          # offers the denial response (refusals before the upgrade)
                          ws=BoundedWebSocketProtocol, ws_max_size=MAX_MESSAGE_BYTES)


async def serve(settings: Settings, ready: Callable[[Gateway], Awaitable[None]] | None = None,
                loop: str = "uvloop", shutdown: asyncio.Event | None = None,
                sockets: tuple[socket.socket, socket.socket] | None = None,
                reload: Callable[[], Settings] | None = None, announce: bool = True) -> None:
    """Serve until SIGTERM/SIGINT (or ``shutdown`` is set, for callers that embed it).

    ``sockets``: the proxy and admin listeners, already bound (``serve --workers``: the parent
    binds them once, gateway.workers). ``reload``: what SIGHUP calls to read the config again
    (gateway.reload)."""
    gateway = await Gateway.start(settings)
    # Everything built so far lives as long as the process: keep it out of the collector's
    # scans, and collect the young generation less often (fewer pauses on the hot path).
    gc.collect()
    gc.freeze()
    gc.set_threshold(7000, 20, 20)
    servers = [_Server(_config(gateway.proxy_app, settings.listen, loop)),
               _Server(_config(gateway.admin_app(), settings.admin_listen, loop))]

    def stop() -> None:
        for s in servers:
            s.should_exit = True

    running = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        running.add_signal_handler(sig, stop)
    reloads = Reloads(gateway, reload)
    if reload is not None:
        running.add_signal_handler(signal.SIGHUP, reloads.request)
    watcher = asyncio.create_task(shutdown.wait()) if shutdown else None
    if watcher is not None:
        watcher.add_done_callback(lambda _: stop())
    try:
        listeners: list[list[socket.socket] | None] = \
            [None, None] if sockets is None else [[sock] for sock in sockets]
        tasks = [asyncio.create_task(s.serve(sockets=sock))
                 for s, sock in zip(servers, listeners, strict=True)]
        while not all(s.started for s in servers):
            if any(t.done() for t in tasks):  # a listener failed to bind
                stop()
                break
            await asyncio.sleep(0.02)
        else:
            if announce:
                log.warning("authgate proxy on %s, admin on %s", settings.listen,
                            settings.admin_listen)
            if ready is not None:
                await ready(gateway)
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        if watcher is not None:
            watcher.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            running.remove_signal_handler(sig)
        await reloads.close()
        await gateway.stop()
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed or not all(s.started for s in servers):
        raise SystemExit(1)


def run(settings: Settings, ready: Callable[[Gateway], Awaitable[None]] | None = None,
        reload: Callable[[], Settings] | None = None) -> None:
    """``authgate serve``: one process, or ``settings.workers`` of them (gateway.workers)."""
    import uvloop

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    if settings.workers > 1:
        from gateway.workers import supervise

        raise SystemExit(supervise(settings, reload))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings, ready, reload=reload))
