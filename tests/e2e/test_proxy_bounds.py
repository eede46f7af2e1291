"""Bounds of the proxy (issue 9, findings 5, 7, 10 and the request target): abandoned exchanges
free the upstream pool at once, the pool wait is bounded, request heads are bounded in size and
time on both listeners, and the forwarded headers are exactly the client's (SPEC §6).

The upstream here is a raw asyncio server, so it sees the bytes the gateway sends (header
spellings included) and notices the moment the gateway closes its connection. Clients are raw
sockets: httpx adds headers of its own and normalises paths.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
import uvicorn

from gateway import proxy, server
from gateway.authority import Actor
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.pipeline import Decision
from gateway.routes import MatchedRoute
from tests.e2e.conftest import PAIRS, free_port

ADMIN = Actor("cli:test")
PUBLIC = ({"path": "/public/*", "auth": "none"},)
# The listener and the forwarder never touch the store: one pair, except where a token's
# record is forwarded or judged (BOTH).
BOTH = pytest.mark.parametrize("backend_pair", list(PAIRS), indirect=True)


@pytest.fixture(params=["sqlite+memory"])
def backend_pair(request: pytest.FixtureRequest, tmp_path) -> tuple[str, str]:
    store_kind, cache = PAIRS[request.param]
    if store_kind == "sqlite":
        return f"sqlite:///{tmp_path}/gw.db", cache
    return request.getfixturevalue("pg_database"), cache


# --- the upstream ------------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]


@dataclass
class RawUpstream:
    """``/…/stream``: an endless chunked body; ``/…/slow``: no answer for 10 s; ``/…/upload``:
    reads the body slowly; anything else: the request as JSON. ``gone`` gets the time each
    stream, wait or upload ended because the gateway closed the connection."""

    url: str = ""
    requests: list[Seen] = field(default_factory=list)
    gone: list[float] = field(default_factory=list)
    uploaded: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *lines = head.decode("latin-1").split("\r\n")[:-2]
            method, target, _ = line.split(" ", 2)
            headers = [(n, v.strip()) for n, _, v in (h.partition(":") for h in lines)]
            self.requests.append(Seen(method, target, headers))
            if "stream" in target:
                await self._stream(reader, writer)
            elif "slow" in target:
                if await _eof_within(reader, 10):
                    self.gone.append(time.monotonic())
            elif "upload" in target:
                await self._upload(reader, int(dict(_lower(headers))["content-length"]))
            else:
                await self._echo(reader, writer, method, target, headers)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        eof = asyncio.ensure_future(reader.read(1))
        try:
            while not eof.done():
                writer.write(b"400\r\n" + b"s" * 1024 + b"\r\n")
                await writer.drain()
                await asyncio.wait([eof], timeout=0.02)
        except ConnectionError:
            pass
        finally:
            eof.cancel()
        self.gone.append(time.monotonic())

    async def _upload(self, reader: asyncio.StreamReader, length: int) -> None:
        while self.uploaded < length:
            chunk = await reader.read(16384)
            if not chunk:
                self.gone.append(time.monotonic())
                return
            self.uploaded += len(chunk)
            await asyncio.sleep(0.005)  # a slow reader: the upload stays in progress

    @staticmethod
    async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str,
                    target: str, headers: list[tuple[str, str]]) -> None:
        length = int(dict(_lower(headers)).get("content-length", "0"))
        if length:
            await reader.readexactly(length)
        body = json.dumps({"method": method, "target": target, "headers": headers}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close"
                     b"\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()


def _lower(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(n.lower(), v) for n, v in headers]


async def _eof_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), seconds) == b""
    except TimeoutError:
        return False


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawUpstream]:
    async for up in _serve_upstream():
        yield up


@pytest.fixture
async def other_upstream() -> AsyncIterator[RawUpstream]:
    async for up in _serve_upstream():
        yield up


async def _serve_upstream() -> AsyncIterator[RawUpstream]:
    up = RawUpstream()
    srv = await asyncio.start_server(up.handle, "127.0.0.1", 0)
    up.url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    yield up
    srv.close()
    for task in up.tasks:
        task.cancel()
    await asyncio.gather(*up.tasks, return_exceptions=True)
    await srv.wait_closed()


# --- a raw client ------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server closed the connection after this answer


async def connect(base: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    u = urlsplit(base)
    return await asyncio.open_connection(u.hostname, u.port)


async def read_answer(reader: asyncio.StreamReader, timeout: float = 5.0,
                      check_closed: bool = False) -> Answer:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {n.lower(): v.strip() for n, _, v in (h.partition(":") for h in lines)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))),
                                  timeout)
    closed = False
    if check_closed:
        try:
            closed = await asyncio.wait_for(reader.read(1), 1.0) == b""
        except (TimeoutError, ConnectionError):
            pass
    return Answer(int(line.split(" ")[1]), headers, body, closed)


async def ask(base: str, raw: bytes, check_closed: bool = False) -> Answer:
    reader, writer = await connect(base)
    try:
        writer.write(raw)
        await writer.drain()
        return await read_answer(reader, check_closed=check_closed)
    finally:
        writer.close()


def get(target: str, *headers: str, method: str = "GET") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: gw.test", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def until(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def open_stream(base: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client that starts reading /public/stream (the first body bytes arrived)."""
    reader, writer = await connect(base)
    writer.write(get("/public/stream"))
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    await asyncio.wait_for(reader.readexactly(512), 5)
    return reader, writer


