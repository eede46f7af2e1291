"""Issue 9, end to end on both pairs: the failed-auth brake comes before any work, the client
address behind trusted proxies (SPEC §6), identity values percent-encoded (SPEC §6), and every
refusal an event (SPEC §8)."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway import tokens
from gateway.authority import Actor

ADMIN = Actor("cli:test")
PUBLIC = {"path": "/public/*", "auth": "none", "rate_limit": "2/minute"}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def forged() -> str:
    """Well-formed, checksummed, unknown: passes the parse, so only a lookup can refuse it."""
    return tokens.generate("agt").plaintext


def lookups(gw) -> float:
    return gw.metrics.registry.get_sample_value("authgate_store_lookups_total") or 0.0


async def test_forged_tokens_from_one_address_cost_at_most_the_limit_in_lookups(start_gateway,
                                                                                http):
    rg = await start_gateway(failed_auth_limit="10/minute")
    before = lookups(rg.gateway)
    codes = [(await http.get(f"{rg.proxy}/echo", headers=bearer(forged()))).status_code
             for _ in range(100)]
    assert codes == [401] * 10 + [429] * 90
    # 10 charged refusals, plus the one whose charge the limiter refused; nothing after
    assert lookups(rg.gateway) - before <= 11
    # braked before any work: even a valid token from that address waits (no lookup either)
    _, secret = await rg.gateway.authority.create(ADMIN, subject="a", name="b")
    r = await http.get(f"{rg.proxy}/echo", headers=bearer(secret))
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 7
    assert lookups(rg.gateway) - before <= 11


async def test_the_brake_lets_go_when_the_limit_would_admit_again(start_gateway, http):
    rg = await start_gateway(failed_auth_limit="2/second")
    before = lookups(rg.gateway)
    codes = [(await http.get(f"{rg.proxy}/echo", headers=bearer(forged()))).status_code
             for _ in range(8)]
    assert codes == [401, 401] + [429] * 6 and lookups(rg.gateway) - before <= 3
    await asyncio.sleep(1.1)  # blocked for the limiter's Retry-After, not for ever
    _, secret = await rg.gateway.authority.create(ADMIN, subject="a", name="b")
    assert (await http.get(f"{rg.proxy}/echo", headers=bearer(secret))).status_code == 200


@pytest.mark.parametrize("trusted", [False, True], ids=["default", "peer-trusted"])
async def test_client_address_and_x_forwarded_for(start_gateway, http, trusted):
    rg = await start_gateway(routes=[PUBLIC], failed_auth_limit="2/minute",
                             trusted_proxies=["127.0.0.0/8"] if trusted else [])

    async def public(xff: str) -> int:
        return (await http.get(f"{rg.proxy}/public/x",
                               headers={"X-Forwarded-For": xff})).status_code

    # per-IP limit of a public route: a client's own X-Forwarded-For buys nothing by default
    codes = [await public(f"198.51.100.{i}") for i in (1, 2, 3)]
    assert codes == ([200, 200, 200] if trusted else [200, 200, 429])
    if trusted:  # the rightmost untrusted entry counts, not what the client put left of it
        assert [await public(f"6.6.6.{i}, 198.51.100.9") for i in (1, 2, 3)] == [200, 200, 429]

    # last_used_ip
    record, secret = await rg.gateway.authority.create(ADMIN, subject="a", name="b")
    r = await http.get(f"{rg.proxy}/echo", headers={**bearer(secret),
                                                     "X-Forwarded-For": "192.0.2.77"})
    assert r.status_code == 200
    # what is appended to the forwarded chain is always the TCP peer
    chain = [v for k, v in r.json()["headers"] if k.lower() == "x-forwarded-for"]
    assert chain == ["192.0.2.77, 127.0.0.1"]
    await rg.gateway.usage.flush()
    stored = await rg.gateway.authority.get(record.id)
    assert stored.last_used_ip == ("192.0.2.77" if trusted else "127.0.0.1")

    # failed-auth limit per client address
    async def guess(xff: str) -> int:
        return (await http.get(f"{rg.proxy}/echo", headers={
            **bearer(forged()), "X-Forwarded-For": xff})).status_code

    assert [await guess(f"6.6.6.{i}, 203.0.113.1") for i in (1, 2, 3)] == [401, 401, 429]
    assert await guess("203.0.113.50") == (401 if trusted else 429)
    await rg.gateway.usage.flush()
    events, _ = await rg.gateway.authority.events(type="auth_failed")
    assert {e.ip for e in events} == ({"203.0.113.1", "203.0.113.50"} if trusted
                                      else {"127.0.0.1"})


async def test_identity_values_are_percent_encoded_utf8_on_proxy_and_forward_auth(
        start_gateway, http):
    rg = await start_gateway()
    record, secret = await rg.gateway.authority.create(ADMIN, subject="Łukasz", name="100% µ")
    r = await http.get(f"{rg.proxy}/echo", headers=bearer(secret))
    assert r.status_code == 200
    sent = {k.lower(): v for k, v in r.json()["headers"]}
    assert sent["x-auth-subject"] == "%C5%81ukasz"
    assert sent["x-auth-token-name"] == "100%25 %C2%B5"
    assert sent["x-auth-token-id"] == record.id
    r = await http.get(f"{rg.admin}/v1/authorize/echo", headers=bearer(secret))
    assert r.status_code == 200, r.text
    assert r.headers["x-auth-subject"] == "%C5%81ukasz"
    assert r.headers["x-auth-token-name"] == "100%25 %C2%B5"


async def test_every_refusal_is_an_event(start_gateway, http):
    interval = 0.2
    rg = await start_gateway(routes=[
        {"path": "/reports/*", "scopes": ["reports:read"]}, PUBLIC,
        {"path": "/tight/*", "rate_limit": "1/minute"}],
        failed_auth_limit="5/minute", usage_flush_interval_s=interval)
    auth, proxy = rg.gateway.authority, rg.proxy

    async def get(path: str, secret: str | None = None) -> int:
        return (await http.get(f"{proxy}{path}",
                               headers=bearer(secret) if secret else {})).status_code

    reader, reader_secret = await auth.create(ADMIN, subject="rita", name="r", scopes=["read"])
    revoked, revoked_secret = await auth.create(ADMIN, subject="rex", name="r")
    await auth.revoke(ADMIN, revoked.id)
    short, short_secret = await auth.create(ADMIN, subject="sam", name="s", expires_in=1)
    old, old_secret = await auth.create(ADMIN, subject="olga", name="o")
    await auth.rotate(ADMIN, old.id, 0)
    slow, slow_secret = await auth.create(ADMIN, subject="tim", name="t", rate_limit="1/minute")
    await asyncio.sleep(1.05)  # short has expired

    assert await get("/echo") == 401  # missing
    assert await get("/echo", "agt_garbage") == 401  # malformed (charged, as every 401 with
    assert await get("/echo", revoked_secret) == 401  # revoked     a credential is)
    assert await get("/echo", short_secret) == 401  # expired
    assert await get("/echo", old_secret) == 401  # replay (charged)
    assert await get("/reports/q", reader_secret) == 403
    assert [await get("/echo", slow_secret) for _ in range(2)] == [200, 429]  # the token's
    assert [await get("/tight/x", reader_secret) for _ in range(2)] == [200, 429]  # a route's
    assert [await get("/public/x") for _ in range(3)] == [200, 200, 429]  # a route's, per IP
    assert await get("/echo", forged()) == 401  # unknown (charged: the fifth)
    assert [await get("/echo", forged()) for _ in range(2)] == [429, 429]  # the address's
    last = time.monotonic()

    expected = {
        ("auth_failed", "missing", None, None), ("auth_failed", "malformed", None, None),
        ("auth_failed", "unknown", None, None),
        ("auth_failed", "revoked", revoked.id, "rex"), ("auth_failed", "expired", short.id, "sam"),
        ("auth_failed", "replay", old.id, "olga"),
        ("access_denied", "insufficient_scope", reader.id, "rita"),
        ("rate_limited", "token", slow.id, "tim"), ("rate_limited", "route", reader.id, "rita"),
        ("rate_limited", "route", None, None), ("rate_limited", "client_ip", None, None)}
    seen: set[tuple[str, str, str | None, str | None]] = set()
    counts: dict[tuple[str, str], int] = {}
    while not expected <= seen and time.monotonic() - last < interval + 1:
        await asyncio.sleep(0.05)  # no flush() here: the batches have to get there on their own
        seen.clear()
        counts.clear()
        for type_ in ("auth_failed", "access_denied", "rate_limited"):
            for e in (await auth.events(type=type_, limit=500))[0]:
                seen.add((e.type, e.details["reason"], e.token_id, e.subject))
                assert e.ip == "127.0.0.1"
                key = (e.type, e.details["reason"])
                counts[key] = counts.get(key, 0) + e.details["count"]
    assert expected <= seen, f"missing after {interval + 1} s: {expected - seen}"
    assert counts[("rate_limited", "client_ip")] == 2
    assert counts[("auth_failed", "unknown")] == 1


@pytest.mark.parametrize("backend_pair", ["postgresql+redis"], indirect=True)
async def test_across_replicas_each_learns_the_block_on_its_own_first_refusal(start_gateway,
                                                                              http):
    replicas = [await start_gateway(failed_auth_limit="10/minute") for _ in range(3)]
    before = sum(lookups(rg.gateway) for rg in replicas)
    codes = [(await http.get(f"{replicas[i % 3].proxy}/echo",
                             headers=bearer(forged()))).status_code for i in range(90)]
    assert codes.count(401) == 10 and codes[-60:] == [429] * 60  # one shared limit
    # the limit's 10, plus at most one refused charge per replica
    assert sum(lookups(rg.gateway) for rg in replicas) - before <= 10 + 3
