"""The forwarding tests over both forwarders (``forwarder: aiohttp``, the default, and
``forwarder: httpx``): the same tests, the same assertions.

The suites' forwarding tests (tests/e2e/test_gateway.py, test_proxy_bounds.py) are collected here
again with ``start_gateway`` overridden to start the gateway with each forwarder; the store and
cache do not matter to a forwarder, so one backend pair (tests marked BOTH there run on both).
Below them: what those suites do not cover (HEAD, 204/304, exact targets, X-Forwarded-*).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway import app as app_module
from gateway import proxy
from gateway.authority import Actor
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.pipeline import Decision
from gateway.routes import MatchedRoute
from tests.e2e import test_gateway as g
from tests.e2e import test_proxy_bounds as b
from tests.e2e.test_proxy_bounds import PUBLIC, RawUpstream, ask, connect, get, read_answer

# test_proxy_bounds' fixtures, found by name: one backend pair, its raw upstreams, proxy_url.
backend_pair, proxy_url = b.backend_pair, b.proxy_url
raw_upstream, other_upstream = b.raw_upstream, b.other_upstream
ADMIN = Actor("cli:test")
FORWARDERS = {"aiohttp": "AiohttpForwarder", "httpx": "HttpxForwarder"}


@pytest.fixture(params=list(FORWARDERS))
def forwarder(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def start_gateway(start_gateway, forwarder, monkeypatch):  # type: ignore[no-untyped-def]
    """conftest's ``start_gateway`` with ``forwarder=`` set, checked to be the one serving."""
    # Until the composition root builds its forwarder with open_forwarder, make it do so.
    monkeypatch.setattr(app_module, "AiohttpForwarder", proxy.open_forwarder, raising=False)

    async def start(**overrides: Any) -> Any:
        rg = await start_gateway(**{"forwarder": forwarder, **overrides})
        serving = getattr(rg.gateway, "forwarder", None)
        if serving is not None:
            assert type(serving).__name__ == FORWARDERS[forwarder]
        return rg

    return start


# --- the suites' forwarding tests, over both forwarders ------------------------------------

test_identity_and_forwarded_headers = \
    g.test_forwards_with_identity_headers_and_strips_the_credential
test_request_id_is_generated_when_absent = g.test_request_id_is_generated_when_absent
test_upstream_unreachable_502_and_timeout_504 = g.test_upstream_unreachable_502_and_timeout_504
test_redirects_are_passed_back_not_followed = g.test_redirects_are_passed_back_not_followed
test_bodies_stream_both_ways = g.test_bodies_stream_both_ways
test_many_concurrent_requests = g.test_many_concurrent_requests
test_abandoned_streams_end_at_once_and_free_the_pool = \
    b.test_abandoned_streams_end_at_once_and_free_the_pool
test_client_leaving_before_the_answer_ends_the_upstream_wait = \
    b.test_client_leaving_before_the_answer_ends_the_upstream_wait
test_pool_wait_is_bounded_504 = b.test_pool_wait_is_bounded_504
test_client_vanishing_mid_upload_ends_the_upload = \
    b.test_client_vanishing_mid_upload_ends_the_upload
test_nothing_is_added_to_the_clients_headers = b.test_nothing_is_added_to_the_clients_headers
test_identity_headers_dropped_in_any_spelling = \
    b.test_client_copies_of_identity_headers_are_dropped_in_any_spelling
test_targets_that_are_not_a_path_never_500_nor_leave_the_upstream = \
    b.test_targets_that_are_not_a_path_never_500_nor_leave_the_upstream


async def test_the_forwarder_never_builds_a_url_from_a_target_that_is_not_a_path(
        forwarder, raw_upstream, other_upstream):
    """test_proxy_bounds' test of the same name, through ``open_forwarder``."""
    settings = Settings(upstream=raw_upstream.url, pepper="p", forwarder=forwarder)
    fwd = proxy.open_forwarder(settings, {raw_upstream.url}, Metrics())
    assert type(fwd).__name__ == FORWARDERS[forwarder]
    await fwd.start()
    decision = Decision(MatchedRoute(-1, (), False, raw_upstream.url, None))
    elsewhere = "@" + other_upstream.url.removeprefix("http://") + "/x"

    async def receive() -> dict[str, object]:
        await asyncio.sleep(3600)  # no body; a disconnect never comes
        raise AssertionError

    async def send(message: Any) -> None:
        raise AssertionError(f"sent {message}")

    try:
        for target in (elsewhere, "*", "x/y", ""):
            scope = {"type": "http", "method": "GET", "path": target,
                     "raw_path": target.encode(), "query_string": b"", "scheme": "http",
                     "headers": [(b"host", b"gw.test")], "client": ("127.0.0.1", 1)}
            with pytest.raises(proxy.UpstreamError) as refused:
                await fwd.forward(scope, receive, send, decision, [], b"rid")
            assert refused.value.status == 400, target
    finally:
        await fwd.close()
    assert raw_upstream.requests == [] and other_upstream.requests == []


