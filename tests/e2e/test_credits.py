"""Named limits and usage credits (SPEC §13) end to end: real gateways (both backend pairs),
the admin API over HTTP, and the CLI in a subprocess."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from datetime import UTC, datetime

import pytest

from tests.e2e.test_cli import authgate

BOOT = "bootstrap-admin-secret-0123456789"
ADMIN = {"Authorization": f"Bearer {BOOT}"}
NAMED = [{"name": "burst", "limit": 3, "window_s": 1},
         {"name": "hourly", "limit": 100, "window_s": 3600}]


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
async def gw(start_gateway):
    return await start_gateway(admin_token=BOOT)


async def _create(http, gw, headers=ADMIN, status=201, **body):
    body = {"subject": "alice", "name": "ci", "scopes": ["read"], **body}
    r = await http.post(f"{gw.admin}/v1/tokens", json=body, headers=headers)
    assert r.status_code == status, r.text
    return r.json()


def _seconds_to_midnight() -> float:
    now = datetime.now(UTC)
    midnight = datetime.fromordinal(now.date().toordinal() + 1).replace(tzinfo=UTC)
    return (midnight - now).total_seconds()


async def test_named_limits_are_listed_by_name_and_the_tightest_is_in_x_headers(gw, http):
    created = await _create(http, gw, rate_limit=NAMED)
    assert created["rate_limit"] == NAMED and created["credits"] is None
    r = await http.get(f"{gw.proxy}/echo", headers=bearer(created["token"]))
    assert r.status_code == 200, r.text
    assert r.headers["ratelimit-policy"] == '"burst";q=3;w=1, "hourly";q=100;w=3600'
    assert re.fullmatch(r'"burst";r=2;t=1, "hourly";r=99;t=\d+', r.headers["ratelimit"])
    assert r.headers["x-ratelimit-limit"] == "3" and r.headers["x-ratelimit-remaining"] == "2"
    got = [await http.get(f"{gw.proxy}/echo", headers=bearer(created["token"]))
           for _ in range(3)]
    assert [g.status_code for g in got] == [200, 200, 429]
    refused = got[2]
    assert refused.json()["error"] == "rate_limited"
    assert refused.headers["ratelimit-policy"] == '"burst";q=3;w=1, "hourly";q=100;w=3600'
    assert refused.headers["x-ratelimit-limit"] == "3"
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert 1 <= int(refused.headers["retry-after"]) <= 2
    # forward auth carries the same headers
    await asyncio.sleep(1.1)
    d = await http.get(f"{gw.admin}/v1/authorize", headers=bearer(created["token"]))
    assert d.status_code == 200 and d.headers["ratelimit-policy"].startswith('"burst";q=3')


async def test_single_limit_forms_are_unchanged(gw, http):
    created = await _create(http, gw, rate_limit="5/minute", credits={"remaining": 10})
    assert created["rate_limit"] == {"limit": 5, "window_s": 60}
    r = await http.get(f"{gw.proxy}/echo", headers=bearer(created["token"]))
    assert r.status_code == 200
    assert r.headers["ratelimit-policy"] == '"default";q=5;w=60'
    assert r.headers["ratelimit"].startswith('"default";r=4;t=')


async def test_credits_run_out_with_credits_exhausted_and_a_retry_after_the_refill(gw, http):
    created = await _create(http, gw, credits={"remaining": 3, "refill": {
        "amount": 50, "interval": "day"}})
    assert created["credits"] == {"remaining": 3, "refill": {"amount": 50, "interval": "day"}}
    got = [await http.get(f"{gw.proxy}/echo", headers=bearer(created["token"]))
           for _ in range(5)]
    assert [g.status_code for g in got] == [200, 200, 200, 429, 429]
    body = got[3].json()
    assert body["error"] == "credits_exhausted" and body["error_description"]
    retry = int(got[3].headers["retry-after"])
    assert 1 <= retry <= _seconds_to_midnight() + 2  # no later than the next refill
    # the default limit's headers, as on any 429 of a limited token
    assert got[3].headers["ratelimit-policy"] == '"default";q=1000;w=60'
    # the store shows what is left to lease out: nothing
    shown = (await http.get(f"{gw.admin}/v1/tokens/{created['id']}", headers=ADMIN)).json()
    assert shown["credits"]["remaining"] == 0
    usage = (await http.get(f"{gw.admin}/v1/tokens/{created['id']}/usage",
                            headers=ADMIN)).json()
    assert usage["credits"] == {"remaining": 0, "refill": {"amount": 50, "interval": "day"}}
    # forward auth refuses alike
    d = await http.get(f"{gw.admin}/v1/authorize", headers=bearer(created["token"]))
    assert d.status_code == 429 and d.json()["error"] == "credits_exhausted"


async def test_credits_without_refill_have_no_retry_after(gw, http):
    created = await _create(http, gw, credits={"remaining": 0, "refill": None})
    r = await http.get(f"{gw.proxy}/echo", headers=bearer(created["token"]))
    assert r.status_code == 429 and r.json()["error"] == "credits_exhausted"
    assert "retry-after" not in r.headers  # waiting would not help


async def test_credits_are_exact_across_two_replicas(start_gateway, http):
    a = await start_gateway(admin_token=BOOT)
    b = await start_gateway(admin_token=BOOT)
    created = await _create(http, a, credits={"remaining": 23, "refill": None},
                            rate_limit="1000/second")
    results = await asyncio.gather(*(
        http.get(f"{(a, b)[i % 2].proxy}/echo", headers=bearer(created["token"]))
        for i in range(60)))
    codes = [r.status_code for r in results]
    assert codes.count(200) == 23 and codes.count(429) == 37
    assert all(r.json()["error"] == "credits_exhausted" for r in results if r.status_code == 429)


async def test_a_restart_keeps_the_balance_and_never_grants_more(start_gateway, http):
    first = await start_gateway(admin_token=BOOT)
    created = await _create(http, first, credits={"remaining": 30, "refill": None})
    h = bearer(created["token"])
    before = [(await http.get(f"{first.proxy}/echo", headers=h)).status_code for _ in range(7)]
    assert before == [200] * 7
    await first.stop()  # a restart; with Redis its counter survives, in memory it is gone
    second = await start_gateway(admin_token=BOOT)
    after = [(await http.get(f"{second.proxy}/echo", headers=h)).status_code
             for _ in range(30)]
    lease = 3  # a tenth of the balance: what a lost counter may cost, at most
    assert 23 - lease <= after.count(200) <= 23
    assert after[after.count(200):] == [429] * (30 - after.count(200))


async def test_a_new_balance_by_patch_takes_effect(gw, http):
    created = await _create(http, gw, credits={"remaining": 1})
    h = bearer(created["token"])
    assert (await http.get(f"{gw.proxy}/echo", headers=h)).status_code == 200
    assert (await http.get(f"{gw.proxy}/echo", headers=h)).status_code == 429
    r = await http.patch(f"{gw.admin}/v1/tokens/{created['id']}", headers=ADMIN,
                         json={"credits": {"remaining": 2, "refill": None}})
    assert r.status_code == 200 and r.json()["credits"]["remaining"] == 2
    await asyncio.sleep(0.3)  # within the revocation bound, typically milliseconds
    codes = [(await http.get(f"{gw.proxy}/echo", headers=h)).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    r = await http.patch(f"{gw.admin}/v1/tokens/{created['id']}", headers=ADMIN,
                         json={"credits": None})
    assert r.status_code == 200 and r.json()["credits"] is None
    await asyncio.sleep(0.3)
    assert (await http.get(f"{gw.proxy}/echo", headers=h)).status_code == 200


@pytest.mark.parametrize(("body", "field"), [
    ({"rate_limit": [{"name": "a", "limit": 1, "window_s": 1},
                     {"name": "a", "limit": 2, "window_s": 60}]}, "rate_limit[1].name"),
    ({"rate_limit": [{"name": "Bad Name", "limit": 1, "window_s": 1}]}, "rate_limit"),
    ({"rate_limit": [{"name": "a", "limit": 0, "window_s": 1}]}, "rate_limit"),
    ({"rate_limit": [{"name": "a", "limit": 1, "window_s": -5}]}, "rate_limit"),
    ({"rate_limit": [{"name": "a", "limit": "10", "window_s": 1}]}, "rate_limit"),
    ({"rate_limit": [{"name": "a", "limit": 10**15, "window_s": 1}]}, "rate_limit"),
    ({"rate_limit": [{"name": f"n{i}", "limit": 1, "window_s": 1} for i in range(9)]},
     "rate_limit"),
    ({"rate_limit": []}, "rate_limit"),
    ({"rate_limit": [{"name": "a", "limit": 1, "window_s": 1, "extra": 1}]}, "rate_limit"),
    ({"credits": {"remaining": -1}}, "credits.remaining"),
    ({"credits": {"remaining": True}}, "credits.remaining"),
    ({"credits": {"remaining": 10**13}}, "credits.remaining"),
    ({"credits": {"remaining": 5, "refill": {"amount": 5, "interval": "week"}}},
     "credits.refill.interval"),
    ({"credits": {"remaining": 5, "refill": {"amount": 0, "interval": "day"}}},
     "credits.refill.amount"),
    ({"credits": {"remaining": 5, "refill": "5/day"}}, "credits.refill"),
    ({"credits": {"remaining": 5, "bonus": 1}}, "credits"),
    ({"credits": 5}, "credits"),
])
async def test_malformed_named_limits_and_credits_are_422_naming_the_field(gw, http, body,
                                                                           field):
    r = await http.post(f"{gw.admin}/v1/tokens", headers=ADMIN,
                        json={"subject": "alice", "name": "x", **body})
    assert r.status_code == 422, r.text
    assert _named(r).startswith(field), r.json()
    listed = (await http.get(f"{gw.admin}/v1/tokens", headers=ADMIN)).json()["items"]
    assert listed == []  # nothing was created
    created = await _create(http, gw)
    p = await http.patch(f"{gw.admin}/v1/tokens/{created['id']}", headers=ADMIN, json=body)
    assert p.status_code == 422 and _named(p).startswith(field), p.json()


def _named(response) -> str:
    """The field a 422 names: before the first colon, without pydantic's "body." prefix."""
    return response.json()["error_description"].split(":")[0].removeprefix("body.")


