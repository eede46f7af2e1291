"""A lean, pipelined connection for the per-request scripts on one Redis server.

Why: every admitted request runs one Lua script (the GCRA limiter, or the quota script for named
limits and credits). Through redis-py that costs ~100-160 us of gateway CPU per call (command
packing, pool checkout, a reader task), plus a batching task per event-loop turn; at 32
connections the gateway is CPU-bound on it. Here a call costs one RESP encoding, one
``transport.write`` and one future (bench/limiter_micro.py: ~18 us of CPU per hit at
concurrency 1 against ~106 us through redis-py).

Design (``ScriptPipe``, owned by a standalone ``RedisClient``; Cluster and Sentinel stay on
redis-py):

* One TCP connection (TLS for ``rediss://``), an ``asyncio.Protocol``. Each call writes
  ``EVALSHA sha nkeys keys... args...`` at once and appends a future to a FIFO; replies arrive in
  order (Redis answers one connection's commands in order), so ``data_received`` feeds a
  ``hiredis.Reader`` and resolves the futures front to back. No batching task and no
  ``call_soon``: calls never wait for each other, any number are in flight on the one
  connection. (Each write is its own send: neither uvloop nor asyncio coalesces the writes of
  one loop turn. Holding writes back until the previous reply arrives was tried and measured no
  better.) Each script still runs atomically on its own, so limits stay exact across replicas.
* Connect on first use, and again on the first call after a failure (the client's backoff
  decides when callers come back). Connect, AUTH (the URL's username/password) and SELECT (its
  db) are bounded together by ``CONNECT_TIMEOUT_S``; callers arriving meanwhile wait for the one
  attempt. The URL is parsed by redis-py (its pool's connection kwargs, its TLS context).
* NOSCRIPT (Redis restarted or flushed): ``SCRIPT LOAD`` is written once (not again while one is
  in flight on the connection) and the EVALSHA is written again right behind it; the connection
  keeps order, so nobody waits for the load's reply. The script goes over the wire only then.
* Failure, as ``RedisClient.call``: a lost connection, unparseable bytes, an unexpected reply, or
  no reply to the oldest pending call within ``SOCKET_TIMEOUT_S`` fails every pending call (each
  returns None: the caller's fallback), reports once (Redis marked down for the backoff,
  ``on_error``), and closes the connection. The timeout needs no timer per call: one timer is
  armed while anything is pending and looks at the oldest call's age. An error reply fails only
  its own call (the stream is still in step), reported the same way. A connection closed while
  nothing was pending is simply reopened by the next call.
* Bounded: at most ``MAX_PENDING`` calls wait for replies; a call past that is refused at once
  (None: the fallback) and counted as a Redis error (one log line per episode), without marking
  Redis down: the calls in flight still get their replies.

Scripts run here must not return nil (None means "no reply": the fallback).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis

log = logging.getLogger("authgate.cache")

MAX_PENDING = 10_000  # calls awaiting replies on the connection; more are refused (fallback)

_LOST = object()  # the result of a pending call whose connection failed
_NOT_ENOUGH = object()  # hiredis: no complete reply buffered yet


def _bulk(value: str | bytes | int | float) -> bytes:
    raw = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(raw), raw)


def encode(*parts: str | bytes | int | float) -> bytes:
    """One RESP command (an array of bulk strings)."""
    return b"*%d\r\n" % len(parts) + b"".join(_bulk(p) for p in parts)


def encode_evalsha(sha: str, keys: Sequence[str],
                   args: Sequence[str | bytes | int | float]) -> bytes:
    return encode("EVALSHA", sha, len(keys), *keys, *args)


class _Connection(asyncio.Protocol):
    """One connection: writes commands, matches replies to the FIFO of pending calls."""

    def __init__(self, reply_timeout_s: float, on_failure: Callable[[str], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader(notEnoughData=_NOT_ENOUGH)
        self._timeout = reply_timeout_s
        self.on_failure = on_failure  # the pipe's, once the connection is set up
        self.transport: asyncio.Transport | None = None
        self.pending: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self.loading: dict[str, asyncio.Future[Any]] = {}  # sha -> its SCRIPT LOAD in flight
        self.closed = False
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but have its methods)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader, pending = self._reader, self.pending
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError:
                self.fail("ProtocolError: unparseable reply")
                return
            if reply is _NOT_ENOUGH:
                return
            if not pending:
                self.fail("ProtocolError: a reply nobody asked for")
                return
            future = pending.popleft()[1]
            if not future.done():  # (a caller cancelled meanwhile: its reply is dropped)
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pending:
            self.fail(f"ConnectionError: {type(exc).__name__ if exc else 'closed by the server'}")
        else:
            self.close()  # idle: the next call reconnects, nobody had to wait

    # --- calls --------------------------------------------------------------------------------

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Write ``command``; its reply (or ``_LOST``) will be the future's result."""
        future = self._loop.create_future()
        if self.closed:
            future.set_result(_LOST)
            return future
        now = self._loop.time()
        if not self.pending and self._timer is None:
            self._timer = self._loop.call_at(now + self._timeout, self._check_oldest)
        self.pending.append((now, future))
        assert self.transport is not None
        self.transport.write(command)
        return future

    def _check_oldest(self) -> None:
        self._timer = None
        if self.closed or not self.pending:
            return  # disarmed until the next call
        sent_at = self.pending[0][0]
        if self._loop.time() - sent_at >= self._timeout:
            self.fail(f"TimeoutError: no reply within {self._timeout:g} s")
        else:
            self._timer = self._loop.call_at(sent_at + self._timeout, self._check_oldest)

    def fail(self, why: str) -> None:
        """Every pending call returns ``_LOST``; report once; close."""
        if self.closed:
            return
        self.on_failure(why)
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self.pending = self.pending, deque()
        for _, future in pending:
            if not future.done():
                future.set_result(_LOST)
        if self.transport is not None:
            self.transport.close()


