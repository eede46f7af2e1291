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
