"""The access log (SPEC §6): one JSON object per proxied request (and per forward-auth decision)
on stdout, written off the event loop.

    AccessLog(metrics)     the writer: ``start`` its thread, ``record`` a finished request (the
                           hot path: a tuple appended to a deque), ``close`` flushes and stops
    Entry                  one request's counters: wraps ``receive`` / ``send`` to count body
                           bytes, the response status and when the response head left

Fields: ``ts`` (RFC 3339 UTC, when the request arrived), ``request_id``, ``client_ip``,
``method``, ``path`` (as sent, percent-encoded, never the query), ``status``, ``outcome`` (``ok``
or the refusal reason), ``route`` (the matched route's ``path`` pattern, or ``default``; null
when the request was refused before a route matched, e.g. a malformed path), ``subject``,
``token_id`` (null without a token), ``upstream_ms`` (from the start of the forward to the
upstream's response head or its failure; null when nothing was forwarded), ``total_ms`` (to the
last byte sent), ``bytes_in`` / ``bytes_out`` (request and response body bytes). Never a header,
so never a credential; never the query string. Nor a credential in the path (SPEC §6: a
client may put its token there, ``/t/agt_...``): ``redact_path`` replaces anything shaped like
an authgate token (``[a-z0-9_]{1,16}_`` and 38 base62 characters, whatever the prefix; the
checksum is not checked) with ``[redacted]``, in the path as sent and, when it has ``%``, in its
once and twice percent-decoded forms (a token found only there is logged from the decoded path,
redacted: ``%5F`` spellings), and drops the value of every ``;name=value`` path parameter
(``;jsessionid=[redacted]``). A path without ``_``, ``%`` or ``;`` skips it. ``method`` is cut
to ``MAX_METHOD`` characters.

Why a thread: a write to a stdout pipe blocks when the reader is slow. The event loop only
appends a tuple of raw values; the thread formats them (JSON, ASCII only: control
characters, non-UTF-8 bytes and anything else a client sends come out escaped) and writes them in
batches every ``FLUSH_S``. The buffer is bounded (``MAX_PENDING`` lines): past it a line is
dropped and counted (``authgate_access_log_dropped_total``), so a stuck stdout costs lines, never
memory or latency. Each batch is written in chunks of whole lines of at most ``PIPE_BUF`` bytes,
which the kernel writes atomically to a pipe: the workers of ``serve --workers N`` share one
stdout and their lines never interleave (a line that would be longer is cut down: its long
strings are shortened and ``"truncated": true`` added). When stdout is a regular file
(``serve >> file``), chunks go up to ``FILE_CHUNK``: Linux writes each ``write`` to a regular
file whole at its offset, whoever shares the descriptor, and a file write costs far more than
a pipe write (measured: ~3 % of the gateway's CPU at 4 KiB chunks).

Cost (bench/hot_path_micro.py): on the loop, an ``Entry`` (no clock read: a request's wall
clock time is its perf_counter arrival plus an offset read again each second), a plain ``send``
wrapper and one tuple per request; in the thread, ``format_line`` writes the repeated fields'
JSON from a bounded cache and the milliseconds with integer arithmetic, byte for byte what
``json`` and ``repr(round(ms, 3))`` write (tests/unit/test_access_log_fast.py).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from gateway.errors import Refusal

if TYPE_CHECKING:
    from gateway.metrics import Metrics
    from gateway.pipeline import Decision
    from gateway.routes import Router
    from gateway.store import TokenRecord

log = logging.getLogger("authgate")

Message = MutableMapping[str, Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

FLUSH_S = 0.05  # how often the writer thread drains the buffer
MAX_PENDING = 20_000  # lines waiting to be written; past it lines are dropped and counted
PIPE_BUF = 4096  # POSIX: writes up to this size to a pipe are atomic (Linux: 4096)
FILE_CHUNK = 64 * 1024  # the largest write when stdout is a regular file
SHORTER = (200, 40)  # a string field's length in a line cut down to fit PIPE_BUF (2nd try)
CLIENT_GONE = 499  # the status logged when the client left before a response began (nginx)
FIELDS = ("ts", "request_id", "client_ip", "method", "path", "status", "outcome", "route",
          "subject", "token_id", "upstream_ms", "total_ms", "bytes_in", "bytes_out")
_STRINGS = ("request_id", "client_ip", "method", "path", "route", "subject", "token_id")
MAX_METHOD = 32  # a method is a short token; a client's long one is cut in the line
REDACTED = "[redacted]"
# An authgate token (gateway.tokens: prefix [a-z0-9_]{1,16}, "_", 32 random + 6 checksum base62),
# any prefix; and a path parameter's value (";jsessionid=...", up to the next ";", "/" or "?").
_TOKEN_SHAPE = re.compile(r"[a-z0-9_]{1,16}_[0-9A-Za-z]{38}")
_PATH_PARAM = re.compile(r"(;[^;/?=]*=)[^;/?]*")
WALL_RESYNC_S = 1.0  # how often the wall clock offset of perf_counter is read again

_perf_counter = time.perf_counter
# A request's wall clock time (its ``ts``) is its perf_counter arrival plus this offset, read
# again every WALL_RESYNC_S (a stepped system clock shows within a second): no time.time() per
# request. [offset, the perf_counter of the last reading]; only the event loop thread writes it.
_wall_offset = [0.0, -WALL_RESYNC_S * 2]


def _resync_wall(now: float) -> None:
    _wall_offset[:] = [time.time() - _perf_counter(), now]


def route_of(router: Router, method: str | None, path: str | None) -> str | None:
    """The pattern of the route a refused request matched (the refusal does not carry it):
    matched again, off the hot path (only refusals, only with the log on); None when the path
    itself was refused."""
    if method is None or path is None:
        return None
    try:
        return router.match(path, method).pattern
    except Refusal:
        return None


class Entry:
    """One request's counters: ``receive`` and ``send`` wrap the server's, counting the body
    bytes each way, the status and the moment the response head is sent."""

    __slots__ = ("_receive", "_send", "bytes_in", "bytes_out", "decision", "forwarded",
                 "head_at", "log", "request_id", "route", "scope", "started", "status")

    def __init__(self, log: AccessLog, scope: Scope, receive: Receive, send: Send,
                 started: float, request_id: bytes) -> None:
        self.log = log  # the log on when the request came: it is logged even if a reload
        self.scope = scope  # turns the log off before it ends
        self._receive = receive
        self._send = send
        self.started = started  # perf_counter at arrival (its wall clock time: ``record``)
        self.request_id = request_id
        self.bytes_in = 0
        self.bytes_out = 0
        self.status = 0
        self.decision: Decision | None = None
        self.route: str | None = None  # the matched route's pattern
        self.forwarded = 0.0  # perf_counter when the forward started; 0 = nothing forwarded
        self.head_at = 0.0  # perf_counter when the response head was sent

    def forwarding(self, decision: Decision) -> None:
        self.decision = decision
        self.route = decision.route.pattern
        self.forwarded = _perf_counter()

    async def receive(self) -> Message:
        message = await self._receive()
        body = message.get("body")
        if body:
            self.bytes_in += len(body)
        return message

    def send(self, message: Message) -> Awaitable[None]:
        """Counts, then hands back the server's ``send(message)`` for the caller to await: a
        plain function, not a coroutine wrapping one (one frame less per message)."""
        kind = message["type"]
        if kind == "http.response.body":
            self.bytes_out += len(message.get("body", b""))
        elif kind == "http.response.start":
            self.status = message["status"]
            self.head_at = _perf_counter()
        return self._send(message)


class AccessLog:
    """The writer of the access log (see the module docstring). ``record`` may be called from
    the event loop at any time; lines are written by a daemon thread started by ``start``."""

    def __init__(self, metrics: Metrics | None = None, fd: int = 1) -> None:
        self._fd = fd
        self._chunk = _chunk_size(fd)
        self._pending: collections.deque[tuple[Any, ...]] = collections.deque()
        self._dropped = metrics.access_log_dropped if metrics is not None else None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._broken = False  # stdout is gone (EPIPE): lines are dropped from then on
        self.dropped = 0

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="authgate-access-log",
                                            daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is pending and stop the thread (bounded: a stuck stdout drops the rest)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout)

    def record(self, entry: Entry, outcome: str, client_ip: str | None,
               refused: TokenRecord | None = None) -> None:
        """Queue the line of a finished proxied request (the hot path: no formatting, no I/O).
        ``refused``: the token of a refused request, when it was known (``Refusal.record``)."""
        pending = self._pending
        if len(pending) >= MAX_PENDING:
            self._drop()
            return
        now = _perf_counter()
        if now - _wall_offset[1] > WALL_RESYNC_S:
            _resync_wall(now)
        scope = entry.scope
        forwarded = entry.forwarded
        decision = entry.decision
        record = decision.record if decision is not None else refused
        # the tuple _queue builds, built here: this runs once per proxied request
        pending.append((
            entry.started + _wall_offset[0], entry.request_id, client_ip, scope["method"],
            scope.get("raw_path") or scope["path"], entry.status or CLIENT_GONE, outcome,
            entry.route, record.subject if record is not None else None,
            record.id if record is not None else None,
            (entry.head_at or now) - forwarded if forwarded else None, now - entry.started,
            entry.bytes_in, entry.bytes_out))

    def decided(self, wall: float, started: float, request_id: bytes, client_ip: str | None,
                method: str | None, path: str | None, status: int, outcome: str,
                route: str | None, decision: Decision | None, bytes_in: int = 0,
                bytes_out: int = 0, refused: TokenRecord | None = None) -> None:
        """Queue the line of a forward-auth decision (or of a WebSocket upgrade, whose
        message bytes the relay counts): the method and path judged (null when the request was
        refused before they could be read), no upstream. The path, read from headers as
        latin-1, is logged as its bytes are (as the proxy's). ``refused``: as for ``record``."""
        raw = path.encode("latin-1", "backslashreplace") if path is not None else None
        self._queue(wall, request_id, client_ip, method, raw, status, outcome, route,
                    decision, None, time.perf_counter() - started, bytes_in, bytes_out,
                    refused)

    def _queue(self, wall: float, request_id: bytes, client_ip: str | None,
               method: str | None, path: bytes | str | None, status: int, outcome: str,
               route: str | None, decision: Decision | None, upstream: float | None, total: float,
               bytes_in: int, bytes_out: int, refused: TokenRecord | None = None) -> None:
        if len(self._pending) >= MAX_PENDING:
            self._drop()
            return
        record = decision.record if decision is not None else refused
        self._pending.append((
            wall, request_id, client_ip, method, path, status, outcome, route,
            record.subject if record is not None else None,
            record.id if record is not None else None,
            upstream, total, bytes_in, bytes_out))

    def _drop(self, n: int = 1) -> None:
        self.dropped += n
        if self._dropped is not None:
            self._dropped.inc(n)

    # --- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_S):
            self._flush()
        self._flush()

    def _flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        chunk: list[bytes] = []
        size = 0
        while pending:
            line = format_line(pending.popleft())
            if size + len(line) > self._chunk and chunk:
                self._write(b"".join(chunk), len(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._write(b"".join(chunk), len(chunk))

    def _write(self, data: bytes, lines: int) -> None:
        if self._broken:
            self._drop(lines)
            return
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as e:  # EPIPE, EBADF...: the reader is gone; say so once
            self._broken = True
            self._drop(lines)
            log.warning("access log: stdout is not writable (%s); lines are dropped",
                        e.strerror)


def _chunk_size(fd: int) -> int:
    """The largest write to ``fd`` that keeps whole lines together: ``FILE_CHUNK`` for a
    regular file, ``PIPE_BUF`` for anything else (a pipe, a socket, a terminal)."""
    try:
        return FILE_CHUNK if stat.S_ISREG(os.fstat(fd).st_mode) else PIPE_BUF
    except OSError:  # not open (yet): the first write says so
        return PIPE_BUF


def _redact(path: str) -> str:
    return _PATH_PARAM.sub(r"\1" + REDACTED, _TOKEN_SHAPE.sub(REDACTED, path))


def redact_path(path: str | None) -> str | None:
    """The path with credentials taken out (module docstring): token shapes and path
    parameter values, in the path as sent and in its once/twice percent-decoded forms."""
    if path is None or ("_" not in path and "%" not in path and ";" not in path):
        return path  # the common path: what every redaction needs is not there (no regex)
    out = _redact(path)
    decoded = out
    for _ in range(2):
        if "%" not in decoded:
            break
        decoded = unquote(decoded, errors="backslashreplace")
        clean = _redact(decoded)
        if clean != decoded:  # a credential spelled with percent-escapes: log it decoded
            out = decoded = clean
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _num(value: float | None) -> str:
    return "null" if value is None else repr(value)


# Fractions of a millisecond as ``repr`` writes them after round(.., 3): ".0", ".5", ".25", ".125"
_FRACTION = [f".{r:03d}".rstrip("0") if r else ".0" for r in range(1000)]
_MILLIS = [f"{n:03d}" for n in range(1000)]  # the milliseconds of ``ts``


def _ms_text(seconds: float | None) -> str:
    """``_num(_ms(seconds))`` (rounded to the microsecond, as ``repr`` writes it) with integer
    arithmetic, not a float rounding and a float repr: the product is within 1e-4 of the exact
    microseconds below 1e12, so away from a half the integer rounding is the exact one, and
    below 1e9 ms a number of 12 digits or fewer is what ``repr`` writes. Anything else (a tie,
    zero, negative, huge, NaN) takes the general path."""
    if seconds is None:
        return "null"
    millis = seconds * 1000
    micros = millis * 1000
    whole = int(micros + 0.5) if 0 < millis < 1e9 else 0
    if -0.49 < micros - whole < 0.49 and whole:
        return f"{whole // 1000}{_FRACTION[whole % 1000]}"
    return repr(round(millis, 3))


_ENCODE = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode  # built once
_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii  # C, when available
_second: list[Any] = [-1, ""]  # the last whole second formatted, and its text
_stamp: list[Any] = [-1, -1, ""]  # the last ts: its whole second, its int(wall * 1000), text
# The JSON text of the values of the fields that repeat from line to line (method, outcome,
# route, client, subject, token id): one dict lookup instead of escaping them again. Bounded:
# emptied when full. Only the writer thread formats lines (and a race would only write one
# entry twice). Never a path or a request id: those differ from request to request.
_QUOTED: dict[str | None, str] = {None: "null"}
MAX_QUOTED = 4096


def _quoted(value: str | None) -> str:
    text = _QUOTED.get(value)
    if text is None:
        assert value is not None
        if len(_QUOTED) >= MAX_QUOTED:
            _QUOTED.clear()
            _QUOTED[None] = "null"
        text = _QUOTED[value] = _quote(value)
    return text


def _ts(wall: float) -> str:
    second, millis = int(wall), int(wall * 1000)
    if millis == _stamp[1] and second == _stamp[0]:  # busy: many lines a millisecond
        text: str = _stamp[2]
        return text
    if second != _second[0]:  # one strftime a second, not one a line
        _second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    text = f"{_second[1]}.{_MILLIS[millis % 1000]}Z"
    _stamp[:] = [second, millis, text]
    return text


def _q(value: str | None) -> str:
    return "null" if value is None else _quote(value)


def format_line(values: tuple[Any, ...]) -> bytes:
    """One JSON line (ASCII only) from a recorded tuple, at most ``PIPE_BUF`` bytes. Written
    out field by field (the C string escaper of ``json``, repeated values' text remembered,
    numbers ours): a fraction of the cost of ``json.dumps`` on a dict, which
    only the rare line cut down to size goes through."""
    (wall, request_id, client_ip, method, path, status, outcome, route, subject, token_id,
     upstream, total, bytes_in, bytes_out) = values
    ts = _ts(wall)
    rid = request_id.decode("utf-8", "backslashreplace") if isinstance(request_id, bytes) \
        else request_id
    if isinstance(method, bytes):
        method = method.decode("utf-8", "backslashreplace")
    if method is not None and len(method) > MAX_METHOD:
        method = method[:MAX_METHOD]
    path_s = redact_path(path.decode("utf-8", "backslashreplace") if isinstance(path, bytes)
                         else path)
    if type(status) is not int or type(bytes_in) is not int or type(bytes_out) is not int:
        status, bytes_in, bytes_out = int(status), int(bytes_in), int(bytes_out)  # True: 1
    line = (f'{{"ts":"{ts}","request_id":{_q(rid)},"client_ip":{_quoted(client_ip)},'
            f'"method":{_quoted(method)},"path":{_q(path_s)},"status":{status},'
            f'"outcome":{_quoted(outcome)},"route":{_quoted(route)},'
            f'"subject":{_quoted(subject)},"token_id":{_quoted(token_id)},'
            f'"upstream_ms":{_ms_text(upstream)},"total_ms":{_ms_text(total)},'
            f'"bytes_in":{bytes_in},"bytes_out":{bytes_out}}}\n').encode()
    if len(line) <= PIPE_BUF:
        return line
    doc: dict[str, Any] = {
        "ts": ts, "request_id": rid, "client_ip": client_ip, "method": method,
        "path": path_s, "status": status, "outcome": outcome, "route": route,
        "subject": subject, "token_id": token_id, "upstream_ms": _ms(upstream),
        "total_ms": _ms(total), "bytes_in": bytes_in, "bytes_out": bytes_out}
    doc["truncated"] = True
    for short in SHORTER:  # rare: a huge path or id; cut each long string down
        for key in _STRINGS:
            value = doc[key]
            if isinstance(value, str) and len(value) > short:
                doc[key] = value[:short]
        line = _ENCODE(doc).encode() + b"\n"
        if len(line) <= PIPE_BUF:
            break
    return line  # 7 strings of 40 characters, each escaped to at most 6 bytes, always fit
