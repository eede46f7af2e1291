"""The forwarding tests over both forwarders (``forwarder: aiohttp``, the default, and
``forwarder: httpx``): the same tests, the same assertions.

The suites' forwarding tests (tests/e2e/test_gateway.py, test_proxy_bounds.py) are collected here
again with ``start_gateway`` overridden to start the gateway with each forwarder; the store and
cache do not matter to a forwarder, so one backend pair (tests marked BOTH there run on both).
Below them: what those suites do not cover (HEAD, 204/304, exact targets, X-Forwarded-*).
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.connector
import h2.config
import h2.connection
import h2.events
import pytest

from gateway import config, proxy
from gateway.authority import Actor
from gateway.config import Settings, load_settings
from gateway.errors import ConfigError
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
def start_gateway(start_gateway, forwarder):  # type: ignore[no-untyped-def]
    """conftest's ``start_gateway`` with ``forwarder=`` set, checked to be the one serving."""

    async def start(**overrides: Any) -> Any:
        rg = await start_gateway(**{"forwarder": forwarder, **overrides})
        assert type(rg.gateway.forwarder).__name__ == FORWARDERS[forwarder]
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


GZIPPED = gzip.compress(b"compressed " * 100)


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
                if target.endswith("/gzip"):
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(GZIPPED), GZIPPED))
                elif target.endswith("/304-with-length"):
                    writer.write(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n")
                elif target.endswith("/204"):
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


async def test_bodies_are_passed_on_compressed_as_they_came(start_gateway, bodiless_upstream):
    rg = await start_gateway(upstream=bodiless_upstream.url, routes=PUBLIC)
    a = await ask(rg.proxy, get("/public/gzip", "Accept-Encoding: gzip"))
    assert a.status == 200 and a.headers["content-encoding"] == "gzip" and a.body == GZIPPED


async def test_a_304_with_content_length_keeps_the_connection(start_gateway, bodiless_upstream):
    rg = await start_gateway(upstream=bodiless_upstream.url, routes=PUBLIC)
    reader, writer = await connect(rg.proxy)
    try:
        writer.write(get("/public/304-with-length"))
        assert (await _head_only(reader)).status == 304
        writer.write(get("/public/next"))
        assert (await read_answer(reader)).body == b"ok"
    finally:
        writer.close()


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


# --- HTTP/2 to a TLS upstream that offers it ---------------------------------------------


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, its own CA (trusted through SSL_CERT_FILE)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "authgate test upstream")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "up.pem", tmp_path / "up.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@dataclass
class TlsUpstream:
    """HTTPS, offering h2 and http/1.1 by ALPN; answers every request with what it saw as
    JSON: the protocol, the method, the target, the headers and how many body bytes came."""

    url: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        try:
            if ssl_object.selected_alpn_protocol() == "h2":
                await self._h2(reader, writer)
            else:
                await self._http11(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _answer(self, protocol: str, method: str, target: str, headers: list[tuple[str, str]],
                received: int) -> bytes:
        seen = {"protocol": protocol, "method": method, "target": target, "headers": headers,
                "received": received}
        self.seen.append(seen)
        return json.dumps(seen).encode()

    async def _http11(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        line, *lines = head.decode("latin-1").split("\r\n")[:-2]
        method, target, _ = line.split(" ", 2)
        headers = [(n, v.strip()) for n, _, v in (h.partition(":") for h in lines)]
        length = int(dict((n.lower(), v) for n, v in headers).get("content-length", "0"))
        await reader.readexactly(length)
        body = self._answer("http/1.1", method, target, headers, length)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close"
                     b"\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    async def _h2(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                                    header_encoding="latin-1"))
        conn.initiate_connection()
        streams: dict[int, tuple[list[tuple[str, str]], list[int]]] = {}
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    streams[event.stream_id] = (list(event.headers), [0])
                elif isinstance(event, h2.events.DataReceived):
                    streams[event.stream_id][1][0] += len(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length,
                                                   event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    headers, received = streams.pop(event.stream_id)
                    pseudo = dict(h for h in headers if h[0].startswith(":"))
                    plain = [h for h in headers if not h[0].startswith(":")]
                    body = self._answer("h2", pseudo[":method"], pseudo[":path"],
                                        [("host", pseudo[":authority"]), *plain], received[0])
                    conn.send_headers(event.stream_id, [
                        (":status", "200"), ("content-type", "application/json"),
                        ("content-length", str(len(body))), ("x-upstream", "h2")])
                    conn.send_data(event.stream_id, body, end_stream=True)
            writer.write(conn.data_to_send())
            await writer.drain()


@pytest.fixture
async def tls_upstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                       ) -> AsyncIterator[TlsUpstream]:
    cert_file, key_file = _self_signed(tmp_path)
    # The forwarders' trust store: httpx's context is made at start (SSL_CERT_FILE is read
    # then); aiohttp made its own at import.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    trusting = ssl.create_default_context(cafile=str(cert_file))
    monkeypatch.setattr(aiohttp.connector, "_SSL_CONTEXT_VERIFIED", trusting)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert_file, key_file)
    tls.set_alpn_protocols(["h2", "http/1.1"])
    up = TlsUpstream()
    srv = await asyncio.start_server(up.handle, "127.0.0.1", 0, ssl=tls)
    up.url = f"https://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    yield up
    srv.close()
    await srv.wait_closed()


async def test_tls_upstreams_get_http2_from_httpx_and_the_same_request(start_gateway, forwarder,
                                                                       tls_upstream, http):
    rg = await start_gateway(upstream=tls_upstream.url)
    record, secret = await rg.gateway.authority.create(ADMIN, subject="alice", name="ci",
                                                       scopes=["read"])
    auth = {"Authorization": f"Bearer {secret}", "X-Keep": "kept", "X-Auth-Subject": "spoof",
            "X-Forwarded-For": "203.0.113.9"}
    answers = await asyncio.gather(*(http.get(f"{rg.proxy}/a/{i}?q=%zz&i={i}", headers=auth)
                                     for i in range(20)))
    r = await http.post(f"{rg.proxy}/upload", headers=auth, content=b"u" * 100_000)
    for i, a in enumerate([*answers, r]):
        assert a.status_code == 200, a.text
        seen = a.json()
        assert seen["protocol"] == ("h2" if forwarder == "httpx" else "http/1.1")
        assert seen["target"] == (f"/a/{i}?q=%zz&i={i}" if i < 20 else "/upload")
        sent = {n.lower(): v for n, v in seen["headers"]}
        assert sent["host"] == tls_upstream.url.removeprefix("https://")
        assert sent["x-keep"] == "kept" and sent["x-auth-subject"] == "alice"
        assert sent["x-auth-token-id"] == record.id and "authorization" not in sent
        assert sent["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
        assert "connection" not in sent and "keep-alive" not in sent
        assert sent["user-agent"] == a.request.headers["user-agent"]  # the client's, as sent
        assert a.headers["x-request-id"] and a.headers["x-ratelimit-limit"] == "1000"
    assert r.json()["received"] == 100_000


# --- the setting ---------------------------------------------------------------------------


def test_the_forwarder_setting_names_one_of_the_table() -> None:
    assert load_settings(env={}).forwarder == "aiohttp"
    assert load_settings(env={"AUTHGATE_FORWARDER": "httpx"}).forwarder == "httpx"
    assert set(proxy.FORWARDERS) == set(config.FORWARDERS)
    with pytest.raises(ConfigError) as bad:
        load_settings(env={"AUTHGATE_FORWARDER": "curl"})
    assert bad.value.problems == ["forwarder: 'curl' is not a forwarder: must be one of "
                                  "aiohttp, httpx"]
