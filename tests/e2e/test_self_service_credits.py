"""Self-service never grants credits (SPEC §13, README "Named limits and usage credits"): a
caller with a credit quota creates no tokens and no self caller PATCHes ``credits``; real
gateways on both backend pairs, the admin API over HTTP."""

from __future__ import annotations

import pytest

BOOT = "bootstrap-admin-secret-0123456789"
ADMIN = {"Authorization": f"Bearer {BOOT}"}
REFILL = {"amount": 10, "interval": "day"}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
async def gw(start_gateway):
    return await start_gateway(admin_token=BOOT)


async def _create(http, gw, headers=ADMIN, **body):
    body = {"subject": "s3", "name": "ci", "scopes": ["read"], **body}
    r = await http.post(f"{gw.admin}/v1/tokens", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


async def _spend(http, gw, secret: str, n: int) -> list[int]:
    return [(await http.get(f"{gw.proxy}/echo", headers=bearer(secret))).status_code
            for _ in range(n)]


def _refused_for_credits(r) -> bool:
    return r.status_code == 403 and r.json()["error_description"].startswith("credits")


async def test_a_self_caller_cannot_refill_its_own_credits(gw, http):
    """The attack: cache the record with one admin call, spend, PATCH the balance back."""
    me = await _create(http, gw, scopes=["read", "authgate:self"],
                       credits={"remaining": 10})
    h = bearer(me["token"])
    assert (await http.get(f"{gw.admin}/v1/tokens/{me['id']}", headers=h)).status_code == 200
    admitted = 0
    for _ in range(4):
        admitted += (await _spend(http, gw, me["token"], 10)).count(200)
        for body in ({"credits": {"remaining": 10}}, {"credits": None},
                     {"credits": {"remaining": 0, "refill": REFILL}}):
            r = await http.patch(f"{gw.admin}/v1/tokens/{me['id']}", headers=h, json=body)
            assert _refused_for_credits(r), (body, r.text)
    assert admitted == 10
    shown = (await http.get(f"{gw.admin}/v1/tokens/{me['id']}", headers=ADMIN)).json()
    assert shown["credits"] == {"remaining": 0, "refill": None}


async def test_a_caller_with_credits_cannot_create_tokens(gw, http):
    me = await _create(http, gw, scopes=["read", "authgate:self"],
                       credits={"remaining": 10})
    h = bearer(me["token"])
    assert (await _spend(http, gw, me["token"], 5)) == [200] * 5
    for body in ({"credits": {"remaining": 20}}, {"credits": {"remaining": 1}},
                 {"credits": {"remaining": 0, "refill": REFILL}}, {}):
        r = await http.post(f"{gw.admin}/v1/tokens", headers=h,
                            json={"subject": "s3", "name": "child", "scopes": ["read"], **body})
        assert _refused_for_credits(r), (body, r.text)
        assert "cannot create tokens" in r.json()["error_description"]
    listed = (await http.get(f"{gw.admin}/v1/tokens?subject=s3", headers=ADMIN)).json()
    assert [t["id"] for t in listed["items"]] == [me["id"]]


async def test_a_self_caller_cannot_multiply_or_refill_by_children(gw, http):
    """A caller without credits may hand out limited children, but never change their credits."""
    me = await _create(http, gw, scopes=["read", "authgate:self"])
    h = bearer(me["token"])
    child = await _create(http, gw, headers=h, credits={"remaining": 2, "refill": REFILL})
    assert child["credits"] == {"remaining": 2, "refill": REFILL}
    assert (await _spend(http, gw, child["token"], 3)) == [200, 200, 429]
    for body in ({"credits": {"remaining": 2}}, {"credits": None},
                 {"credits": {"remaining": 2, "refill": REFILL}}):
        for target in (child["id"], me["id"]):
            r = await http.patch(f"{gw.admin}/v1/tokens/{target}", headers=h, json=body)
            assert _refused_for_credits(r), (target, body, r.text)
    assert (await _spend(http, gw, child["token"], 1)) == [429]
    # other fields are still the caller's to change
    r = await http.patch(f"{gw.admin}/v1/tokens/{child['id']}", headers=h, json={"name": "x"})
    assert r.status_code == 200 and r.json()["credits"]["remaining"] == 0


async def test_a_self_rotation_moves_the_balance_and_grants_nothing(gw, http):
    me = await _create(http, gw, scopes=["read", "authgate:self"],
                       credits={"remaining": 6})
    assert (await _spend(http, gw, me["token"], 2)) == [200, 200]
    r = await http.post(f"{gw.admin}/v1/tokens/{me['id']}/rotate", headers=bearer(me["token"]),
                        json={"grace_s": 0})
    assert r.status_code == 201, r.text
    successor = r.json()
    for extra in ({"credits": {"remaining": 100}}, {"grace_s": 0, "credits": None}):
        r = await http.post(f"{gw.admin}/v1/tokens/{successor['id']}/rotate",
                            headers=bearer(successor["token"]), json=extra)
        assert r.status_code == 422, r.text
    codes = await _spend(http, gw, successor["token"], 8)
    codes += await _spend(http, gw, me["token"], 2)
    assert codes.count(200) <= 4, codes
