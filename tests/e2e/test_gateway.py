"""The proxy and the decision endpoint end to end: real uvicorn, real upstream, both pairs."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.authority import Actor

ADMIN = Actor("cli:test")


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def metric(gw, name: str, **labels: str) -> float:
    return gw.metrics.registry.get_sample_value(name, labels or None) or 0.0


async def test_forwards_with_identity_headers_and_strips_the_credential(start_gateway, http):
    rg = await start_gateway()
    record, secret = await rg.gateway.authority.create(ADMIN, subject="alice", name="ci",
                                                       scopes=["read", "x:*"])
    r = await http.get(f"{rg.proxy}/echo/a%20b?q=1&q=2", headers={
        **bearer(secret), "X-Auth-Subject": "mallory", "x-auth-admin": "1",
        "X_Auth_Token_Id": "spoof", "X-Request-Id": "req-123", "X-Forwarded-For": "10.1.1.1",
        "Connection": "keep-alive, x-drop-me", "X-Drop-Me": "1", "X-Keep": "kept"})
    assert r.status_code == 200, r.text
    seen = r.json()
    headers = {}
    for k, v in seen["headers"]:
        headers.setdefault(k.lower(), []).append(v)
    assert seen["path"] == "/echo/a b" and seen["query"] == "q=1&q=2"
    assert headers["x-auth-subject"] == ["alice"]
    assert headers["x-auth-token-id"] == [record.id]
    assert headers["x-auth-token-name"] == ["ci"]
    assert headers["x-auth-scopes"] == ["read x:*"]
    assert "authorization" not in headers and "x-auth-admin" not in headers
    assert "x_auth_token_id" not in headers and "x-drop-me" not in headers
    assert headers["x-keep"] == ["kept"]
    assert headers["x-request-id"] == ["req-123"] and r.headers["x-request-id"] == "req-123"
    assert headers["x-forwarded-for"] == ["10.1.1.1, 127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"] == [rg.proxy.removeprefix("http://")]
    # response: hop-by-hop (and Connection-named) headers removed, rate-limit headers added
    assert r.headers["x-upstream"] == "yes" and "x-hop" not in r.headers
    assert r.headers["ratelimit-policy"] == '"default";q=1000;w=60'
    assert r.headers["x-ratelimit-limit"] == "1000"
    assert r.headers["ratelimit"].startswith('"default";r=999;t=')


async def test_request_id_is_generated_when_absent(start_gateway, http):
    rg = await start_gateway()
    _, secret = await rg.gateway.authority.create(ADMIN, subject="a", name="b")
    r = await http.get(f"{rg.proxy}/echo", headers=bearer(secret))
    sent = dict((k.lower(), v) for k, v in r.json()["headers"])
    assert len(r.headers["x-request-id"]) == 32 and sent["x-request-id"] == r.headers[
        "x-request-id"]


async def test_refusals(start_gateway, http, clock):
    rg = await start_gateway(routes=[{"path": "/reports/*", "scopes": ["reports:read"]}],
                             failed_auth_limit=None)
    auth = rg.gateway.authority
    r = await http.get(f"{rg.proxy}/echo")
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="authgate"'
    assert r.json()["error"] == "invalid_request"
    r = await http.get(f"{rg.proxy}/echo", headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert r.status_code == 401
    for bad in ("garbage", "agt_" + "A" * 38, "agt_" + "A" * 5000):
        r = await http.get(f"{rg.proxy}/echo", headers=bearer(bad))
        assert r.status_code == 401 and r.json()["error"] == "invalid_token"
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
    _, unknown = await auth.create(ADMIN, subject="a", name="x")
    await auth.delete(ADMIN, (await auth.list())[0][0].id)
    assert (await http.get(f"{rg.proxy}/echo", headers=bearer(unknown))).status_code == 401

    _reader, secret = await auth.create(ADMIN, subject="a", name="r", scopes=["read"])
    r = await http.get(f"{rg.proxy}/reports/q1", headers=bearer(secret))
    assert r.status_code == 403 and r.json()["error"] == "insufficient_scope"
    assert 'scope="reports:read"' in r.headers["www-authenticate"]
    r = await http.get(f"{rg.proxy}/reports", headers=bearer(secret))
    assert r.status_code == 403
    _, wide = await auth.create(ADMIN, subject="a", name="w", scopes=["reports:*"])
    assert (await http.get(f"{rg.proxy}/reports/q1", headers=bearer(wide))).status_code == 200

    _, short = await auth.create(ADMIN, subject="a", name="s", expires_in=1)
    assert (await http.get(f"{rg.proxy}/echo", headers=bearer(short))).status_code == 200
    await asyncio.sleep(1.1)  # expiry is judged per request, not by cache age
    r = await http.get(f"{rg.proxy}/echo", headers=bearer(short))
    assert r.status_code == 401 and "expired" in r.json()["error_description"]


async def test_revocation_takes_effect_at_once(start_gateway, http):
    rg = await start_gateway()
    record, secret = await rg.gateway.authority.create(ADMIN, subject="a", name="b")
    assert (await http.get(f"{rg.proxy}/echo", headers=bearer(secret))).status_code == 200
    await rg.gateway.authority.revoke(ADMIN, record.id)
    r = await http.get(f"{rg.proxy}/echo", headers=bearer(secret))
    assert r.status_code == 401 and "revoked" in r.json()["error_description"]


async def test_garbage_never_reaches_cache_or_store(start_gateway, http):
    rg = await start_gateway(failed_auth_limit=None)
    gw = rg.gateway
    before = metric(gw, "authgate_store_lookups_total")
    for i in range(20):
        await http.get(f"{rg.proxy}/echo", headers=bearer(f"agt_{'Z' * 37}{i % 10}"))
    assert metric(gw, "authgate_store_lookups_total") == before
    assert metric(gw, "authgate_cache_lookups_total", layer="local") == 0
    assert metric(gw, "authgate_malformed_credentials_total") == 20


async def test_token_rate_limit_429_with_headers(start_gateway, http):
    rg = await start_gateway()
    _, secret = await rg.gateway.authority.create(ADMIN, subject="a", name="b",
                                                  rate_limit="3/minute")
    codes = [(await http.get(f"{rg.proxy}/echo", headers=bearer(secret))) for _ in range(5)]
    assert [r.status_code for r in codes] == [200, 200, 200, 429, 429]
    assert [r.headers["x-ratelimit-remaining"] for r in codes[:3]] == ["2", "1", "0"]
    refused = codes[3]
    assert refused.json()["error"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 20
    assert refused.headers["ratelimit-policy"] == '"default";q=3;w=60'
    assert refused.headers["ratelimit"].startswith('"default";r=0;')


async def test_route_rate_limit_and_public_routes(start_gateway, http):
    rg = await start_gateway(routes=[
        {"path": "/public/*", "auth": "none", "rate_limit": "2/minute"},
        {"path": "/write", "methods": ["POST"], "scopes": ["write"], "rate_limit": "1/minute"}])
    assert (await http.get(f"{rg.proxy}/public/x")).status_code == 200
    assert (await http.get(f"{rg.proxy}/public")).status_code == 200
    assert (await http.get(f"{rg.proxy}/public/y")).status_code == 429
    _, secret = await rg.gateway.authority.create(ADMIN, subject="a", name="b", scopes=["write"])
    assert (await http.post(f"{rg.proxy}/write", headers=bearer(secret))).status_code == 200
    assert (await http.post(f"{rg.proxy}/write", headers=bearer(secret))).status_code == 429
    # the route's method filter: GET /write falls through to the default route
    assert (await http.get(f"{rg.proxy}/write", headers=bearer(secret))).status_code == 200


async def test_failed_credentials_are_limited_per_ip(start_gateway, http):
    rg = await start_gateway(failed_auth_limit="5/minute")
    codes = [(await http.get(f"{rg.proxy}/echo", headers=bearer("nope"))).status_code
             for _ in range(7)]
    assert codes == [401] * 5 + [429] * 2
    await rg.gateway.usage.flush()
    events, _ = await rg.gateway.authority.events(type="auth_failed")
    assert sum(e.details["count"] for e in events) == 5  # the 401s
    # SPEC §8: a 429 is a rate_limited event (the client address's limit), not auth_failed.
    limited, _ = await rg.gateway.authority.events(type="rate_limited")
    assert [(e.details["reason"], e.details["count"]) for e in limited] == [("client_ip", 2)]


async def test_upstream_unreachable_502_and_timeout_504(start_gateway, http):
    from tests.e2e.conftest import free_port

    rg = await start_gateway(routes=[{"path": "/dead/*", "upstream":
                                      f"http://127.0.0.1:{free_port()}"}],
                             upstream_timeout_s=0.5)
    _, secret = await rg.gateway.authority.create(ADMIN, subject="a", name="b")
    r = await http.get(f"{rg.proxy}/dead/x", headers=bearer(secret))
    assert r.status_code == 502 and r.json()["error"] == "upstream_error"
    r = await http.get(f"{rg.proxy}/slow?s=3", headers=bearer(secret))
    assert r.status_code == 504 and r.json()["error"] == "upstream_timeout"
    assert metric(rg.gateway, "authgate_requests_total", outcome="upstream_error") == 1
    assert metric(rg.gateway, "authgate_requests_total", outcome="upstream_timeout") == 1


async def test_redirects_are_passed_back_not_followed(start_gateway, http):
    rg = await start_gateway()
    _, secret = await rg.gateway.authority.create(ADMIN, subject="a", name="b")
    r = await http.get(f"{rg.proxy}/redirect", headers=bearer(secret))
    assert r.status_code == 302 and r.headers["location"] == "http://127.0.0.1:1/elsewhere"


async def test_huge_headers_are_refused(start_gateway, http):
    rg = await start_gateway()
    _, secret = await rg.gateway.authority.create(ADMIN, subject="a", name="b")
    r = await http.get(f"{rg.proxy}/echo", headers={**bearer(secret), "X-Big": "a" * 40_000})
    assert r.status_code in (400, 431)


async def test_bodies_stream_both_ways(start_gateway, http):
    rg = await start_gateway()
    _, secret = await rg.gateway.authority.create(ADMIN, subject="a", name="b")
    size = 32 * 1024 * 1024

    async def gen():
        chunk = b"y" * 65536
        for _ in range(size // len(chunk)):
            yield chunk

    r = await http.post(f"{rg.proxy}/upload", headers=bearer(secret), content=gen())
    assert r.status_code == 200 and r.json()["received"] == size
    got = 0
    async with http.stream("GET", f"{rg.proxy}/bytes?n={size}", headers=bearer(secret)) as r:
        assert r.status_code == 200
        async for chunk in r.aiter_raw():
            got += len(chunk)
    assert got == size


async def test_many_concurrent_requests(start_gateway, http):
    rg = await start_gateway()
    secrets_ = [(await rg.gateway.authority.create(ADMIN, subject=f"s{i}", name="n"))[1]
                for i in range(10)]
    results = await asyncio.gather(*(http.get(f"{rg.proxy}/echo", headers=bearer(
        secrets_[i % 10])) for i in range(200)))
    assert [r.status_code for r in results] == [200] * 200


async def test_usage_counts_are_exact_after_flush(start_gateway, http):
    rg = await start_gateway()
    record, secret = await rg.gateway.authority.create(ADMIN, subject="a", name="b")
    await asyncio.gather(*(http.get(f"{rg.proxy}/echo", headers=bearer(secret))
                           for _ in range(37)))
    await rg.gateway.usage.flush()
    stored = await rg.gateway.authority.get(record.id)
    assert stored.usage_count == 37 and stored.last_used_ip == "127.0.0.1"
    days = await rg.gateway.store.daily_usage(record.id, stored.created_at.date())
    assert [n for _, n in days] == [37]


async def test_forward_auth_decision_endpoint(start_gateway, http):
    rg = await start_gateway(routes=[{"path": "/admin/*", "scopes": ["admin"]}])
    _, secret = await rg.gateway.authority.create(ADMIN, subject="alice", name="n",
                                                  scopes=["read"])
    r = await http.get(f"{rg.admin}/v1/authorize", headers={**bearer(secret),
                                                             "X-Forwarded-Uri": "/x?y=1"})
    assert r.status_code == 200 and r.headers["x-auth-subject"] == "alice"
    assert r.headers["x-ratelimit-limit"] == "1000"
    r = await http.get(f"{rg.admin}/v1/authorize", headers={**bearer(secret),
                                                             "X-Original-URI": "/admin/z"})
    assert r.status_code == 403
    # Envoy ext_authz style: the original method, and the original path after the prefix
    r = await http.delete(f"{rg.admin}/v1/authorize/admin/z", headers=bearer(secret))
    assert r.status_code == 403
    r = await http.put(f"{rg.admin}/v1/authorize/other", headers=bearer(secret))
    assert r.status_code == 200
    r = await http.post(f"{rg.admin}/v1/authorize", headers={"X-Forwarded-Method": "GET"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="authgate"'
    # never on the proxy port: that path is forwarded like any other
    r = await http.get(f"{rg.proxy}/v1/authorize", headers=bearer(secret))
    assert r.json()["path"] == "/v1/authorize"


async def test_health_readiness_and_metrics(start_gateway, http):
    rg = await start_gateway()
    assert (await http.get(f"{rg.admin}/healthz")).json() == {"status": "ok"}
    assert (await http.get(f"{rg.admin}/readyz")).json() == {"status": "ok"}
    _, secret = await rg.gateway.authority.create(ADMIN, subject="a", name="b")
    await http.get(f"{rg.proxy}/echo", headers=bearer(secret))
    text = (await http.get(f"{rg.admin}/metrics")).text
    assert 'authgate_requests_total{outcome="ok"} 1.0' in text
    assert secret not in text and secret[:8] not in text


async def test_replay_of_rotated_token_revokes_family_through_the_gateway(start_gateway, http):
    rg = await start_gateway()
    auth = rg.gateway.authority
    old, old_secret = await auth.create(ADMIN, subject="a", name="b")
    _new, new_secret, _ = await auth.rotate(ADMIN, old.id, 1)
    assert (await http.get(f"{rg.proxy}/echo", headers=bearer(old_secret))).status_code == 200
    await asyncio.sleep(1.1)
    assert (await http.get(f"{rg.proxy}/echo", headers=bearer(old_secret))).status_code == 401
    assert (await http.get(f"{rg.proxy}/echo", headers=bearer(new_secret))).status_code == 401
    assert len((await auth.events(type="token_replay_detected"))[0]) >= 1


@pytest.mark.parametrize("backend_pair", ["postgresql+redis"], indirect=True)
async def test_two_replicas_share_rate_limit_and_revocation(start_gateway, http):
    a, b = await start_gateway(), await start_gateway()
    _record, secret = await a.gateway.authority.create(ADMIN, subject="a", name="b",
                                                      rate_limit="20/minute")
    results = await asyncio.gather(*(http.get(f"{(a, b)[i % 2].proxy}/echo",
                                              headers=bearer(secret)) for i in range(60)))
    assert sum(r.status_code == 200 for r in results) == 20
    assert sum(r.status_code == 429 for r in results) == 40

    _, other = await a.gateway.authority.create(ADMIN, subject="c", name="d")
    for rg in (a, b):  # warm both replicas' in-process caches
        assert (await http.get(f"{rg.proxy}/echo", headers=bearer(other))).status_code == 200
    other_id = (await a.gateway.authority.list(subject="c"))[0][0].id
    started = time.perf_counter()
    await a.gateway.authority.revoke(ADMIN, other_id)
    while (await http.get(f"{b.proxy}/echo", headers=bearer(other))).status_code == 200:
        assert time.perf_counter() - started < 1.0, "revocation did not reach replica b"
        await asyncio.sleep(0.005)
    elapsed_ms = (time.perf_counter() - started) * 1e3
    print(f"revocation propagation to the other replica: {elapsed_ms:.1f} ms")


@pytest.mark.parametrize("backend_pair", ["postgresql+redis"], indirect=True)
async def test_cli_revocation_reaches_a_running_gateway_at_once(start_gateway, http,
                                                                backend_pair):
    import json
    import os
    import sys

    rg = await start_gateway(local_cache_ttl_s=60)
    record, secret = await rg.gateway.authority.create(ADMIN, subject="a", name="b")
    assert (await http.get(f"{rg.proxy}/echo", headers=bearer(secret))).status_code == 200
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHGATE_")} | {
        "AUTHGATE_STORE": backend_pair[0], "AUTHGATE_CACHE": backend_pair[1]}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "tokens", "revoke", record.id, "--json", env=env,
        stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and json.loads(out)["status"] == "revoked"
    assert (await http.get(f"{rg.proxy}/echo", headers=bearer(secret))).status_code == 401


async def test_repeated_replays_count_as_refused_credentials(start_gateway, http):
    rg = await start_gateway(failed_auth_limit="2/minute")
    old, old_secret = await rg.gateway.authority.create(ADMIN, subject="a", name="b")
    await rg.gateway.authority.rotate(ADMIN, old.id, 0)  # no grace: the old secret is dead
    codes = [(await http.get(f"{rg.proxy}/echo", headers=bearer(old_secret))).status_code
             for _ in range(4)]
    assert codes == [401, 401, 429, 429]