# --- finding 5: abandoned exchanges, the pool -----------------------------------------------


@pytest.fixture(params=["authgate listener", "plain uvicorn"])
async def proxy_url(request: pytest.FixtureRequest, start_gateway, raw_upstream,
                    monkeypatch) -> AsyncIterator[str]:
    """The proxy on the gateway's own listener (its disconnect hook), or the same app under
    plain uvicorn (the forwarder's fallback: a task waiting on ``receive()``)."""
    monkeypatch.setattr(proxy, "POOL_SIZE", 3, raising=False)
    monkeypatch.setattr(proxy, "POOL_WAIT_S", 1.0, raising=False)
    rg = await start_gateway(upstream=raw_upstream.url, routes=PUBLIC)
    if request.param == "authgate listener":
        yield rg.proxy
        return
    port = free_port()
    plain = uvicorn.Server(uvicorn.Config(rg.gateway.proxy_app, host="127.0.0.1", port=port,
                                          http="httptools", lifespan="off", interface="asgi3",
                                          log_level="warning"))
    task = asyncio.create_task(plain.serve())
    assert await until(lambda: plain.started, 5.0)
    yield f"http://127.0.0.1:{port}"
    plain.should_exit = True
    await task


async def test_abandoned_streams_end_at_once_and_free_the_pool(proxy_url, raw_upstream, http):
    for i in range(6):  # more abandoned streams than the pool has connections
        _, writer = await open_stream(proxy_url)
        writer.close()
        left = time.monotonic()
        assert await until(lambda i=i: len(raw_upstream.gone) > i, 2.0), \
            f"the upstream kept streaming to abandoned client {i}"
        assert raw_upstream.gone[i] - left < 1.0
    started = time.monotonic()
    r = await http.get(f"{proxy_url}/public/echo")
    assert r.status_code == 200 and time.monotonic() - started < 1.0


async def test_client_leaving_before_the_answer_ends_the_upstream_wait(proxy_url,
                                                                      raw_upstream):
    _, writer = await connect(proxy_url)
    writer.write(get("/public/slow"))
    assert await until(lambda: raw_upstream.requests, 2.0)
    writer.close()
    left = time.monotonic()
    assert await until(lambda: raw_upstream.gone, 2.0), "the gateway kept waiting upstream"
    assert raw_upstream.gone[0] - left < 1.0


