"""Header rules, route matching and the local cache: pure logic, no sockets."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.cache import MISS, LocalCache, record_from_json, record_to_json
from gateway.config import RateLimit, Settings
from gateway.pipeline import Decision, Refusal, extract_credential, render_refusal
from gateway.proxy import HeaderRules
from gateway.ratelimit import LimitResult
from gateway.routes import Router
from gateway.store import TokenRecord

RECORD = TokenRecord(id="tok_1", subject="alice", name="ci", scopes=("read", "x:*"),
                     family="fam_1", token_hash="h", hint="agt_abcd",
                     created_at=datetime(2026, 1, 1, tzinfo=UTC), rate_limit=RateLimit(5, 60),
                     metadata={"k": "v"})


def test_routes_first_match_wins_and_star_matches_the_bare_prefix():
    router = Router(Settings(routes=[
        {"path": "/public/*", "auth": "none"},
        {"path": "/reports/*", "scopes": ["reports:read"]},
        {"path": "/*", "methods": ["POST"], "scopes": ["write"], "upstream": "http://u:2"},
        {"path": "/exact"},
    ]))
    assert not router.match("/public", "GET").auth_required
    assert not router.match("/public/a/b", "GET").auth_required
    assert router.match("/publicity", "GET").index == -1
    assert router.match("/reports", "GET").scopes == ("reports:read",)
    assert router.match("/x", "POST").upstream == "http://u:2"
    assert router.match("/exact", "GET").index == 3
    assert router.match("/x", "GET").index == -1 and router.match("/x", "GET").auth_required
    assert router.upstreams == {"http://127.0.0.1:9000", "http://u:2"}


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


def test_credential_extraction():
    assert extract_credential([(b"authorization", b"bearer abc")], None) == "abc"
    assert extract_credential([(b"x-api-key", b"k")], b"x-api-key") == "k"
    for headers in ([], [(b"authorization", b"Basic abc")], [(b"authorization", b"Bearer ")],
                    [(b"x-api-key", b"k")]):
        try:
            extract_credential(headers, None)
        except Refusal as r:
            assert r.status == 401 and r.reason == "no_credential"
        else:
            raise AssertionError(headers)
    try:
        extract_credential([(b"x-big", b"a" * 40_000), (b"authorization", b"Bearer x")], None)
    except Refusal as r:
        assert r.status == 431


def test_render_refusals():
    status, headers, body = render_refusal(Refusal(403, "insufficient_scope", "no",
                                                   scope="a b"))
    assert status == 403 and body["error"] == "insufficient_scope"
    assert dict(headers)[b"www-authenticate"].endswith(b'scope="a b"')
    limit = LimitResult(False, RateLimit(100, 60), 0, 17, 3)
    status, headers, body = render_refusal(Refusal(429, "rate_limited", "slow down",
                                                   limit=limit, retry_after=3))
    h = dict(headers)
    assert h[b"retry-after"] == b"3" and h[b"ratelimit-policy"] == b'"default";q=100;w=60'
    assert h[b"ratelimit"] == b'"default";r=0;t=17' and h[b"x-ratelimit-reset"] == b"17"


def test_local_cache_is_bounded_and_expires():
    now = [0.0]
    cache = LocalCache(ttl_s=5, max_entries=3, clock=lambda: now[0])
    for i in range(5):
        cache.put(str(i), RECORD)
    assert len(cache) == 3 and cache.get("0") is MISS and cache.get("4") is RECORD
    cache.put("neg", None)
    assert cache.get("neg") is None
    now[0] = 2.5  # negative entries are short-lived
    assert cache.get("neg") is MISS and cache.get("4") is RECORD
    now[0] = 6
    assert cache.get("4") is MISS


def test_record_json_round_trip():
    assert record_from_json(record_to_json(RECORD)) == RECORD
