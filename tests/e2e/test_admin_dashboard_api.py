"""What the admin page's dashboard reads, end to end on both backend pairs: requests by outcome
per hour from real traffic through the proxy and forward auth, and tokens expiring soon."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.authority import Actor
from gateway.errors import OUTCOMES

BOOT = "bootstrap-admin-secret-0123456789"
ADMIN = {"Authorization": f"Bearer {BOOT}"}
CLI = Actor("cli:test")


@pytest.fixture
async def gw(start_gateway):
    return await start_gateway(admin_token=BOOT)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_outcomes_count_admitted_and_refused_requests_in_the_current_hour(gw, http):
    auth = gw.gateway.authority
    _, good = await auth.create(CLI, subject="alice", name="reader")
    _, limited = await auth.create(CLI, subject="alice", name="slow", rate_limit="1/minute")
    for _ in range(3):
        assert (await http.get(f"{gw.proxy}/echo", headers=bearer(good))).status_code == 200
    assert (await http.get(f"{gw.proxy}/echo")).status_code == 401
    assert (await http.get(f"{gw.proxy}/echo", headers=bearer("agt_" + "x" * 38))
            ).status_code == 401
    assert (await http.get(f"{gw.proxy}/echo", headers=bearer(limited))).status_code == 200
    assert (await http.get(f"{gw.proxy}/echo", headers=bearer(limited))).status_code == 429
    # forward auth counts too
    assert (await http.get(f"{gw.admin}/v1/authorize", headers=bearer(good))).status_code == 200
    await gw.gateway.usage.flush()

    r = await http.get(f"{gw.admin}/v1/stats/outcomes?hours=24", headers=ADMIN)
    assert r.status_code == 200, r.text
    hours = r.json()["hours"]
    assert len(hours) == 24
    now = datetime.now(UTC)
    last = datetime.fromisoformat(hours[-1]["hour"].replace("Z", "+00:00"))
    assert last == now.replace(minute=0, second=0, microsecond=0) or \
        last == (now - timedelta(minutes=1)).replace(minute=0, second=0, microsecond=0)
    assert hours[-1]["hour"].endswith("Z") and hours[0]["hour"] < hours[-1]["hour"]
    total: dict[str, int] = {}
    for h in hours:
        assert set(OUTCOMES) <= set(h["outcomes"])
        for k, v in h["outcomes"].items():
            total[k] = total.get(k, 0) + v
    assert total["ok"] == 5
    assert total["no_credential"] == 1 and total["invalid_token"] == 1
    assert total["rate_limited"] == 1
    # the admin API's own calls are not proxy requests
    assert sum(total.values()) == 8

    # written once: a second flush adds nothing
    await gw.gateway.usage.flush()
    again = (await http.get(f"{gw.admin}/v1/stats/outcomes", headers=ADMIN)).json()["hours"]
    assert sum(h["outcomes"]["ok"] for h in again) == 5


async def test_outcomes_are_admin_only_and_hours_are_bounded(gw, http):
    _, own = await gw.gateway.authority.create(CLI, subject="team", name="self",
                                               scopes=["authgate:self"])
    r = await http.get(f"{gw.admin}/v1/stats/outcomes", headers=bearer(own))
    assert r.status_code == 403 and "authgate:admin" in r.json()["error_description"]
    assert (await http.get(f"{gw.admin}/v1/stats/outcomes")).status_code == 401
    for bad in ("0", "745", "-1", "x", "1.5"):
        r = await http.get(f"{gw.admin}/v1/stats/outcomes?hours={bad}", headers=ADMIN)
        assert r.status_code == 422 and r.json()["error_description"].startswith("query.hours")
    r = await http.get(f"{gw.admin}/v1/stats/outcomes?days=1", headers=ADMIN)
    assert r.status_code == 422 and "query.days" in r.json()["error_description"]
    r = await http.get(f"{gw.admin}/v1/stats/outcomes?hours=744", headers=ADMIN)
    assert r.status_code == 200 and len(r.json()["hours"]) == 744


async def test_expires_before_lists_tokens_expiring_soon(gw, http):
    auth = gw.gateway.authority
    soon, _ = await auth.create(CLI, subject="a", name="soon", expires_in=3 * 86400)
    later, _ = await auth.create(CLI, subject="a", name="later", expires_in=60 * 86400)
    await auth.create(CLI, subject="a", name="never")
    gone, _ = await auth.create(CLI, subject="b", name="gone", expires_in=86400)
    await auth.revoke(CLI, gone.id)

    async def ids(query: str) -> list[str]:
        r = await http.get(f"{gw.admin}/v1/tokens?{query}", headers=ADMIN)
        assert r.status_code == 200, r.text
        return [t["id"] for t in r.json()["items"]]

    assert await ids("expires_before=30d") == [gone.id, soon.id]
    assert await ids("expires_before=30d&status=active") == [soon.id]
    assert await ids(f"expires_before={30 * 86400}&status=active") == [soon.id]
    assert await ids("expires_before=90d&status=active") == [later.id, soon.id]
    cut = (datetime.now(UTC) + timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert await ids(f"expires_before={cut}&status=active") == [soon.id]
    assert await ids("expires_before=2000-01-01") == []
    assert await ids("expires_before=30d&subject=b") == [gone.id]
    r = await http.get(f"{gw.admin}/v1/tokens?expires_before=30d&status=active&format=csv",
                       headers=ADMIN)
    assert r.status_code == 200 and soon.id in r.text and later.id not in r.text

    for bad in ("soon", "30x", "2026-13-01", "2026-01-01T10:00:00", "99999999999",
                "9999-12-31T23:59:59-23:59", "x" * 41, ""):
        r = await http.get(f"{gw.admin}/v1/tokens", params={"expires_before": bad},
                           headers=ADMIN)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error_description"].startswith("query.expires_before"), r.text


async def test_replicas_add_up_and_a_graceful_stop_writes_what_it_counted(start_gateway, http):
    a = await start_gateway(admin_token=BOOT, usage_flush_interval_s=3600)  # no timed flush
    b = await start_gateway(admin_token=BOOT, usage_flush_interval_s=3600)
    _, secret = await a.gateway.authority.create(CLI, subject="alice", name="r")
    for gw, n in ((a, 2), (b, 3)):
        for _ in range(n):
            r = await http.get(f"{gw.proxy}/echo", headers=bearer(secret))
            assert r.status_code == 200
    assert (await http.get(f"{a.proxy}/echo")).status_code == 401

    async def totals() -> dict[str, int]:
        r = await http.get(f"{b.admin}/v1/stats/outcomes?hours=2", headers=ADMIN)
        assert r.status_code == 200, r.text
        out: dict[str, int] = {}
        for h in r.json()["hours"]:
            for k, v in h["outcomes"].items():
                out[k] = out.get(k, 0) + v
        return out

    assert (await totals())["ok"] == 0  # nothing written yet: counted in memory only
    await a.stop()  # shutdown flushes
    assert (await totals())["ok"] == 2 and (await totals())["no_credential"] == 1
    await b.gateway.usage.flush()
    assert (await totals())["ok"] == 5
    c = await start_gateway(admin_token=BOOT)  # a restarted replica starts from zero
    assert (await http.get(f"{c.proxy}/echo", headers=bearer(secret))).status_code == 200
    await c.gateway.usage.flush()
    await b.gateway.usage.flush()
    assert (await totals())["ok"] == 6