async def test_pool_wait_is_bounded_504(start_gateway, raw_upstream, monkeypatch, http):
    monkeypatch.setattr(proxy, "POOL_SIZE", 2, raising=False)
    monkeypatch.setattr(proxy, "POOL_WAIT_S", 0.5, raising=False)
    rg = await start_gateway(upstream=raw_upstream.url, routes=PUBLIC)
    holders = [await open_stream(rg.proxy) for _ in range(2)]  # clients still reading
    started = time.monotonic()
    r = await http.get(f"{rg.proxy}/public/echo")
    assert r.status_code == 504 and r.json()["error"] == "upstream_timeout"
    assert 0.4 < time.monotonic() - started < 2.0
    assert r.headers["x-request-id"]
    for _, writer in holders:
        writer.close()
    assert await until(lambda: len(raw_upstream.gone) == 2, 2.0)
    assert (await http.get(f"{rg.proxy}/public/echo")).status_code == 200


async def test_client_vanishing_mid_upload_ends_the_upload(start_gateway, raw_upstream, http):
    rg = await start_gateway(upstream=raw_upstream.url, routes=PUBLIC)
    _, writer = await connect(rg.proxy)
    writer.write(get("/public/upload", "Content-Length: 10000000", method="POST"))
    for _ in range(8):
        writer.write(b"u" * 32768)
        await writer.drain()
    assert await until(lambda: raw_upstream.uploaded > 0, 2.0)
    writer.close()
    left = time.monotonic()
    assert await until(lambda: raw_upstream.gone, 2.0), "the upload was left open upstream"
    assert raw_upstream.gone[0] - left < 1.0 and raw_upstream.uploaded < 10_000_000
    assert (await http.get(f"{rg.proxy}/public/echo")).status_code == 200


# --- finding 7: request heads bounded in size and time -------------------------------------


@BOTH
async def test_oversized_heads_431_and_closed_on_every_route_and_both_listeners(
        start_gateway, raw_upstream):
    rg = await start_gateway(upstream=raw_upstream.url, routes=PUBLIC)
    _, secret = await rg.gateway.authority.create(ADMIN, subject="a", name="b")
    big = "X-Big: " + "a" * 40_000
    many = [f"X-H{i}: " + "b" * 500 for i in range(80)]  # 40 KB in small headers
    cases = [
        (rg.proxy, get("/public/echo", big)),  # auth: none
        (rg.proxy, get("/public/echo", *many)),
        (rg.proxy, get("/public/" + "p" * 40_000)),  # the request line counts too
        (rg.proxy, get("/echo", f"Authorization: Bearer {secret}", big)),  # auth required
        (rg.admin, get("/healthz", big)),
        (rg.admin, get("/v1/tokens", *many)),
    ]
    for base, raw in cases:
        a = await ask(base, raw, check_closed=True)
        assert a.status == 431 and a.closed, (base, raw[:40])
        assert json.loads(a.body) == {"error": "invalid_request",
                                      "error_description": "request headers too large"}
    assert raw_upstream.requests == []
    # just under the bound: served, on a route with and without auth
    a = await ask(rg.proxy, get("/public/echo", "X-Big: " + "a" * 30_000))
    assert a.status == 200 and len(raw_upstream.requests) == 1
    a = await ask(rg.proxy, get("/echo", f"Authorization: Bearer {secret}",
                                "X-Big: " + "a" * 30_000))
    assert a.status == 200 and len(raw_upstream.requests) == 2


async def test_slowloris_is_cut_off_while_others_are_served(start_gateway, monkeypatch, http):
    monkeypatch.setattr(server, "HEAD_TIMEOUT_S", 1.0, raising=False)
    rg = await start_gateway(routes=PUBLIC)

    async def trickle(base: str) -> float:
        """Seconds until the gateway drops a client sending its head a byte at a time."""
        reader, writer = await connect(base)
        started = time.monotonic()
        try:
            for byte in itertools.cycle(b"GET /public/x HTTP/1.1\r\nX-Slow: " + b"z" * 100):
                writer.write(bytes([byte]))
                await writer.drain()
                if await _eof_within(reader, 0.05):
                    break
                if time.monotonic() - started > 4:
                    break
        except ConnectionError:
            pass
        writer.close()
        return time.monotonic() - started

    async def idle(base: str) -> float:
        reader, writer = await connect(base)
        started = time.monotonic()
        await _eof_within(reader, 4)
        writer.close()
        return time.monotonic() - started

    slow = [asyncio.create_task(f(b)) for f in (trickle, idle) for b in (rg.proxy, rg.admin)]
    await asyncio.sleep(0.3)
    assert (await http.get(f"{rg.proxy}/public/echo")).status_code == 200
    assert (await http.get(f"{rg.admin}/healthz")).status_code == 200
    held = await asyncio.gather(*slow)
    assert all(0.9 < s < 2.0 for s in held), held


