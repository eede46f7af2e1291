"""Self-service bounds (SPEC §7) end to end, on both backend pairs: a token with authgate:self
never becomes more than itself through the admin API (issue 9, finding 3).

Every escalation path the audit found, and its neighbours, is refused with 403 naming the field,
and the store is exactly as it was afterwards; what a self caller may do still works.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest

BOOT = "bootstrap-admin-secret-0123456789"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


ADMIN = bearer(BOOT)


async def create(http, gw, headers=ADMIN, **body):
    body = {"subject": "alice", "name": "t", "scopes": ["read"], **body}
    r = await http.post(f"{gw.admin}/v1/tokens", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


async def snapshot(http, gw):
    """Every record and every change event, as the bootstrap admin sees them."""
    await gw.gateway.usage.flush()
    tokens = (await http.get(f"{gw.admin}/v1/tokens?limit=500", headers=ADMIN)).json()["items"]
    events = (await http.get(f"{gw.admin}/v1/events?limit=500", headers=ADMIN)).json()["items"]
    # last_used_* move with every authenticated admin call; the rest must not move at all
    for t in tokens:
        t.pop("last_used_at"), t.pop("last_used_ip"), t.pop("usage_count")
    return tokens, [e for e in events if e["type"] not in QUIET]


# Events counted per request (reads, refusals): not changes to the store's tokens.
QUIET = {"admin_read", "auth_failed", "access_denied", "rate_limited"}


def later(**kw: float) -> str:
    return (datetime.now(UTC) + timedelta(**kw)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
async def gw(start_gateway):
    return await start_gateway(admin_token=BOOT, default_rate_limit="1000/minute")


@pytest.fixture
async def alice(gw, http):
    """A self-service token (1 day, 10/minute, read) and its subject's other tokens."""
    me = await create(http, gw, scopes=["authgate:self", "read"], expires_in="1d",
                      rate_limit="10/minute")
    return {
        "me": me,
        "admin": await create(http, gw, scopes=["authgate:admin"], expires_in="1h",
                              rate_limit="1/minute"),
        "star": await create(http, gw, scopes=["*"], expires_in="1h", rate_limit="1/minute"),
        "write": await create(http, gw, scopes=["read", "write"], expires_in="1h",
                              rate_limit="1/minute"),
        "longer": await create(http, gw, expires_in="30d", rate_limit="1/minute"),
        "never": await create(http, gw, rate_limit="1/minute"),
        "faster": await create(http, gw, expires_in="1h", rate_limit="100/minute"),
        "default": await create(http, gw, expires_in="1h"),  # 1000/minute, the default
        "ok": await create(http, gw, expires_in="1h", rate_limit="5/minute"),
    }


def escalations(t):
    """(method, path, body, the field the 403 names) for every way up the audit tried."""
    me, ok = t["me"]["id"], t["ok"]["id"]
    rotate = [("POST", f"/v1/tokens/{t[k]['id']}/rotate", {"grace_s": 0}, field)
              for k, field in (("admin", "scopes"), ("star", "scopes"), ("write", "scopes"),
                               ("longer", "expires_at"), ("never", "expires_at"),
                               ("faster", "rate_limit"), ("default", "rate_limit"))]
    patch = [("PATCH", f"/v1/tokens/{tid}", body, field) for tid, body, field in (
        (me, {"rate_limit": None}, "rate_limit"),         # lift its own limit to the default
        (me, {"rate_limit": "100/minute"}, "rate_limit"),
        (me, {"rate_limit": {"limit": 11, "window_s": 60}}, "rate_limit"),
        (me, {"expires_at": None}, "expires_at"),          # drop its own expiry
        (me, {"expires_at": later(days=2)}, "expires_at"),
        (me, {"scopes": ["authgate:self", "read", "write"]}, "scopes"),
        (ok, {"rate_limit": "1/second"}, "rate_limit"),
        (ok, {"rate_limit": None}, "rate_limit"),
        (ok, {"expires_at": None}, "expires_at"),
        (ok, {"expires_at": later(days=3)}, "expires_at"),
        (ok, {"scopes": ["read", "authgate:self"]}, "scopes"),
        (t["admin"]["id"], {"name": "harmless"}, "scopes"),    # no change to a wider token
        (t["faster"]["id"], {"rate_limit": "5/minute"}, "rate_limit"),  # nor a re-limit
        (t["never"]["id"], {"expires_at": later(hours=1)}, "expires_at"),
    )]
    make = [("POST", "/v1/tokens", {"subject": "alice", "name": "c", **body}, field)
            for body, field in (
                ({"rate_limit": "1/minute"}, "expires_at"),  # never expires
                ({"expires_in": "30d", "rate_limit": "1/minute"}, "expires_in"),
                ({"expires_at": later(days=2), "rate_limit": "1/minute"}, "expires_at"),
                ({"expires_in": 3600, "rate_limit": "100/minute"}, "rate_limit"),
                ({"expires_in": 3600}, "rate_limit"),  # the default is faster than 10/minute
                ({"expires_in": 3600, "rate_limit": "1/minute", "scopes": ["write"]}, "scopes"),
                ({"expires_in": 3600, "rate_limit": "1/minute", "role": "writer"}, "scopes"),
            )]
    return rotate + patch + make