async def test_self_service_cannot_grant_faster_limits_or_more_credits(gw, http):
    me = await _create(http, gw, scopes=["authgate:self", "read"],
                       rate_limit=[{"name": "burst", "limit": 10, "window_s": 1},
                                   {"name": "daily", "limit": 1000, "window_s": 86400}],
                       credits={"remaining": 100, "refill": {"amount": 100,
                                                             "interval": "month"}})
    h = bearer(me["token"])
    slow = [{"name": "slow", "limit": 5, "window_s": 1},
            {"name": "day", "limit": 500, "window_s": 86400}]
    for body, field in [
        ({"rate_limit": [{"name": "burst", "limit": 20, "window_s": 1}]}, "rate_limit"),
        ({"rate_limit": "10/second"}, "rate_limit"),  # no daily bound: faster by the day
        ({"rate_limit": None}, "rate_limit"),  # the default (1000/minute) is faster
        ({"rate_limit": "5/minute"}, "rate_limit"),  # 7200 a day: faster than 1000/day
        ({"credits": None, "rate_limit": slow}, "credits"),  # unlimited credits
        ({"credits": {"remaining": 101}, "rate_limit": slow}, "credits"),
        ({"credits": {"remaining": 5, "refill": {"amount": 10, "interval": "day"}},
          "rate_limit": slow}, "credits"),
    ]:
        r = await http.post(f"{gw.admin}/v1/tokens", headers=h,
                            json={"subject": "alice", "name": "child", **body})
        assert r.status_code == 403, (body, r.text)
        assert r.json()["error_description"].startswith(field), r.json()
    ok = await _create(http, gw, headers=h, scopes=["read"], rate_limit=slow,
                       credits={"remaining": 50, "refill": {"amount": 100,
                                                            "interval": "month"}})
    assert ok["credits"]["remaining"] == 50
    r = await http.patch(f"{gw.admin}/v1/tokens/{ok['id']}", headers=h,
                         json={"credits": {"remaining": 1000}})
    assert r.status_code == 403 and r.json()["error_description"].startswith("credits")


