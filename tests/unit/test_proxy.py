"""Header rules (SPEC §3 forwarding): what the proxy sends upstream and hands back. Pure logic."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.config import RateLimit, Settings
from gateway.pipeline import Decision
from gateway.proxy import HeaderRules
from gateway.store import TokenRecord

RECORD = TokenRecord(id="tok_1", subject="alice", name="ci", scopes=("read", "x:*"),
                     family="fam_1", token_hash="h", hint="agt_abcd",
                     created_at=datetime(2026, 1, 1, tzinfo=UTC), rate_limit=RateLimit(5, 60),
                     metadata={"k": "v"})


def test_request_headers_strip_credentials_spoofs_and_hop_by_hop():
    rules = HeaderRules(Settings(api_key_header="X-API-Key",
                                 identity_headers={"subject": "X-User"}))
    scope = {"headers": [
        (b"host", b"gw:8080"), (b"authorization", b"Bearer t"), (b"x-api-key", b"t"),
        (b"x-auth-anything", b"1"), (b"x_auth_subject", b"1"), (b"x-user", b"mallory"),
        (b"x_user", b"mallory"), (b"connection", b"close, x-secret"), (b"x-secret", b"1"),
        (b"te", b"trailers"), (b"keep-alive", b"5"), (b"x-forwarded-for", b"1.2.3.4"),
        (b"accept", b"*/*")], "client": ("9.9.9.9", 1234), "scheme": "https"}
    out = rules.request(scope, Decision(route=None, record=RECORD), b"rid")  # type: ignore[arg-type]
    names = [n.lower() for n, _ in out]
    assert names.count("x-user") == 1 and dict(out)["X-User"] == "alice"
    for gone in ("authorization", "x-api-key", "x-auth-anything", "x_auth_subject", "x_user",
                 "connection", "x-secret", "te", "keep-alive", "host"):
        assert gone not in names
    d = dict(out)
    assert d["X-Forwarded-For"] == "1.2.3.4, 9.9.9.9" and d["X-Forwarded-Proto"] == "https"
    assert d["X-Forwarded-Host"] == "gw:8080" and d["X-Request-Id"] == "rid"
    assert d["X-Auth-Scopes"] == "read x:*" and d["accept"] == "*/*"


def test_response_headers_drop_hop_by_hop_and_connection_named():
    out = HeaderRules.response(((b"Connection", b"x-a"), (b"X-A", b"1"), (b"Transfer-Encoding",
                                b"chunked"), (b"Content-Type", b"text/plain")))
    assert out == [(b"content-type", b"text/plain")]


def test_request_headers_judged_the_same_when_the_verdicts_are_remembered():
    """Verdicts are remembered per header name: the second and later requests (and names past
    the cap, judged afresh each time) come out exactly as the first."""
    rules = HeaderRules(Settings(identity_headers={"subject": "X-User"}))
    scope = {"headers": [
        (b"host", b"gw"), (b"x-user", b"mallory"), (b"connection", b"x-forwarded-for, x-b"),
        (b"x-forwarded-for", b"6.6.6.6"), (b"x-b", b"1"), (b"x-c", b"2"),
        (b"x-request-id", b"client"), (b"authorization", b"Bearer t")],
        "client": ("9.9.9.9", 1), "scheme": "http"}
    decision = Decision(route=None, record=RECORD)  # type: ignore[arg-type]
    first = rules.request(scope, decision, b"rid")
    assert first == rules.request(scope, decision, b"rid")
    d = dict(first)
    # the Connection header names X-Forwarded-For: the client's chain is dropped, the peer kept
    assert d["X-Forwarded-For"] == "9.9.9.9" and d["X-Forwarded-Host"] == "gw"
    assert "x-b" not in d and d["x-c"] == "2" and d["X-User"] == "alice"
    assert [n for n, _ in first].count("X-Request-Id") == 1 and d["X-Request-Id"] == "rid"
    many = {"headers": [(f"x-n{i}".encode(), b"v") for i in range(1000)],
            "client": ("9.9.9.9", 1), "scheme": "http"}
    once = rules.request(many, decision, b"rid")
    assert once == rules.request(many, decision, b"rid")
    assert sum(1 for n, _ in once if n.startswith("x-n")) == 1000
    assert len(rules._verdicts) <= 256  # a client cannot grow it past the cap


def test_response_headers_of_a_304_lose_content_length():
    out = HeaderRules.response(((b"Content-Length", b"10"), (b"ETag", b'"a"')), 304)
    assert out == [(b"etag", b'"a"')]
    assert HeaderRules.response(((b"Content-Length", b"10"),), 200) == [(b"content-length", b"10")]


def test_upstream_failures_map_to_502_and_504():
    """One mapping for the proxy and the WebSocket relay (aiohttp's exception hierarchy:
    a connection timeout is a TimeoutError too, and must say so)."""
    import aiohttp

    from gateway.proxy import UPSTREAM_FAILURES, upstream_failure

    cases = [(aiohttp.ConnectionTimeoutError(), 504, "no connection"),
             (aiohttp.SocketTimeoutError(), 504, "did not answer"),
             (TimeoutError(), 504, "did not answer"),
             (aiohttp.ClientConnectorError(None, OSError(111, "refused")), 502, "unreachable"),
             (ConnectionResetError(), 502, "unreachable (ConnectionResetError)")]
    for error, status, text in cases:
        assert isinstance(error, UPSTREAM_FAILURES)
        e = upstream_failure(error)
        assert (e.status, text in e.description) == (status, True), error
        assert e.reason == ("upstream_timeout" if status == 504 else "upstream_error")