# --- what the suites do not cover ----------------------------------------------------------


class BodilessUpstream(RawUpstream):
    """``/…/204``, ``/…/304`` and any HEAD: answers with no body (204; 304 and HEAD with the
    Content-Length a GET would have had), kept alive; anything else: RawUpstream's."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.decode("latin-1").split("\r\n")[0]
                method, target, _ = line.split(" ", 2)
                self.requests.append(b.Seen(method, target, []))
                if target.endswith("/204"):
                    writer.write(b"HTTP/1.1 204 No Content\r\nx-kind: 204\r\n\r\n")
                elif target.endswith("/304"):
                    writer.write(b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\n\r\n")
                elif method == "HEAD":
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n"
                                 b"content-type: application/octet-stream\r\n\r\n")
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def bodiless_upstream() -> AsyncIterator[BodilessUpstream]:
    up = BodilessUpstream()
    srv = await asyncio.start_server(up.handle, "127.0.0.1", 0)
    up.url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    yield up
    srv.close()
    await srv.wait_closed()


async def test_head_204_and_304_answers_carry_no_body(start_gateway, bodiless_upstream):
    rg = await start_gateway(upstream=bodiless_upstream.url, routes=PUBLIC)
    reader, writer = await connect(rg.proxy)
    try:
        # One client connection: a body where there is none would spoil the next answer.
        for _ in range(2):
            writer.write(get("/public/x", method="HEAD"))
            a = await _head_only(reader)
            assert a.status == 200 and a.headers["content-length"] == "1000000"
            writer.write(get("/public/204", method="DELETE"))
            a = await _head_only(reader)
            assert a.status == 204 and a.headers["x-kind"] == "204"
            writer.write(get("/public/304", 'If-None-Match: "v1"'))
            a = await _head_only(reader)
            assert a.status == 304 and a.headers["etag"] == '"v1"'
            writer.write(get("/public/next"))
            a = await read_answer(reader)
            assert a.status == 200 and a.body == b"ok"
    finally:
        writer.close()
    assert len(bodiless_upstream.requests) == 8


async def _head_only(reader: asyncio.StreamReader) -> b.Answer:
    """An answer that must have no body, whatever its Content-Length says."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {n.lower(): v.strip() for n, _, v in (h.partition(":") for h in lines)}
    return b.Answer(int(line.split(" ")[1]), headers, b"", False)


TARGETS = [
    "/public/a%20b/caf%C3%A9?q=%zz&q=2&e=&plus=a+b",
    "/public/x;p=1/%7Euser/%22q%22?a=%2F%3F",
    "/public/UPPER/~tilde/!$&'()*,;=:@?x=y?z",
    "/public/empty?",
]


async def test_targets_are_forwarded_exactly_as_sent(start_gateway, raw_upstream):
    rg = await start_gateway(upstream=raw_upstream.url, routes=PUBLIC)
    for target in TARGETS:
        a = await ask(rg.proxy, get(target))
        assert a.status == 200, (target, a.body)
        assert json.loads(a.body)["target"] == target.removesuffix("?")  # no query: no '?'


async def test_forwarded_headers_and_hop_by_hop(start_gateway, raw_upstream):
    rg = await start_gateway(upstream=raw_upstream.url, routes=PUBLIC)
    a = await ask(rg.proxy, get("/public/echo", "X-Forwarded-For: 203.0.113.9",
                                "Connection: keep-alive, X-Gone", "X-Gone: 1", "Keep-Alive: 5",
                                "TE: trailers", "Upgrade: h2c", "Proxy-Authorization: Basic x",
                                "X-Request-Id: rid-1", "X-Kept: yes"))
    assert a.status == 200 and a.headers["x-request-id"] == "rid-1"
    sent = {n.lower(): v for n, v in json.loads(a.body)["headers"]}
    for gone in ("x-gone", "keep-alive", "te", "upgrade", "proxy-authorization"):
        assert gone not in sent, (gone, sent)
    assert sent["x-kept"] == "yes" and sent["x-request-id"] == "rid-1"
    assert sent["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert sent["x-forwarded-proto"] == "http" and sent["x-forwarded-host"] == "gw.test"
    assert sent["host"] == raw_upstream.url.removeprefix("http://")