async def test_csv_export_has_the_credit_columns(gw, http):
    await _create(http, gw, rate_limit=NAMED, credits={"remaining": 7, "refill": {
        "amount": 9, "interval": "month"}})
    r = await http.get(f"{gw.admin}/v1/tokens?format=csv", headers=ADMIN)
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert rows[0]["rate_limit"] == "burst=3/second hourly=100/hour"
    assert rows[0]["credits_remaining"] == "7" and rows[0]["credits_refill"] == "9/month"


# --- the CLI ------------------------------------------------------------------------------------


@pytest.fixture
def cli_store(store_url, store):
    return store_url


def test_cli_creates_named_limits_and_credits_and_shows_them(cli_store):
    created = json.loads(authgate(
        "tokens", "create", "--subject", "s", "--name", "n", "--rate-limit", "burst=10/second",
        "--rate-limit", "hourly=1000/hour", "--credits", "1000", "--refill", "1000/month",
        "--json", store=cli_store).stdout)
    assert created["rate_limit"] == [{"name": "burst", "limit": 10, "window_s": 1},
                                     {"name": "hourly", "limit": 1000, "window_s": 3600}]
    assert created["credits"] == {"remaining": 1000, "refill": {"amount": 1000,
                                                                "interval": "month"}}
    tid = created["id"]
    shown = json.loads(authgate("tokens", "show", tid, "--json", store=cli_store).stdout)
    assert shown["credits"] == created["credits"] and shown["rate_limit"] == created[
        "rate_limit"]
    listed = json.loads(authgate("tokens", "list", "--json", store=cli_store).stdout)
    assert listed[0]["credits"]["remaining"] == 1000
    usage = json.loads(authgate("tokens", "usage", tid, "--json", store=cli_store).stdout)
    assert usage["credits"] == created["credits"]
    text = authgate("tokens", "show", tid, store=cli_store).stdout
    assert "burst" in text and "1000" in text
    rows = list(csv.DictReader(io.StringIO(authgate("tokens", "list", "--csv",
                                                    store=cli_store).stdout)))
    assert rows[0]["credits_remaining"] == "1000" and rows[0]["credits_refill"] == "1000/month"
    # update: a new balance keeps the refill; --no-credits removes them
    updated = json.loads(authgate("tokens", "update", tid, "--credits", "5", "--json",
                                  store=cli_store).stdout)
    assert updated["credits"] == {"remaining": 5, "refill": {"amount": 1000,
                                                             "interval": "month"}}
    updated = json.loads(authgate("tokens", "update", tid, "--rate-limit", "20/minute",
                                  "--no-credits", "--json", store=cli_store).stdout)
    assert updated["credits"] is None and updated["rate_limit"] == {"limit": 20,
                                                                    "window_s": 60}


@pytest.mark.parametrize(("args", "option"), [
    (["--rate-limit", "burst=10/fortnight"], "--rate-limit"),
    (["--rate-limit", "10/second", "--rate-limit", "hourly=5/hour"], "--rate-limit"),
    (["--rate-limit", "default"], "--rate-limit"),
    (["--credits", "-3"], "--credits"),
    (["--credits", "lots"], "--credits"),
    (["--credits", "5", "--refill", "5/week"], "--refill"),
    (["--refill", "5/day"], "--refill"),
])
def test_cli_malformed_flags_exit_2_naming_the_option(cli_store, args, option):
    proc = authgate("tokens", "create", "--subject", "s", "--name", "n", *args,
                    store=cli_store, check=2)
    assert option in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert json.loads(authgate("tokens", "list", "--json", store=cli_store).stdout) == []


def test_cli_duplicate_names_are_refused_naming_the_option(cli_store):
    proc = authgate("tokens", "create", "--subject", "s", "--name", "n", "--rate-limit",
                    "a=1/second", "--rate-limit", "a=5/hour", store=cli_store, check=2)
    assert "--rate-limit" in proc.stderr.strip().splitlines()[-1], proc.stderr
