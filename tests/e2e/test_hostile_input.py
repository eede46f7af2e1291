"""Hostile values on the admin API and the CLI (issue 9, findings 8 and 10): each is a clear
4xx (or CLI exit 2 / 1) naming the field, never a 500 or a traceback, and changes nothing.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from gateway.authority import Actor, TokenAuthority
from gateway.config import Settings
from tests.e2e.test_cli import authgate

BOOT = "bootstrap-admin-secret-0123456789"
ADMIN = {"Authorization": f"Bearer {BOOT}"}
BIG = 10**30


@pytest.fixture
async def gw(start_gateway):
    return await start_gateway(admin_token=BOOT, failed_auth_limit=None)


async def create(http, gw, **body):
    body = {"subject": "alice", "name": "t", **body}
    r = await http.post(f"{gw.admin}/v1/tokens", json=body, headers=ADMIN)
    assert r.status_code == 201, r.text
    return r.json()


async def state(http, gw):
    """What a refused request must leave as it was: the records and the change events."""
    tokens = (await http.get(f"{gw.admin}/v1/tokens?limit=500", headers=ADMIN))
    assert tokens.status_code == 200, tokens.text  # listing never breaks for anyone
    events = (await http.get(f"{gw.admin}/v1/events?limit=500", headers=ADMIN)).json()["items"]
    return tokens.json()["items"], [e for e in events if e["type"] != "admin_read"]


def nested(levels: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"k": value}
    return value


def cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


async def test_deep_metadata_is_refused_and_the_token_list_keeps_working(gw, http):
    t = await create(http, gw)
    assert (await create(http, gw, metadata=nested(8)))["metadata"] == nested(8)
    before = await state(http, gw)
    for body in ({"subject": "a", "name": "b", "metadata": nested(800)},
                 {"subject": "a", "name": "b", "metadata": nested(9)},
                 {"subject": "a", "name": "b", "metadata": {"l": [[[[[[[[1]]]]]]]]}}):
        r = await http.post(f"{gw.admin}/v1/tokens", json=body, headers=ADMIN)
        assert r.status_code == 422, r.text
        assert r.json()["error_description"].startswith("metadata:")
    r = await http.patch(f"{gw.admin}/v1/tokens/{t['id']}", json={"metadata": nested(800)},
                         headers=ADMIN)
    assert r.status_code == 422 and r.json()["error_description"].startswith("metadata:")
    # values no store or response can carry: NaN, infinity, NUL, a lone surrogate
    for raw in (b'{"x": NaN}', b'{"x": Infinity}', b'{"x": 1e999}', b'{"x": "a\\u0000"}',
                b'{"x\\u0000": 1}', b'{"x": "\\udcff"}'):
        body = b'{"subject": "a", "name": "b", "metadata": ' + raw + b"}"
        r = await http.post(f"{gw.admin}/v1/tokens", content=body,
                            headers={**ADMIN, "content-type": "application/json"})
        assert r.status_code in (400, 422), (raw, r.text)
        assert "metadata" in r.json()["error_description"], (raw, r.text)
    assert await state(http, gw) == before


async def test_huge_numbers_and_cursors_are_4xx_naming_the_field(gw, http):
    t = await create(http, gw, expires_in="1h")
    before = await state(http, gw)
    posts = [
        ("/v1/tokens", {"subject": "a", "name": "b", "expires_in": BIG}, "body.expires_in"),
        ("/v1/tokens", {"subject": "a", "name": "b", "expires_in": "999999999d"}, "expires_in"),
        ("/v1/tokens", {"subject": "a", "name": "b", "expires_in": 1e308}, "body.expires_in"),
        ("/v1/tokens", {"subject": "a", "name": "b", "rate_limit": "9999999999/second"},
         "rate_limit"),
        ("/v1/tokens", {"subject": "a", "name": "b", "rate_limit": "99999999999999/day"},
         "body.rate_limit"),
        ("/v1/tokens", {"subject": "a", "name": "b", "rate_limit": {"limit": BIG, "window_s": 1}},
         "body.rate_limit"),
        ("/v1/tokens", {"subject": "a", "name": "b", "rate_limit": {"limit": 1, "window_s": BIG}},
         "body.rate_limit"),
        ("/v1/tokens", {"subject": "a", "name": "b", "expires_at": "9999-12-31T23:59:59-23:00"},
         "body.expires_at"),
        (f"/v1/tokens/{t['id']}/rotate", {"grace_s": BIG}, "body.grace_s"),
        ("/v1/cleanup", {"older_than_s": BIG}, "body.older_than_s"),
    ]
    for path, body, field in posts:
        r = await http.post(f"{gw.admin}{path}", json=body, headers=ADMIN)
        assert r.status_code == 422, (path, body, r.text)
        assert r.json()["error_description"].startswith(field), (body, r.text)
    huge = cursor("c1:" + "9" * 100)
    for query, field in ((f"cursor={huge}", "cursor"),
                         (f"cursor={cursor('c1:' + str(2**63))}", "cursor"),
                         (f"limit={BIG}", "query.limit"), (f"limit={'9' * 5000}", "query.limit")):
        for path in ("/v1/tokens", "/v1/events"):
            r = await http.get(f"{gw.admin}{path}?{query}", headers=ADMIN)
            assert r.status_code in (400, 422), (path, query, r.text)
            assert r.json()["error_description"].startswith(field), (path, query, r.text)
    r = await http.get(f"{gw.admin}/v1/tokens/{t['id']}/usage?days={BIG}", headers=ADMIN)
    assert r.status_code == 422 and r.json()["error_description"].startswith("query.days")
    assert await state(http, gw) == before


async def test_text_fields_take_any_language_but_no_control_characters(gw, http):
    t = await create(http, gw, subject="Łukasz", name="日本語 ✓ 😀")
    assert (t["subject"], t["name"]) == ("Łukasz", "日本語 ✓ 😀")
    before = await state(http, gw)
    for field, value in (("subject", "a\x85b"), ("subject", "a\u2028b"), ("name", "a\x00b"),
                         ("name", "\x1b[31mred"), ("subject", "a\x7f")):
        r = await http.post(f"{gw.admin}/v1/tokens", headers=ADMIN,
                            json={"subject": "a", "name": "b", field: value})
        assert r.status_code == 422, (field, value, r.text)
        assert r.json()["error_description"].startswith(f"body.{field}"), r.text
    r = await http.post(f"{gw.admin}/v1/tokens", headers={**ADMIN, "content-type":
                        "application/json"}, content=b'{"subject": "a\\udcff", "name": "b"}')
    assert r.status_code == 422 and r.json()["error_description"].startswith("body.subject")
    for reason in ("x\x00", "x\x85", "x\u2029"):
        r = await http.post(f"{gw.admin}/v1/tokens/{t['id']}/revoke", headers=ADMIN,
                            json={"reason": reason})
        assert r.status_code == 422 and r.json()["error_description"].startswith("body.reason")
    # filters and path segments a store cannot hold: 4xx, not a driver error
    for query, field in (("subject=%00", "subject"), ("family=a%00", "family"),
                         ("subject=%C2%85", "subject")):
        r = await http.get(f"{gw.admin}/v1/tokens?{query}", headers=ADMIN)
        assert r.status_code == 422 and r.json()["error_description"].startswith(field), query
    for query, field in (("token_id=%00", "token_id"), ("type=%00", "type"),
                         ("subject=%00", "subject")):
        r = await http.get(f"{gw.admin}/v1/events?{query}", headers=ADMIN)
        assert r.status_code == 422 and r.json()["error_description"].startswith(field), query
    assert (await http.get(f"{gw.admin}/v1/tokens/%00", headers=ADMIN)).status_code == 404
    assert (await http.post(f"{gw.admin}/v1/tokens/a%00/revoke", headers=ADMIN)
            ).status_code == 404
    for path, field in (("/v1/subjects/a%00/revoke", "subject"),
                        ("/v1/families/a%00/revoke", "family")):
        r = await http.post(f"{gw.admin}{path}", headers=ADMIN)
        assert r.status_code == 422 and r.json()["error_description"].startswith(field), path
    assert await state(http, gw) == before


async def test_wrong_json_types_are_422_naming_the_field(gw, http):
    t = await create(http, gw)
    before = await state(http, gw)
    cases = [
        ("POST", "/v1/tokens", {"subject": 7, "name": "b"}, "body.subject"),
        ("POST", "/v1/tokens", {"subject": "a", "name": []}, "body.name"),
        ("POST", "/v1/tokens", {"subject": "a", "name": "b", "scopes": {"a": 1}}, "body.scopes"),
        ("POST", "/v1/tokens", {"subject": "a", "name": "b", "expires_in": True},
         "body.expires_in"),
        ("POST", "/v1/tokens", {"subject": "a", "name": "b", "expires_in": 1.5},
         "body.expires_in"),
        ("POST", "/v1/tokens", {"subject": "a", "name": "b", "rate_limit": 5}, "body.rate_limit"),
        ("POST", "/v1/tokens", {"subject": "a", "name": "b", "metadata": "x"}, "body.metadata"),
        ("PATCH", f"/v1/tokens/{t['id']}", {"rate_limit": True}, "body.rate_limit"),
        ("PATCH", f"/v1/tokens/{t['id']}", {"expires_at": 12}, "body.expires_at"),
        ("POST", f"/v1/tokens/{t['id']}/rotate", {"grace_s": "1"}, "body.grace_s"),
        ("POST", f"/v1/tokens/{t['id']}/revoke", {"reason": {}}, "body.reason"),
        ("POST", "/v1/cleanup", {"older_than_s": 1.0}, "body.older_than_s"),
    ]
    for method, path, body, field in cases:
        r = await http.request(method, f"{gw.admin}{path}", json=body, headers=ADMIN)
        assert r.status_code == 422, (path, body, r.text)
        assert r.json()["error_description"].startswith(field), (path, body, r.text)
    assert await state(http, gw) == before


async def test_revoke_all_takes_only_json_true(gw, http):
    t = await create(http, gw)
    for confirm in (1, 1.0, "yes", "true", "True", [True], {"": True}):
        r = await http.post(f"{gw.admin}/v1/revoke-all", headers=ADMIN,
                            json={"confirm": confirm, "reason": "drill"})
        assert r.status_code == 422, (confirm, r.text)
        assert r.json()["error_description"].startswith("body.confirm"), r.text
    assert (await http.get(f"{gw.admin}/v1/tokens/{t['id']}", headers=ADMIN)
            ).json()["status"] == "active"
    r = await http.post(f"{gw.admin}/v1/revoke-all", headers=ADMIN,
                        json={"confirm": True, "reason": "drill"})
    assert r.json() == {"revoked": 1}


async def far_token(store, settings) -> str:
    """A token created a day ago that expires in 9999: its successor, keeping the lifetime
    length, would expire after 9999-12-31 (the rotation used to overflow: 500, traceback)."""
    yesterday = datetime.now(UTC) - timedelta(days=1)
    auth = TokenAuthority(store, settings, clock=lambda: yesterday)
    record, _ = await auth.create(Actor("cli:test"), subject="a", name="b",
                                  expires_at=datetime(9999, 12, 31, tzinfo=UTC))
    return record.id


async def test_rotating_a_token_that_expires_in_9999_caps_its_successor(gw, http):
    token_id = await far_token(gw.gateway.store, gw.gateway.settings)
    r = await http.post(f"{gw.admin}/v1/tokens/{token_id}/rotate", headers=ADMIN)
    assert r.status_code == 201, r.text
    assert r.json()["expires_at"] == "9999-12-31T23:59:59Z"
    assert (await http.get(f"{gw.proxy}/echo", headers={
        "Authorization": f"Bearer {r.json()['token']}"})).status_code == 200


# --- the CLI ------------------------------------------------------------------------------


@pytest.fixture
def cli_store(store_url, store):  # `store` migrates and empties the database first
    return store_url


async def test_cli_rotates_a_token_that_expires_in_9999(cli_store, store):
    token_id = await far_token(store, Settings(pepper="cli-test"))
    out = authgate("tokens", "rotate", token_id, "--json", store=cli_store).stdout
    assert json.loads(out)["expires_at"] == "9999-12-31T23:59:59Z"
