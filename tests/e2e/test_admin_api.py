"""The admin API end to end: real uvicorn on both backend pairs, talked to over HTTP."""

from __future__ import annotations

import asyncio
import csv
import io
import re

import pytest

from gateway.authority import Actor

BOOT = "bootstrap-admin-secret-0123456789"
CLI = Actor("cli:test")


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


ADMIN = bearer(BOOT)


@pytest.fixture
async def gw(start_gateway):
    return await start_gateway(admin_token=BOOT)


async def _create(http, gw, headers=ADMIN, **body):
    body = {"subject": "alice", "name": "ci", "scopes": ["read"], **body}
    r = await http.post(f"{gw.admin}/v1/tokens", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


async def test_bootstrap_admin_runs_the_whole_lifecycle_and_each_change_is_audited(gw, http):
    created = await _create(http, gw, scopes=["read", "reports:*"], expires_in="30d",
                            rate_limit="100/minute", metadata={"team": "ops"})
    secret, tid = created["token"], created["id"]
    assert created["status"] == "active" and created["rate_limit"] == {"limit": 100,
                                                                        "window_s": 60}
    assert "token_hash" not in created and secret.startswith("agt_")
    assert (await http.get(f"{gw.proxy}/echo", headers=bearer(secret))).status_code == 200

    got = (await http.get(f"{gw.admin}/v1/tokens/{tid}", headers=ADMIN)).json()
    assert got["id"] == tid and "token" not in got  # the secret is shown once only
    r = await http.patch(f"{gw.admin}/v1/tokens/{tid}", headers=ADMIN,
                         json={"name": "renamed", "scopes": ["read"], "rate_limit": None})
    assert r.status_code == 200 and r.json()["name"] == "renamed"
    assert r.json()["rate_limit"] is None and r.json()["scopes"] == ["read"]

    r = await http.post(f"{gw.admin}/v1/tokens/{tid}/rotate", json={"grace_s": 0},
                        headers=ADMIN)
    assert r.status_code == 201, r.text
    successor = r.json()
    assert successor["family"] == created["family"] and successor["rotated_from"] == tid
    assert (await http.get(f"{gw.proxy}/echo", headers=bearer(successor["token"]))
            ).status_code == 200

    r = await http.post(f"{gw.admin}/v1/tokens/{successor['id']}/revoke",
                        json={"reason": "leaked"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    assert r.json()["revoked_reason"] == "leaked"
    assert (await http.get(f"{gw.proxy}/echo", headers=bearer(successor["token"]))
            ).status_code == 401
    again = await http.post(f"{gw.admin}/v1/tokens/{successor['id']}/revoke", headers=ADMIN)
    assert again.status_code == 200 and again.json()["revoked_at"] == r.json()["revoked_at"]

    assert (await http.delete(f"{gw.admin}/v1/tokens/{tid}", headers=ADMIN)).status_code == 204
    r = await http.get(f"{gw.admin}/v1/tokens/{tid}", headers=ADMIN)
    assert r.status_code == 404 and r.json()["error"] == "not_found"

    events = (await http.get(f"{gw.admin}/v1/events?limit=500", headers=ADMIN)).json()["items"]
    mine = [(e["type"], e["actor"]) for e in events if e["type"].startswith("token_")]
    assert set(mine) >= {("token_created", "admin:bootstrap"), ("token_updated", "admin:bootstrap"),
                         ("token_rotated", "admin:bootstrap"), ("token_revoked", "admin:bootstrap"),
                         ("token_deleted", "admin:bootstrap")}
    assert all(e["ip"] == "127.0.0.1" for e in events if e["actor"] == "admin:bootstrap")


async def test_token_with_admin_scope_may_do_everything_and_is_named_as_actor(gw, http):
    admin = await _create(http, gw, subject="ops", scopes=["authgate:admin"])
    headers = bearer(admin["token"])
    other = await _create(http, gw, headers=headers, subject="bob")
    assert (await http.get(f"{gw.admin}/v1/stats", headers=headers)).status_code == 200
    r = await http.post(f"{gw.admin}/v1/subjects/bob/revoke", json={}, headers=headers)
    assert r.json() == {"revoked": 1}
    events = (await http.get(f"{gw.admin}/v1/events?token_id={other['id']}",
                             headers=headers)).json()["items"]
    assert {e["actor"] for e in events} == {f"admin:{admin['id']}"}


async def test_self_service_token_manages_only_its_own_subject(gw, http):
    me = await _create(http, gw, subject="alice", scopes=["authgate:self", "read", "meter:*"])
    bobs = await _create(http, gw, subject="bob")
    headers = bearer(me["token"])

    child = await _create(http, gw, headers=headers, subject="alice", scopes=["read", "meter:x"])
    assert child["subject"] == "alice"
    for scope in ("write", "*", "authgate:self", "authgate:admin"):
        r = await http.post(f"{gw.admin}/v1/tokens", headers=headers,
                            json={"subject": "alice", "name": "n", "scopes": [scope]})
        assert r.status_code == 403 and scope in r.json()["error_description"], (scope, r.text)
        assert f'scope="{scope}"' in r.headers["www-authenticate"]
    r = await http.post(f"{gw.admin}/v1/tokens", headers=headers,
                        json={"subject": "bob", "name": "n", "scopes": ["read"]})
    assert r.status_code == 403
    r = await http.patch(f"{gw.admin}/v1/tokens/{child['id']}", headers=headers,
                         json={"scopes": ["write"]})
    assert r.status_code == 403

    listed = (await http.get(f"{gw.admin}/v1/tokens", headers=headers)).json()["items"]
    assert {t["subject"] for t in listed} == {"alice"} and len(listed) == 2
    assert (await http.get(f"{gw.admin}/v1/tokens?subject=bob", headers=headers)
            ).status_code == 403
    assert (await http.get(f"{gw.admin}/v1/events?subject=bob", headers=headers)
            ).status_code == 403
    # another subject's token by id: 404, as if it did not exist
    for method, path in (("GET", ""), ("PATCH", ""), ("POST", "/revoke"), ("POST", "/rotate"),
                         ("DELETE", ""), ("GET", "/usage")):
        r = await http.request(method, f"{gw.admin}/v1/tokens/{bobs['id']}{path}",
                               headers=headers, json={} if method == "PATCH" else None)
        assert r.status_code == 404, (method, path, r.text)
    r = await http.post(f"{gw.admin}/v1/families/{bobs['family']}/revoke", headers=headers)
    assert r.status_code == 404
    for path, body in (("/v1/stats", None), ("/v1/revoke-all", {"confirm": True, "reason": "x"}),
                       ("/v1/cleanup", {})):
        r = await http.request("GET" if body is None else "POST", f"{gw.admin}{path}",
                               headers=headers, json=body)
        assert r.status_code == 403 and "authgate:admin" in r.json()["error_description"]
    assert (await http.get(f"{gw.admin}/v1/tokens/{bobs['id']}", headers=ADMIN)
            ).json()["status"] == "active"

    r = await http.post(f"{gw.admin}/v1/tokens/{child['id']}/revoke", headers=headers)
    assert r.status_code == 200
    events = (await http.get(f"{gw.admin}/v1/events?token_id={child['id']}",
                             headers=headers)).json()["items"]
    assert {e["actor"] for e in events} == {f"self:{me['id']}"}


async def test_refused_callers(gw, http):
    plain = await _create(http, gw, scopes=["read"])
    r = await http.get(f"{gw.admin}/v1/tokens")
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="authgate"'
    for bad in ("garbage", "agt_" + "A" * 38, BOOT[:-1], "x" * 10_000):
        r = await http.get(f"{gw.admin}/v1/tokens", headers=bearer(bad))
        assert r.status_code == 401 and r.json()["error"] == "invalid_token", bad[:20]
    r = await http.get(f"{gw.admin}/v1/tokens", headers=bearer(plain["token"]))
    assert r.status_code == 403 and r.json()["error"] == "insufficient_scope"
    admin = await _create(http, gw, scopes=["authgate:admin"])
    await http.post(f"{gw.admin}/v1/tokens/{admin['id']}/revoke", headers=ADMIN)
    r = await http.get(f"{gw.admin}/v1/tokens", headers=bearer(admin["token"]))
    assert r.status_code == 401


async def test_refused_credentials_on_the_admin_api_hit_the_per_ip_limit(start_gateway, http):
    gw = await start_gateway(admin_token=BOOT, failed_auth_limit="3/minute")
    codes = [(await http.get(f"{gw.admin}/v1/tokens", headers=bearer("agt_nope"))).status_code
             for _ in range(5)]
    assert codes == [401, 401, 401, 429, 429]


BAD_BODIES = [
    ({"subject": "a"}, "body.name"),
    ({"subject": "a", "name": "b", "surprise": 1}, "body.surprise"),
    ({"subject": "a", "name": "b", "scopes": "read"}, "body.scopes"),
    ({"subject": "a", "name": "b", "scopes": ["bad scope"]}, "body.scopes.0"),
    ({"subject": 7, "name": "b"}, "body.subject"),
    ({"subject": "   ", "name": "b"}, "subject"),
    ({"subject": "a\nb", "name": "b"}, "body.subject"),
    ({"subject": "a" * 201, "name": "b"}, "body.subject"),
    ({"subject": "a", "name": "b", "role": "nope"}, "role"),
    ({"subject": "a", "name": "b", "expires_in": "banana"}, "body.expires_in"),
    ({"subject": "a", "name": "b", "expires_in": 0}, "body.expires_in"),
    ({"subject": "a", "name": "b", "expires_in": "1d", "expires_at": "2099-01-01T00:00:00Z"},
     "expires_in"),
    ({"subject": "a", "name": "b", "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
    ({"subject": "a", "name": "b", "expires_at": "2099-01-01T00:00:00"}, "body.expires_at"),
    ({"subject": "a", "name": "b", "expires_at": "9999-12-31T23:59:59-23:00"}, "body.expires_at"),
    ({"subject": "a", "name": "b", "rate_limit": "5/fortnight"}, "body.rate_limit"),
    ({"subject": "a", "name": "b", "rate_limit": {"limit": 0, "window_s": 1}},
     "body.rate_limit"),
    ({"subject": "a", "name": "b", "metadata": {"k": "x" * 5000}}, "metadata"),
    ({"subject": "a", "name": "b", "metadata": [1]}, "body.metadata"),
    ([], "body"),
    ("not an object", "body"),
]


async def test_bad_input_is_a_4xx_naming_the_field_and_changes_nothing(gw, http):
    base = await _create(http, gw)
    before = (await http.get(f"{gw.admin}/v1/stats", headers=ADMIN)).json()
    events_before = await _changes(http, gw)
    for body, field in BAD_BODIES:
        r = await http.post(f"{gw.admin}/v1/tokens", json=body, headers=ADMIN)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error_description"].startswith(field), (body, r.text)
    r = await http.post(f"{gw.admin}/v1/tokens", content=b'{"subject": "a", "name":',
                        headers={**ADMIN, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    for path, body, field in (
            (f"/v1/tokens/{base['id']}/rotate", {"grace_s": -1}, "body.grace_s"),
            (f"/v1/tokens/{base['id']}/rotate", {"grace_s": "1h"}, "body.grace_s"),
            (f"/v1/tokens/{base['id']}/revoke", {"reason": 5}, "body.reason"),
            ("/v1/revoke-all", {"reason": "x"}, "body.confirm"),
            ("/v1/revoke-all", {"confirm": "yes", "reason": "x"}, "body.confirm"),
            ("/v1/revoke-all", {"confirm": True}, "body.reason")):
        r = await http.post(f"{gw.admin}{path}", json=body, headers=ADMIN)
        assert r.status_code == 422 and r.json()["error_description"].startswith(field), r.text
    for patch, field in (({"subject": "mallory"}, "body.subject"), ({"name": None}, "body.name"),
                         ({"scopes": None}, "body.scopes"), ({"metadata": None}, "body.metadata"),
                         ({"expires_at": "2000-01-01T00:00:00Z"}, "expires_at")):
        r = await http.patch(f"{gw.admin}/v1/tokens/{base['id']}", json=patch, headers=ADMIN)
        assert r.status_code == 422 and r.json()["error_description"].startswith(field), patch
    r = await http.get(f"{gw.admin}/v1/tokens?bogus=1")  # no credential: 401 before anything
    assert r.status_code == 401
    for query, field in (("limit=0", "query.limit"), ("limit=501", "query.limit"),
                         ("limit=x", "query.limit"), ("status=gone", "query.status"),
                         ("cursor=bm9wZQ", "cursor")):
        r = await http.get(f"{gw.admin}/v1/tokens?{query}", headers=ADMIN)
        assert r.status_code == 422 and r.json()["error_description"].startswith(field), query
    r = await http.get(f"{gw.admin}/v1/events?since=yesterday", headers=ADMIN)
    assert r.status_code == 422 and "since" in r.json()["error_description"]

    assert (await http.get(f"{gw.admin}/v1/stats", headers=ADMIN)).json() == before
    assert await _changes(http, gw) == events_before
    assert (await http.get(f"{gw.admin}/v1/tokens/{base['id']}", headers=ADMIN)
            ).json()["status"] == "active"


async def _changes(http, gw):
    """The audit log without the read and refusal events (the checks above are reads and
    refusals themselves, counted per request: SPEC §8)."""
    await gw.gateway.usage.flush()
    items = (await http.get(f"{gw.admin}/v1/events?limit=500", headers=ADMIN)).json()["items"]
    quiet = {"admin_read", "auth_failed", "access_denied", "rate_limited"}
    return [e for e in items if e["type"] not in quiet]


async def test_reads_are_audited_with_the_caller_in_batches(gw, http):
    t = await _create(http, gw, subject="ops", scopes=["authgate:self"])
    for _ in range(3):
        await http.get(f"{gw.admin}/v1/tokens/{t['id']}", headers=bearer(t["token"]))
    await http.get(f"{gw.admin}/v1/tokens", headers=ADMIN)
    await http.post(f"{gw.admin}/v1/introspect", data={"token": t["token"]}, headers=ADMIN)
    await gw.gateway.usage.flush()
    reads = (await http.get(f"{gw.admin}/v1/events?type=admin_read", headers=ADMIN)).json()
    # A periodic flush may fall between the reads: the same key then has two batched rows.
    seen_counts: dict[tuple[str, str, str | None], int] = {}
    for e in reads["items"]:
        key = (e["actor"], e["details"]["reason"], e["token_id"])
        seen_counts[key] = seen_counts.get(key, 0) + e["details"]["count"]
    seen = {(*key, count) for key, count in seen_counts.items()}
    assert (f"self:{t['id']}", "GET /v1/tokens/{token_id}", t["id"], 3) in seen
    assert ("admin:bootstrap", "GET /v1/tokens", None, 1) in seen
    assert ("admin:bootstrap", "POST /v1/introspect", None, 1) in seen


@pytest.mark.parametrize("backend_pair", ["postgresql+redis"], indirect=True)
async def test_a_revoke_through_one_replicas_api_is_refused_by_the_other(start_gateway, http):
    a, b = await start_gateway(admin_token=BOOT), await start_gateway(admin_token=BOOT)
    t = await _create(http, a)
    assert (await http.get(f"{b.proxy}/echo", headers=bearer(t["token"]))).status_code == 200
    await http.post(f"{a.admin}/v1/tokens/{t['id']}/revoke", headers=ADMIN)
    for _ in range(50):  # the broadcast takes milliseconds; local_cache_ttl_s bounds it anyway
        if (await http.get(f"{b.proxy}/echo", headers=bearer(t["token"]))).status_code == 401:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("replica b still admits a token revoked through replica a's API")


async def test_oversized_bodies_and_headers_are_refused(gw, http):
    huge = {"subject": "a", "name": "b", "metadata": {"k": "x" * 70_000}}
    r = await http.post(f"{gw.admin}/v1/tokens", json=huge, headers=ADMIN)
    assert r.status_code == 413 and r.json()["error"] == "request_too_large"

    async def chunks():
        for _ in range(20):
            yield b"x" * 8192

    r = await http.post(f"{gw.admin}/v1/tokens", content=chunks(),
                        headers={**ADMIN, "content-type": "application/json"})
    assert r.status_code == 413
    r = await http.get(f"{gw.admin}/v1/tokens", headers={**ADMIN, "X-Big": "y" * 40_000})
    assert r.status_code in (400, 431)
    assert (await http.get(f"{gw.admin}/v1/stats", headers=ADMIN)).json()["total"] == 0


async def test_cross_site_requests_are_refused_and_change_nothing(gw, http):
    t = await _create(http, gw)
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": "null"}):
        r = await http.post(f"{gw.admin}/v1/tokens/{t['id']}/revoke", headers={**ADMIN,
                                                                                 **headers})
        assert r.status_code == 403 and r.json()["error"] == "cross_site_request"
    same = {"Origin": gw.admin, "Sec-Fetch-Site": "same-origin"}
    assert (await http.get(f"{gw.admin}/v1/tokens/{t['id']}", headers=ADMIN)
            ).json()["status"] == "active"
    r = await http.post(f"{gw.admin}/v1/tokens/{t['id']}/revoke", headers={**ADMIN, **same})
    assert r.status_code == 200 and r.json()["status"] == "revoked"


async def test_introspection_answers_with_the_proxys_checks(gw, http, clock):
    t = await _create(http, gw, scopes=["read", "write"], expires_in=3600)
    me = await _create(http, gw, subject="bob", scopes=["authgate:self", "read"])
    r = await http.post(f"{gw.admin}/v1/introspect", headers=ADMIN,
                        data={"token": t["token"], "token_type_hint": "access_token"})
    body = r.json()
    assert r.status_code == 200 and body["active"] is True
    assert body["scope"] == "read write" and body["sub"] == "alice" and body["jti"] == t["id"]
    assert body["exp"] - body["iat"] == 3600
    for token in ("garbage", "agt_" + "A" * 38, ""):
        r = await http.post(f"{gw.admin}/v1/introspect", data={"token": token}, headers=ADMIN)
        assert r.status_code in (200, 422) and r.json().get("active") in (False, None)
        if r.status_code == 200:
            assert r.json() == {"active": False}
    # a self caller learns nothing of another subject's token
    r = await http.post(f"{gw.admin}/v1/introspect", data={"token": t["token"]},
                        headers=bearer(me["token"]))
    assert r.json() == {"active": False}
    r = await http.post(f"{gw.admin}/v1/introspect", data={"token": me["token"]},
                        headers=bearer(me["token"]))
    assert r.json()["active"] is True
    await http.post(f"{gw.admin}/v1/tokens/{t['id']}/revoke", headers=ADMIN)
    r = await http.post(f"{gw.admin}/v1/introspect", data={"token": t["token"]}, headers=ADMIN)
    assert r.json() == {"active": False}
    assert (await http.post(f"{gw.admin}/v1/introspect", data={"token": t["token"]})
            ).status_code == 401


async def test_introspecting_a_rotated_out_token_after_grace_is_a_replay(gw, http):
    t = await _create(http, gw)
    r = await http.post(f"{gw.admin}/v1/tokens/{t['id']}/rotate", json={"grace_s": 0},
                        headers=ADMIN)
    successor = r.json()
    r = await http.post(f"{gw.admin}/v1/introspect", data={"token": t["token"]}, headers=ADMIN)
    assert r.json() == {"active": False}
    got = (await http.get(f"{gw.admin}/v1/tokens/{successor['id']}", headers=ADMIN)).json()
    assert got["status"] == "revoked"  # the family was revoked, as on the proxy
    types = [e["type"] for e in (await http.get(
        f"{gw.admin}/v1/events?type=token_replay_detected", headers=ADMIN)).json()["items"]]
    assert types == ["token_replay_detected"]


async def test_usage_per_day_and_last_ips(gw, http):
    t = await _create(http, gw)
    for _ in range(3):
        assert (await http.get(f"{gw.proxy}/echo", headers=bearer(t["token"]))).status_code == 200
    await gw.gateway.usage.flush()
    r = await http.get(f"{gw.admin}/v1/tokens/{t['id']}/usage?days=7", headers=ADMIN)
    body = r.json()
    assert r.status_code == 200 and len(body["days"]) == 7
    assert body["days"][-1]["requests"] == 3 and sum(d["requests"] for d in body["days"]) == 3
    assert [(i["ip"], i["requests"]) for i in body["last_ips"]] == [("127.0.0.1", 3)]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["last_ips"][0]["last_seen_at"])
    got = (await http.get(f"{gw.admin}/v1/tokens/{t['id']}", headers=ADMIN)).json()
    assert got["usage_count"] == 3 and got["last_used_ip"] == "127.0.0.1"
    r = await http.get(f"{gw.admin}/v1/tokens/{t['id']}/usage?days=0", headers=ADMIN)
    assert r.status_code == 422


async def test_stats_and_csv_exports(gw, http):
    a = await _create(http, gw, subject="alice", name="=HYPERLINK(\"http://x\")",
                      rate_limit={"limit": 5, "window_s": 60}, metadata={"team": "ops"})
    await _create(http, gw, subject="alice")
    b = await _create(http, gw, subject="bob")
    await http.post(f"{gw.admin}/v1/tokens/{b['id']}/revoke", headers=ADMIN)
    stats = (await http.get(f"{gw.admin}/v1/stats", headers=ADMIN)).json()
    assert (stats["total"], stats["active"], stats["revoked"], stats["expired"]) == (3, 2, 1, 0)
    assert stats["created_24h"] == 3
    assert stats["top_subjects"] == [{"subject": "alice", "active": 2}]

    for url, headers in ((f"{gw.admin}/v1/tokens?format=csv", ADMIN),
                         (f"{gw.admin}/v1/tokens", {**ADMIN, "Accept": "text/csv"})):
        r = await http.get(url, headers=headers)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert len(rows) == 3 and {row["id"] for row in rows} >= {a["id"], b["id"]}
        assert "token_hash" not in rows[0] and "token" not in rows[0]
        named = next(row for row in rows if row["id"] == a["id"])
        assert named["name"] == "'=HYPERLINK(\"http://x\")"  # no formula in a spreadsheet
        assert named["rate_limit"] == "5/minute" and named["metadata"] == '{"team": "ops"}'
    r = await http.get(f"{gw.admin}/v1/tokens?format=csv&status=revoked", headers=ADMIN)
    assert [row["id"] for row in csv.DictReader(io.StringIO(r.text))] == [b["id"]]
    r = await http.get(f"{gw.admin}/v1/events?format=csv&type=token_created", headers=ADMIN)
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 3 and {row["actor"] for row in rows} == {"admin:bootstrap"}


async def test_cursor_pagination_visits_every_token_once(gw, http):
    ids = [(await _create(http, gw, name=f"t{i}"))["id"] for i in range(7)]
    seen, cursor = [], None
    while True:
        url = f"{gw.admin}/v1/tokens?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = (await http.get(url, headers=ADMIN)).json()
        seen += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]


async def test_revoke_all_needs_confirmation_and_spares_the_bootstrap_secret(gw, http):
    admin = await _create(http, gw, scopes=["authgate:admin"])
    await _create(http, gw)
    r = await http.post(f"{gw.admin}/v1/revoke-all", json={"confirm": False, "reason": "x"},
                        headers=ADMIN)
    assert r.status_code == 422
    r = await http.post(f"{gw.admin}/v1/revoke-all", json={"confirm": True, "reason": "breach"},
                        headers=bearer(admin["token"]))
    assert r.json() == {"revoked": 2}
    assert (await http.get(f"{gw.admin}/v1/tokens", headers=bearer(admin["token"]))
            ).status_code == 401
    assert (await http.get(f"{gw.admin}/v1/tokens", headers=ADMIN)).status_code == 200


async def test_concurrent_rotations_make_exactly_one_successor(gw, http):
    t = await _create(http, gw)
    results = await asyncio.gather(*[
        http.post(f"{gw.admin}/v1/tokens/{t['id']}/rotate", headers=ADMIN) for _ in range(10)])
    codes = sorted(r.status_code for r in results)
    assert codes == [201] + [409] * 9
    family = (await http.get(f"{gw.admin}/v1/tokens?family={t['family']}", headers=ADMIN)
              ).json()["items"]
    assert len(family) == 2


async def test_many_calls_at_once(gw, http):
    created = await asyncio.gather(*[
        http.post(f"{gw.admin}/v1/tokens", json={"subject": f"s{i % 4}", "name": f"n{i}"},
                  headers=ADMIN) for i in range(60)])
    assert [r.status_code for r in created] == [201] * 60
    ids = {r.json()["id"] for r in created}
    assert len(ids) == 60 and len({r.json()["token"] for r in created}) == 60
    target = created[0].json()["id"]
    revoked = await asyncio.gather(*[
        http.post(f"{gw.admin}/v1/tokens/{target}/revoke", headers=ADMIN) for _ in range(20)],
        *[http.get(f"{gw.admin}/v1/tokens?limit=500", headers=ADMIN) for _ in range(20)])
    assert {r.status_code for r in revoked} == {200}
    assert len({r.json()["revoked_at"] for r in revoked[:20]}) == 1
    events = (await http.get(f"{gw.admin}/v1/events?token_id={target}&type=token_revoked",
                             headers=ADMIN)).json()["items"]
    assert len(events) == 1  # revoking twice changes nothing, even at once
    stats = (await http.get(f"{gw.admin}/v1/stats", headers=ADMIN)).json()
    assert (stats["total"], stats["revoked"]) == (60, 1)


async def test_the_admin_api_is_not_served_on_the_proxy_port(gw, http):
    admin = await _create(http, gw, scopes=["authgate:admin"])
    r = await http.get(f"{gw.proxy}/v1/tokens", headers=ADMIN)  # bootstrap is not a token
    assert r.status_code == 401
    r = await http.get(f"{gw.proxy}/v1/tokens", headers=bearer(admin["token"]))
    assert r.status_code == 200 and r.json()["path"] == "/v1/tokens"  # the upstream's echo
    r = await http.get(f"{gw.proxy}/admin", headers=bearer(admin["token"]))
    assert r.json()["path"] == "/admin"


async def test_openapi_document_lists_every_endpoint(gw, http):
    doc = (await http.get(f"{gw.admin}/openapi.json")).json()
    paths = {(p, method.upper()) for p, ops in doc["paths"].items() for method in ops}
    assert paths >= {
        ("/v1/tokens", "POST"), ("/v1/tokens", "GET"), ("/v1/tokens/{token_id}", "GET"),
        ("/v1/tokens/{token_id}", "PATCH"), ("/v1/tokens/{token_id}", "DELETE"),
        ("/v1/tokens/{token_id}/revoke", "POST"), ("/v1/tokens/{token_id}/rotate", "POST"),
        ("/v1/tokens/{token_id}/usage", "GET"), ("/v1/subjects/{subject}/revoke", "POST"),
        ("/v1/families/{family}/revoke", "POST"), ("/v1/revoke-all", "POST"),
        ("/v1/stats", "GET"), ("/v1/events", "GET"), ("/v1/introspect", "POST"),
        ("/v1/authorize", "GET"), ("/v1/authorize", "POST"), ("/healthz", "GET"),
        ("/readyz", "GET"), ("/metrics", "GET")}
    create = doc["paths"]["/v1/tokens"]["post"]
    assert create["responses"]["422"]["content"]["application/json"]["schema"]["$ref"] \
        .endswith("/Error")


async def test_forward_auth_is_not_judged_by_the_admin_apis_guard(gw, http):
    t = await _create(http, gw)
    # a proxy asking for a decision copies the original request's (cross-origin) headers
    r = await http.post(f"{gw.admin}/v1/authorize", headers={
        **bearer(t["token"]), "Origin": "https://app.example", "Sec-Fetch-Site": "cross-site",
        "X-Forwarded-Method": "POST", "X-Forwarded-Uri": "/upload"})
    assert r.status_code == 200 and r.headers["x-auth-subject"] == "alice"


async def test_api_responses_are_never_cached(gw, http):
    r = await http.post(f"{gw.admin}/v1/tokens", json={"subject": "a", "name": "b"},
                        headers=ADMIN)
    assert r.status_code == 201 and r.headers["cache-control"] == "no-store"
    r = await http.get(f"{gw.admin}/v1/tokens", headers=ADMIN)
    assert r.headers["cache-control"] == "no-store"