async def test_every_escalation_is_refused_naming_the_field_and_changes_nothing(gw, http,
                                                                                  alice):
    headers = bearer(alice["me"]["token"])
    before = await snapshot(http, gw)
    for method, path, body, field in escalations(alice):
        r = await http.request(method, f"{gw.admin}{path}", json=body, headers=headers)
        assert r.status_code == 403, (method, path, body, r.text)
        assert r.json()["error"] == "insufficient_scope"
        assert r.json()["error_description"].startswith(f"{field}:"), (path, body, r.text)
        assert "token" not in r.json()  # no secret, ever
    assert await snapshot(http, gw) == before


async def test_what_a_self_caller_may_do_still_works(gw, http, alice):
    me, headers = alice["me"], bearer(alice["me"]["token"])
    child = await create(http, gw, headers=headers, expires_in=3600, rate_limit="10/minute")
    assert child["subject"] == "alice"
    r = await http.patch(f"{gw.admin}/v1/tokens/{alice['ok']['id']}", headers=headers,
                         json={"name": "narrower", "rate_limit": "1/minute",
                               "expires_at": later(minutes=30), "scopes": []})
    assert r.status_code == 200, r.text
    assert r.json()["rate_limit"] == {"limit": 1, "window_s": 60} and r.json()["scopes"] == []

    # a rotation inside the bounds: the successor never outlives the caller
    r = await http.post(f"{gw.admin}/v1/tokens/{me['id']}/rotate", headers=headers,
                        json={"grace_s": 60})
    assert r.status_code == 201, r.text
    assert r.json()["expires_at"] == me["expires_at"]  # capped at the caller's own end
    successor = r.json()
    assert (await http.get(f"{gw.proxy}/echo", headers=bearer(successor["token"]))
            ).status_code == 200

    # revoking or deleting is always allowed on the own subject, however wide the token
    r = await http.post(f"{gw.admin}/v1/tokens/{alice['admin']['id']}/revoke", headers=headers)
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    assert (await http.delete(f"{gw.admin}/v1/tokens/{alice['star']['id']}", headers=headers)
            ).status_code == 204
    r = await http.post(f"{gw.admin}/v1/families/{alice['never']['family']}/revoke",
                        headers=headers)
    assert r.json() == {"revoked": 1}


async def test_an_unlimited_default_is_infinitely_fast(start_gateway, http):
    gw = await start_gateway(admin_token=BOOT, default_rate_limit=None)
    limited = await create(http, gw, scopes=["authgate:self", "read"], rate_limit="10/minute")
    r = await http.post(f"{gw.admin}/v1/tokens", headers=bearer(limited["token"]),
                        json={"subject": "alice", "name": "c", "scopes": ["read"]})
    assert r.status_code == 403 and r.json()["error_description"].startswith("rate_limit:")
    unlimited = await create(http, gw, scopes=["authgate:self", "read"])
    r = await http.post(f"{gw.admin}/v1/tokens", headers=bearer(unlimited["token"]),
                        json={"subject": "alice", "name": "c", "scopes": ["read"],
                              "rate_limit": "1000/second"})
    assert r.status_code == 201, r.text


async def test_a_self_caller_sees_no_other_actors_addresses(gw, http, alice):
    me, headers = alice["me"], bearer(alice["me"]["token"])
    ua = {"User-Agent": "alice-ci/1.0"}
    child = await create(http, gw, headers={**headers, **ua}, expires_in=60,
                         rate_limit="1/minute")
    await http.post(f"{gw.admin}/v1/tokens/{alice['ok']['id']}/revoke",
                    headers={**ADMIN, "User-Agent": "ops-laptop"})

    r = await http.get(f"{gw.admin}/v1/events?limit=500", headers=headers)
    items = r.json()["items"]
    mine = [e for e in items if e["actor"] == f"self:{me['id']}" and e["type"] == "token_created"]
    assert [(e["token_id"], e["ip"], e["user_agent"]) for e in mine] == [
        (child["id"], "127.0.0.1", "alice-ci/1.0")]
    others = [e for e in items if e["actor"] != f"self:{me['id']}"]
    assert any(e["actor"] == "admin:bootstrap" for e in others)
    assert all(e["ip"] is None and e["user_agent"] is None for e in others), others

    r = await http.get(f"{gw.admin}/v1/events?format=csv&limit=500", headers=headers)
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert rows and all(row["ip"] == "" and row["user_agent"] == "" for row in rows
                        if row["actor"] != f"self:{me['id']}")
    # the admin still sees everything
    r = await http.get(f"{gw.admin}/v1/events?type=token_revoked", headers=ADMIN)
    assert r.json()["items"][0]["user_agent"] == "ops-laptop"
