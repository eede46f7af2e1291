"""The admin page's operator views in headless Chromium, against a real gateway and upstream:
the dashboard (requests by outcome, expiring tokens), token editing, alerts, suspension."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from playwright.async_api import Page, expect

from gateway.authority import Actor
from tests.browser.test_admin_page import BOOT, XSS, page, sign_in, tab  # noqa: F401
from tests.e2e.conftest import backend_pair, http, start_gateway, upstream  # noqa: F401

pytestmark = pytest.mark.parametrize("backend_pair", ["sqlite+memory"], indirect=True)
CLI = Actor("cli:test")
ADMIN = {"Authorization": f"Bearer {BOOT}"}
ROUTES = [{"path": "/reports/*", "scopes": ["reports"]}]


@pytest.fixture
async def gw(start_gateway):  # noqa: F811
    return await start_gateway(admin_token=BOOT, routes=ROUTES, failed_auth_limit=None)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def no_markup_ran(tab_: Page) -> None:
    """No value from the API became markup: no injected element, no script ran (a dialog)."""
    assert await tab_.locator("main img, main script:not([src])").count() == 0
    assert not [p for p in tab_.problems if p.startswith("dialog")]


async def test_dashboard_charts_real_traffic_and_lists_tokens_expiring_soon(page, gw, http,  # noqa: F811
                                                                            artifacts):
    auth = gw.gateway.authority
    _, reader = await auth.create(CLI, subject="alice", name="reader", scopes=["read"])
    _, slow = await auth.create(CLI, subject="alice", name="slow", rate_limit="1/minute")
    soon, _ = await auth.create(CLI, subject="bob", name="soon", expires_in=2 * 86400)
    xss, _ = await auth.create(CLI, subject=XSS, name=XSS, expires_in=10 * 86400)
    await auth.create(CLI, subject="bob", name="later", expires_in=60 * 86400)
    await auth.create(CLI, subject="bob", name="never")

    statuses = []
    for headers, path in ([bearer(reader), "/echo"], [bearer(reader), "/echo"],
                          [bearer(reader), "/echo"], [bearer(slow), "/echo"],
                          [bearer(slow), "/echo"],  # over 1/minute: 429
                          [{}, "/echo"], [{}, "/echo"],  # no credential: 401
                          [bearer("agt_" + "z" * 38), "/echo"],  # unknown token: 401
                          [bearer(reader), "/reports/q1"]):  # missing scope: 403
        statuses.append((await http.get(f"{gw.proxy}{path}", headers=headers)).status_code)
    assert statuses == [200, 200, 200, 200, 429, 401, 401, 401, 403]
    await gw.gateway.usage.flush()

    await sign_in(page, gw)
    legend = page.locator("#outcome-legend")
    expected = {"ok": "4", "rate_limited": "1", "no_credential": "2", "invalid_token": "1",
                "insufficient_scope": "1", "unavailable": "0"}
    for outcome, count in expected.items():
        await expect(legend.locator(f'[data-outcome="{outcome}"] .count')).to_have_text(count)
    # this hour's bar is stacked from each outcome's segment, admitted and refused
    segments = page.locator("#outcome-chart rect.seg")
    await expect(segments).to_have_count(5)
    heights = {await s.get_attribute("data-outcome"): float(await s.get_attribute("height"))
               for s in await segments.all()}
    assert heights["ok"] == pytest.approx(4 * heights["invalid_token"])
    assert heights["no_credential"] == pytest.approx(2 * heights["rate_limited"])
    assert await page.locator("#outcome-chart g").count() == 24
    label = await page.locator("#outcome-chart").get_attribute("aria-label")
    assert "ok 4" in label and "insufficient_scope 1" in label

    rows = page.locator("#expiring tbody tr")
    await expect(rows).to_have_count(2)  # soonest first; 60 days and never are not listed
    assert [await r.get_attribute("data-token-id") for r in await rows.all()] == [soon.id,
                                                                                  xss.id]
    await expect(rows.nth(0).locator("td").nth(3)).to_have_text(re.compile(r"^(1 d|2 d|\d+ h)$"))
    await expect(rows.nth(1).locator("td").first).to_have_text(XSS)  # as text
    await expect(rows.nth(1).locator("td").nth(1)).to_have_text(XSS)
    await no_markup_ran(page)
    await page.screenshot(path=str(artifacts / "admin-dashboard-outcomes.png"), full_page=True)

    # more traffic shows after the next flush and a reload of the dashboard
    for _ in range(2):
        await http.get(f"{gw.proxy}/echo", headers=bearer(reader))
    await gw.gateway.usage.flush()
    await tab(page, "Tokens")
    await tab(page, "Dashboard")
    await expect(legend.locator('[data-outcome="ok"] .count')).to_have_text("6")
    assert page.problems == []


async def test_a_self_caller_sees_its_expiring_tokens_but_not_the_operator_panels(page, gw):  # noqa: F811
    auth = gw.gateway.authority
    _, mine = await auth.create(CLI, subject="team-a", name="team key",
                                scopes=["authgate:self"], expires_in=20 * 86400)
    await auth.create(CLI, subject="team-b", name="other", expires_in=86400)
    await sign_in(page, gw, mine)
    await expect(page.locator("#expiring tbody tr")).to_have_count(1)
    await expect(page.locator("#expiring tbody")).to_contain_text("team key")
    await expect(page.locator("#outcomes-card")).to_be_hidden()
    await expect(page.locator("#top-subjects")).to_be_hidden()
    await expect(page.locator("#recent-alerts")).to_be_hidden()
    await expect(page.locator("#nav").get_by_role("button", name="Subjects")).to_be_hidden()


async def test_edit_a_token_and_see_the_change_through_the_api(page, gw, http,  # noqa: F811
                                                               artifacts):
    auth = gw.gateway.authority
    record, secret = await auth.create(CLI, subject="carol", name="old-name", scopes=["read"],
                                       rate_limit="100/minute")
    await sign_in(page, gw)
    await tab(page, "Tokens")
    await page.locator(f'tr[data-token-id="{record.id}"]').get_by_role(
        "button", name="Details").click()
    detail = page.locator("#token-detail")
    await expect(detail.locator("dd", has_text="100 per 60 s")).to_have_count(1)
    await detail.get_by_role("button", name="Edit").click()
    form = page.locator("#edit-form")
    await expect(form.get_by_label("Token rate limit")).to_have_value("100/minute")
    await form.get_by_label("Token name").fill(XSS)
    await form.get_by_label("Token scopes").fill("read reports")
    await form.get_by_label("Token rate limit").fill("5 per 10 s")
    await form.get_by_label("Token expiry").fill("2031-01-31T12:00:00Z")
    await form.get_by_role("button", name="Save changes").click()
    await expect(page.locator("#flash")).to_have_text(
        f"Saved name, scopes, rate_limit, expires_at of {record.id}.")
    await expect(form).to_have_count(0)  # the detail is shown afresh, without the form

    got = (await http.get(f"{gw.admin}/v1/tokens/{record.id}", headers=ADMIN)).json()
    assert got["name"] == XSS and got["scopes"] == ["read", "reports"]
    assert got["rate_limit"] == {"limit": 5, "window_s": 10}
    assert got["expires_at"] == "2031-01-31T12:00:00Z"
    r = await http.get(f"{gw.proxy}/reports/x", headers=bearer(secret))
    assert r.status_code == 200  # the new scope works at once
    await expect(page.locator("#detail-title")).to_have_text(f"{XSS} ({record.id})")
    await expect(page.locator(f'tr[data-token-id="{record.id}"] td').first).to_have_text(XSS)

    # only what changed is sent: clearing the rate limit leaves the rest as it is
    await detail.get_by_role("button", name="Edit").click()
    await form.get_by_label("Token rate limit").fill("")
    await form.get_by_role("button", name="Save changes").click()
    await expect(page.locator("#flash")).to_have_text(f"Saved rate_limit of {record.id}.")
    got = (await http.get(f"{gw.admin}/v1/tokens/{record.id}", headers=ADMIN)).json()
    assert got["rate_limit"] is None and got["name"] == XSS

    # refused: the API's words, naming the field; nothing changes
    await detail.get_by_role("button", name="Edit").click()
    await form.get_by_label("Token name").fill("renamed")
    await form.get_by_label("Token expiry").fill("next tuesday")
    await form.get_by_role("button", name="Save changes").click()
    error = page.locator("#edit-error")
    await expect(error).to_contain_text(re.compile(r"^422: body\.expires_at"))
    await page.screenshot(path=str(artifacts / "admin-token-edit-refused.png"), full_page=True)
    await form.get_by_label("Token expiry").fill("2031-01-31T12:00:00Z")
    await form.get_by_label("Token rate limit").fill("burst=10/fortnight")
    await form.get_by_role("button", name="Save changes").click()
    await expect(error).to_contain_text('rate_limit: "burst=10/fortnight" is not name=N/unit')
    got = (await http.get(f"{gw.admin}/v1/tokens/{record.id}", headers=ADMIN)).json()
    assert got["name"] == XSS and got["expires_at"] == "2031-01-31T12:00:00Z"
    await form.get_by_role("button", name="Discard").click()
    await expect(form).to_have_count(0)
    await no_markup_ran(page)
    assert page.problems == [  # the refused save, on purpose
        "Failed to load resource: the server responded with a status of 422 "
        "(Unprocessable Entity)"]


async def test_a_self_callers_refused_edit_shows_the_403_naming_what_it_may_not_do(
        page, gw, http):  # noqa: F811
    auth = gw.gateway.authority
    _, mine = await auth.create(CLI, subject="team-a", name="team key",
                                scopes=["authgate:self", "read"], rate_limit="10/minute")
    child, _ = await auth.create(CLI, subject="team-a", name="child", scopes=["read"],
                                 rate_limit="5/minute")
    await sign_in(page, gw, mine)
    await tab(page, "Tokens")
    await page.locator(f'tr[data-token-id="{child.id}"]').get_by_role(
        "button", name="Details").click()
    await page.locator("#token-detail").get_by_role("button", name="Edit").click()
    form = page.locator("#edit-form")
    await form.get_by_label("Token scopes").fill("read write")
    await form.get_by_role("button", name="Save changes").click()
    await expect(page.locator("#edit-error")).to_have_text(
        re.compile(r"^403: .*write"))
    await form.get_by_label("Token scopes").fill("read")
    await form.get_by_label("Token rate limit").fill("1000/minute")
    await form.get_by_role("button", name="Save changes").click()
    await expect(page.locator("#edit-error")).to_have_text(re.compile(r"^403: .*rate_limit"))
    got = (await http.get(f"{gw.admin}/v1/tokens/{child.id}", headers=ADMIN)).json()
    assert got["scopes"] == ["read"] and got["rate_limit"] == {"limit": 5, "window_s": 60}


async def test_views_of_apis_the_gateway_lacks_are_hidden(page, gw, http):  # noqa: F811
    paths = (await http.get(f"{gw.admin}/openapi.json")).json()["paths"]
    await sign_in(page, gw)
    nav = page.locator("#nav")
    for name, path in (("Alerts", "/v1/alerts"), ("Subjects", "/v1/subjects/suspended")):
        button = nav.get_by_role("button", name=name, exact=True)
        await expect(button).to_have_count(1 if path in paths else 0)
    assert page.problems == []  # no call to an endpoint that is not there



ALERTS = {"check_interval_s": 3600, "channels": [{"type": "log"}], "expiry_days": [30, 7],
          "rotation": None,
          "detectors": {"failed_auth": {"count": 3, "window": "5m"}, "multi_ip": None,
                        "rapid_use": None, "rate_limit_breach": None}}


async def test_alerts_view_filters_badges_and_pages_real_alerts(start_gateway, browser, http,  # noqa: F811
                                                                artifacts):
    gw = await start_gateway(admin_token=BOOT, alerts=ALERTS, failed_auth_limit=None)
    auth = gw.gateway.authority
    urgent, _ = await auth.create(CLI, subject="alice", name="deploy", expires_in=5 * 86400)
    await auth.create(CLI, subject=XSS, name=XSS, expires_in=20 * 86400)
    for i in range(22):
        await auth.create(CLI, subject="fleet", name=f"node-{i:02}", expires_in=25 * 86400)
    for _ in range(4):  # refused credentials from one address: failed_auth
        r = await http.get(f"{gw.proxy}/echo", headers=bearer("agt_" + "q" * 38))
        assert r.status_code == 401
    await gw.gateway.usage.flush()
    raised = await gw.gateway.services.monitor.check_once()
    kinds = sorted({a.kind for a in raised})
    assert kinds == ["failed_auth", "token_expiring"] and len(raised) >= 25

    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()  # noqa: F811
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("dialog", lambda d: problems.append(f"dialog: {d.message}"))
    await page.goto(f"{gw.admin}/admin")
    await page.get_by_label("Admin token").fill(BOOT)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#expiring tbody tr")).to_have_count(10)  # the soonest first
    await expect(page.locator("#expiring tbody tr").first).to_contain_text("deploy")
    await expect(page.locator("#expiring-more")).to_have_text(
        "14 more expire within 30 days (Tokens: Expiring within 30 days).")
    recent = page.locator("#recent-alerts tbody tr")
    await expect(recent).to_have_count(5)
    await expect(recent.first.locator(".badge")).to_be_visible()
    await page.screenshot(path=str(artifacts / "admin-dashboard-alerts.png"), full_page=True)

    await tab(page, "Alerts")
    rows = page.locator("#alerts-table tbody tr")
    await expect(rows).to_have_count(20)
    times = [await r.locator("td").first.text_content() for r in await rows.all()]
    assert times == sorted(times, reverse=True)  # newest first
    await expect(page.get_by_role("button", name="Previous")).to_be_disabled()
    await page.get_by_role("button", name="Next").click()
    await expect(rows).to_have_count(len(raised) - 20)
    await expect(page.get_by_role("button", name="Next")).to_be_disabled()

    await page.locator("#alerts-kind").select_option("failed_auth")
    await page.locator("#alert-filters").get_by_role("button", name="Filter").click()
    await expect(rows).to_have_count(1)
    await expect(rows.locator("td").nth(6)).to_have_text("127.0.0.1")
    await expect(rows.locator(".badge")).to_have_count(1)

    await page.locator("#alerts-kind").select_option("")
    await page.locator("#alerts-subject").fill("alice")
    await page.locator("#alert-filters").get_by_role("button", name="Filter").click()
    await expect(rows).to_have_count(1)
    await expect(rows.locator(".badge")).to_have_text("high")  # 5 days left: the 7-day one
    await expect(rows.locator(".badge")).to_have_class(re.compile(r"\bsev-high\b"))
    await expect(rows.locator("td").nth(4)).to_have_text(urgent.id)

    await page.locator("#alerts-subject").fill("")
    await page.locator("#alerts-token").fill(urgent.id)
    await page.locator("#alert-filters").get_by_role("button", name="Filter").click()
    await expect(rows).to_have_count(1)
    await page.locator("#alerts-token").fill("")
    await page.locator("#alerts-subject").fill(XSS)
    await page.locator("#alert-filters").get_by_role("button", name="Filter").click()
    await expect(rows).to_have_count(1)
    await expect(rows.locator("td").nth(5)).to_have_text(XSS)  # as text, not markup
    await expect(rows.locator(".badge")).to_have_class(re.compile(r"\bsev-low\b"))
    await page.locator("#alerts-subject").fill("")
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
    await page.locator("#alerts-since").fill(tomorrow)
    await page.locator("#alert-filters").get_by_role("button", name="Filter").click()
    await expect(rows).to_have_count(0)
    await page.locator("#alerts-since").fill("")
    await page.locator("#alert-filters").get_by_role("button", name="Filter").click()
    await expect(rows).to_have_count(20)
    # the Tokens view's expiry filter lists what the dashboard left out
    await tab(page, "Tokens")
    await page.locator("#filter-expiring").select_option("7d")
    await page.locator("#token-filters").get_by_role("button", name="Filter").click()
    await expect(page.locator("#tokens-table tbody tr")).to_have_count(1)
    await expect(page.locator("#tokens-table tbody tr td").first).to_have_text("deploy")
    await page.locator("#filter-expiring").select_option("30d")
    await page.locator("#token-filters").get_by_role("button", name="Filter").click()
    await expect(page.locator("#tokens-table tbody tr")).to_have_count(20)
    await tab(page, "Alerts")
    await page.screenshot(path=str(artifacts / "admin-alerts.png"), full_page=True)
    assert await page.locator("main img").count() == 0
    assert problems == []
    await context.close()


async def test_suspend_and_resume_a_subject_from_the_page(page, gw, http, artifacts):  # noqa: F811
    auth = gw.gateway.authority
    record, secret = await auth.create(CLI, subject="dave", name="laptop")
    _, other = await auth.create(CLI, subject="erin", name="keep")
    _, odd = await auth.create(CLI, subject=XSS, name="odd")

    async def status(s: str) -> int:
        return (await http.get(f"{gw.proxy}/echo", headers=bearer(s))).status_code

    assert await status(secret) == 200
    await sign_in(page, gw)
    await tab(page, "Subjects")
    await page.locator("#suspend-subject").fill("dave")
    await page.locator("#suspend-reason").fill("laptop stolen")
    await page.get_by_role("button", name="Suspend", exact=True).click()
    await expect(page.locator("#flash")).to_have_text("Suspended dave: its tokens are refused.")
    row = page.locator('#subjects-table tr[data-subject="dave"]')
    await expect(row).to_have_count(1)
    await expect(row.locator("td").nth(2)).to_have_text("laptop stolen")
    await expect(row.locator("td").nth(3)).to_have_text("admin:bootstrap")
    assert await status(secret) == 401  # refused while suspended, nothing revoked
    assert await status(other) == 200
    got = (await http.get(f"{gw.admin}/v1/tokens/{record.id}", headers=ADMIN)).json()
    assert got["status"] == "active"

    await page.locator("#suspend-subject").fill(XSS)
    await page.get_by_role("button", name="Suspend", exact=True).click()
    await expect(page.locator("#subjects-table tbody tr")).to_have_count(2)
    await expect(page.locator("#subjects-table tbody tr").first.locator("td").first
                 ).to_have_text(XSS)
    assert await status(odd) == 401
    await tab(page, "Dashboard")
    await expect(page.locator("#dash-suspended tbody tr")).to_have_count(2)
    await expect(page.locator("#dash-suspended tbody")).to_contain_text("laptop stolen")
    await tab(page, "Subjects")
    await page.screenshot(path=str(artifacts / "admin-subjects.png"), full_page=True)

    await row.get_by_role("button", name="Resume").click()
    await page.locator("#confirm-dialog").get_by_label("Reason").fill("laptop found")
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.locator("#flash")).to_have_text("Resumed dave: its tokens work again.")
    await expect(row).to_have_count(0)
    assert await status(secret) == 200

    # from a token's detail: the subject's state, and the button that changes it
    await tab(page, "Tokens")
    await page.locator(f'tr[data-token-id="{record.id}"]').get_by_role(
        "button", name="Details").click()
    detail = page.locator("#token-detail")
    await expect(detail.locator("dd", has_text="not suspended")).to_have_count(1)
    await detail.get_by_role("button", name="Suspend subject").click()
    await page.locator("#confirm-dialog").get_by_label("Reason").fill("audit")
    await page.get_by_role("button", name="Confirm").click()
    await expect(detail.locator("dd", has_text="suspended since")).to_contain_text("(audit)")
    assert await status(secret) == 401
    await detail.get_by_role("button", name="Resume subject").click()
    await page.get_by_role("button", name="Confirm").click()
    await expect(detail.locator("dd", has_text="not suspended")).to_have_count(1)
    assert await status(secret) == 200
    events = (await http.get(f"{gw.admin}/v1/events?subject=dave", headers=ADMIN)).json()
    types = [e["type"] for e in events["items"]]
    assert types.count("subject_suspended") == 2 and types.count("subject_resumed") == 2
    await no_markup_ran(page)
    assert page.problems == []


async def test_detail_shows_credits_and_named_limits_and_edits_them(page, gw, http):  # noqa: F811
    schemas = (await http.get(f"{gw.admin}/openapi.json")).json()["components"]["schemas"]
    if "credits" not in schemas["TokenCreate"]["properties"]:
        # LEAD: runs by itself once branch 'credits' (SPEC §13) is merged.
        pytest.skip("the API has no credits / named limits yet (branch credits)")
    r = await http.post(f"{gw.admin}/v1/tokens", headers=ADMIN, json={
        "subject": "metered", "name": "meter",
        "rate_limit": [{"name": "burst", "limit": 10, "window_s": 1},
                       {"name": "hourly", "limit": 1000, "window_s": 3600}],
        "credits": {"remaining": 500, "refill": {"amount": 1000, "interval": "month"}}})
    assert r.status_code == 201, r.text
    tid = r.json()["id"]
    await sign_in(page, gw)
    await tab(page, "Tokens")
    await page.locator(f'tr[data-token-id="{tid}"]').get_by_role("button",
                                                                 name="Details").click()
    detail = page.locator("#token-detail")
    await expect(detail.locator("dd", has_text="burst: 10 per 1 s; hourly: 1000 per 3600 s")
                 ).to_have_count(1)
    await expect(detail.locator("dd", has_text="500 remaining, refill 1000 per month")
                 ).to_have_count(1)
    await detail.get_by_role("button", name="Edit").click()
    rate = page.locator("#edit-form").get_by_label("Token rate limit")
    await expect(rate).to_have_value("burst=10/second hourly=1000/hour")
    await rate.fill("burst=5/second hourly=1000/hour")
    await page.get_by_role("button", name="Save changes").click()
    await expect(page.locator("#flash")).to_have_text(f"Saved rate_limit of {tid}.")
    got = (await http.get(f"{gw.admin}/v1/tokens/{tid}", headers=ADMIN)).json()
    assert got["rate_limit"] == [{"name": "burst", "limit": 5, "window_s": 1},
                                 {"name": "hourly", "limit": 1000, "window_s": 3600}]
    assert got["credits"]["remaining"] == 500
    await expect(detail.locator("dd", has_text="burst: 5 per 1 s")).to_have_count(1)
    assert page.problems == []