async def test_keep_alive_connections_outlive_the_head_timer(start_gateway, raw_upstream,
                                                             monkeypatch):
    monkeypatch.setattr(server, "HEAD_TIMEOUT_S", 0.5, raising=False)
    rg = await start_gateway(upstream=raw_upstream.url, routes=PUBLIC)
    reader, writer = await connect(rg.proxy)
    try:
        for _ in range(3):  # idle longer than the head timer between requests, on one connection
            writer.write(get("/public/echo"))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n")
                          if h.lower().startswith(b"content-length"))
            await reader.readexactly(length)
            await asyncio.sleep(0.8)
    finally:
        writer.close()


async def test_the_head_bound_is_per_request_on_one_connection(start_gateway, raw_upstream):
    rg = await start_gateway(upstream=raw_upstream.url, routes=PUBLIC)
    near = "X-Big: " + "a" * 30_000  # each head under the bound, two together over it
    reader, writer = await connect(rg.proxy)
    try:
        writer.write(get("/public/echo", near) + get("/public/echo", near))  # pipelined
        for _ in range(2):
            assert (await read_answer(reader)).status == 200
        writer.write(get("/public/echo", near))  # keep-alive
        assert (await read_answer(reader)).status == 200
        writer.write(get("/public/echo", "X-Big: " + "a" * 40_000))
        a = await read_answer(reader, check_closed=True)
        assert a.status == 431 and a.closed
    finally:
        writer.close()
    assert len(raw_upstream.requests) == 3


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


async def test_header_floods_do_not_grow_memory(start_gateway, raw_upstream):
    rg = await start_gateway(upstream=raw_upstream.url, routes=PUBLIC)
    chunk = memoryview(b"a" * (1 << 20))

    async def flood(base: str, mib: int) -> None:
        _, writer = await connect(base)
        writer.write(b"GET /public/echo HTTP/1.1\r\nHost: gw.test\r\nX-Flood: ")
        try:
            for _ in range(mib):
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), 5)
        except (ConnectionError, TimeoutError):
            pass  # cut off: what we want
        writer.close()

    await flood(rg.proxy, 1)  # warm every code path once
    gc.collect()
    before = _rss_mib()
    floods = [flood(rg.proxy, 16), flood(rg.proxy, 16), flood(rg.admin, 16)]
    await asyncio.gather(*floods)
    grown = _rss_mib() - before
    assert grown < 8, f"RSS grew {grown:.1f} MiB for 3 x 16 MiB of header bytes"
    assert raw_upstream.requests == []


# --- finding 10: the forwarded headers are the client's ------------------------------------


def _names(seen: Seen) -> list[str]:
    return [n.lower() for n, _ in seen.headers]


async def test_nothing_is_added_to_the_clients_headers(start_gateway, raw_upstream):
    rg = await start_gateway(upstream=raw_upstream.url, routes=PUBLIC)
    assert (await ask(rg.proxy, get("/public/echo"))).status == 200
    assert (await ask(rg.proxy, get("/public/echo", "Content-Length: 2", method="POST")
                      + b"{}")).status == 200
    assert (await ask(rg.proxy, get("/public/echo", "Accept-Encoding: br",
                                    "Accept: text/csv", "User-Agent: mine/1"))).status == 200
    plain, posted, own = raw_upstream.requests
    for seen in (plain, posted):
        for name in ("accept-encoding", "accept", "user-agent", "content-type"):
            assert name not in _names(seen), (name, seen.headers)
    sent = dict(_lower(own.headers))
    assert sent["accept-encoding"] == "br" and sent["accept"] == "text/csv"
    assert sent["user-agent"] == "mine/1"