class ConnectError(Exception):
    """The connection could not be opened or set up (the text says why, never a secret)."""


class ScriptPipe:
    """EVALSHA calls over one pipelined connection to the server a ``redis://`` or
    ``rediss://`` pool would use. ``run`` returns the script's reply, or None when Redis failed
    (reported through ``on_failure``) or too many calls are in flight (``on_overflow``)."""

    def __init__(self, pool: aioredis.ConnectionPool, on_failure: Callable[[str], None],
                 on_overflow: Callable[[], None], *, connect_timeout_s: float,
                 reply_timeout_s: float, max_pending: int | None = None) -> None:
        kwargs = pool.connection_kwargs
        self._host: str = kwargs.get("host", "localhost")
        self._port: int = int(kwargs.get("port", 6379))
        self._username: str | None = kwargs.get("username")
        self._password: str | None = kwargs.get("password")
        self._db = int(kwargs.get("db", 0) or 0)
        # redis-py's own TLS settings from the URL (cert checks, CA, ...): a context built per
        # connect attempt, as redis-py does per connection, so rotated CA/cert files are read
        # again, and a file missing now is a connect failure, never a construction error
        self._ssl: Callable[[], Any] | None = None
        if issubclass(pool.connection_class, aioredis.SSLConnection):
            cls, ssl_kwargs = pool.connection_class, dict(kwargs)
            self._ssl = lambda: cls(**ssl_kwargs).ssl_context.get()
        self._on_failure = on_failure
        self._on_overflow = on_overflow
        self._connect_timeout = connect_timeout_s
        self._reply_timeout = reply_timeout_s
        self._max_pending = MAX_PENDING if max_pending is None else max_pending
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection | None] | None = None
        self._closed = False  # by its owner: no new connection after that
        self._overflowing = False  # calls are being refused for MAX_PENDING (logged once)

    async def run(self, script: str, sha: str, keys: Sequence[str],
                  args: Sequence[str | bytes | int | float]) -> Any:
        conn = self._conn
        if conn is None or conn.closed:
            if self._closed:
                return None
            conn = await self._connection()
            if conn is None:
                return None
        if len(conn.pending) >= self._max_pending:
            if not self._overflowing:  # one line per episode, not one per refused call
                log.warning("redis: %d script calls awaiting replies, refusing more "
                            "(per-replica limits meanwhile)", self._max_pending)
                self._overflowing = True
            self._on_overflow()
            return None
        self._overflowing = False
        command = encode_evalsha(sha, keys, args)
        reply = await conn.send(command)
        if reply.__class__ is hiredis.ReplyError:
            if str(reply).startswith("NOSCRIPT") and not conn.closed:
                self._load(conn, script, sha)
                reply = await conn.send(command)  # behind the load: runs after it
                if (reply.__class__ is hiredis.ReplyError and str(reply).startswith("NOSCRIPT")
                        and not conn.closed):  # the load was refused (an ACL without SCRIPT)
                    reply = await conn.send(encode("EVAL", script, len(keys), *keys, *args))
            if reply.__class__ is hiredis.ReplyError:
                self._on_failure(f"ResponseError: {str(reply).split(' ', 1)[0]}")
                return None
        return None if reply is _LOST else reply

    def _load(self, conn: _Connection, script: str, sha: str) -> None:
        if sha in conn.loading:  # written already, and ahead of our retry on this connection
            return
        future = conn.loading[sha] = conn.send(encode("SCRIPT", "LOAD", script))
        future.add_done_callback(lambda _: conn.loading.pop(sha, None))

    async def _connection(self) -> _Connection | None:
        """The open connection: one connect attempt at a time, shared by its waiters."""
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        # shielded: a cancelled request must not abort the attempt the others wait for
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> _Connection | None:
        try:
            conn = await asyncio.wait_for(self._open(), self._connect_timeout)
        except Exception as e:  # refused, unreachable, TLS, timeout, AUTH...: never the caller's
            why = str(e) if isinstance(e, ConnectError) else type(e).__name__
            self._on_failure(f"connect failed: {why}")
            return None
        finally:
            self._connecting = None
        self._conn = conn
        return conn

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        failures: list[str] = []
        conn = _Connection(self._reply_timeout, failures.append)
        try:
            ssl = self._ssl() if self._ssl is not None else None
            # (returns once connection_made has run: TLS handshake included)
            await loop.create_connection(lambda: conn, self._host, self._port, ssl=ssl)
            handshake = []
            if self._password is not None:
                auth = ("AUTH", self._username, self._password) if self._username else (
                    "AUTH", self._password)
                handshake.append(("AUTH", conn.send(encode(*auth))))
            if self._db:
                handshake.append(("SELECT", conn.send(encode("SELECT", self._db))))
            for what, future in handshake:
                reply = await future
                if reply is _LOST:
                    raise ConnectError(failures[0] if failures else "connection lost")
                if reply.__class__ is hiredis.ReplyError:
                    # the error code only (e.g. WRONGPASS, NOAUTH): the server's text is not
                    # ours to log, and the password is never in it anyway
                    code = str(reply).split(" ", 1)[0]
                    refused = ("the server refused the URL's credentials" if what == "AUTH"
                               else f"the server refused database {self._db}")
                    raise ConnectError(f"{what} failed ({code}): {refused}")
        except BaseException:
            conn.close()
            raise
        # From now on a failure is the pipe's to report.
        conn.on_failure = self._on_failure
        if conn.closed:  # lost right after the handshake
            raise ConnectError("connection lost")
        return conn

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