def _spellings(name: str) -> set[str]:
    """Every case (as given, lower, upper) x every choice of '-' or '_' at each separator."""
    parts = name.replace("_", "-").split("-")
    out = set()
    for seps in itertools.product("-_", repeat=len(parts) - 1):
        joined = parts[0] + "".join(s + p for s, p in zip(seps, parts[1:], strict=True))
        out |= {joined, joined.lower(), joined.upper()}
    return out


@BOTH
async def test_client_copies_of_identity_headers_are_dropped_in_any_spelling(start_gateway,
                                                                            raw_upstream):
    names = {"subject": "X_User", "token_id": "X-Tok-Id", "token_name": "x_tok-name"}
    rg = await start_gateway(upstream=raw_upstream.url, identity_headers=names,
                             api_key_header="X-Api-Key")
    record, secret = await rg.gateway.authority.create(ADMIN, subject="alice", name="ci",
                                                       scopes=["read"])
    configured = [*names.values(), "X-Auth-Scopes", "X-Api-Key"]
    spoofs = [f"{s}: spoof" for n in configured for s in sorted(_spellings(n))]
    assert len(spoofs) > 30
    a = await ask(rg.proxy, get("/echo", f"Authorization: Bearer {secret}", *spoofs))
    assert a.status == 200
    seen = raw_upstream.requests[0]
    assert all(v != "spoof" for _, v in seen.headers), seen.headers
    got = {n: v for n, v in seen.headers}
    assert got["X_User"] == "alice" and got["X-Tok-Id"] == record.id
    assert got["x_tok-name"] == "ci" and got["X-Auth-Scopes"] == "read"


# --- request targets that are not a path ------------------------------------------------------


@BOTH
async def test_targets_that_are_not_a_path_never_500_nor_leave_the_upstream(start_gateway,
                                                                           raw_upstream):
    rg = await start_gateway(upstream=raw_upstream.url)
    _, secret = await rg.gateway.authority.create(ADMIN, subject="a", name="b")
    auth = f"Authorization: Bearer {secret}"
    for method in ("GET", "OPTIONS"):
        a = await ask(rg.proxy, get("*", auth, method=method))
        assert a.status == 400 and json.loads(a.body)["error"] in ("invalid_request",
                                                                   "bad_request")
    assert raw_upstream.requests == []
    a = await ask(rg.proxy, get("http://elsewhere.invalid/x?q=1", auth))
    assert a.status in (200, 400)
    for seen in raw_upstream.requests:  # forwarded, if at all, to our upstream as a path
        assert seen.target == "/x?q=1"


async def test_the_forwarder_never_builds_a_url_from_a_target_that_is_not_a_path(
        raw_upstream, other_upstream):
    """Behind the router's own check: ``upstream + "@host/x"`` would name another host."""
    settings = Settings(upstream=raw_upstream.url, pepper="p")
    forwarder = proxy.AiohttpForwarder(settings, {raw_upstream.url}, Metrics())
    await forwarder.start()
    decision = Decision(MatchedRoute(-1, (), False, raw_upstream.url, None))
    elsewhere = "@" + other_upstream.url.removeprefix("http://") + "/x"
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def receive() -> dict[str, object]:
        await never  # no body; a disconnect never comes
        raise AssertionError

    async def send(message: dict[str, object]) -> None:
        raise AssertionError(f"sent {message}")

    try:
        for target in (elsewhere, "*", "x/y", ""):
            scope = {"type": "http", "method": "GET", "path": target,
                     "raw_path": target.encode(), "query_string": b"", "scheme": "http",
                     "headers": [(b"host", b"gw.test")], "client": ("127.0.0.1", 1)}
            with pytest.raises(proxy.UpstreamError) as refused:
                await forwarder.forward(scope, receive, send, decision, [], b"rid")
            assert refused.value.status == 400, target
    finally:
        await forwarder.close()
    assert raw_upstream.requests == [] and other_upstream.requests == []
