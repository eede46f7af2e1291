"""The admin page in headless Chromium: what a person with only the admin token can do."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from playwright.async_api import Page, expect

from gateway.authority import Actor
from tests.e2e.conftest import backend_pair, http, start_gateway, upstream  # noqa: F401

BOOT = "browser-bootstrap-admin-secret-01"
XSS = "<img src=x onerror=alert(1)>"
TOKEN_RE = re.compile(r"^agt_[0-9A-Za-z]{38}$")
pytestmark = pytest.mark.parametrize("backend_pair", ["sqlite+memory"], indirect=True)


@pytest.fixture
async def gw(start_gateway):  # noqa: F811
    return await start_gateway(admin_token=BOOT)


@pytest.fixture
async def page(browser, gw):
    context = await browser.new_context(permissions=["clipboard-read", "clipboard-write"],
                                        viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.problems = []  # console errors, CSP reports and JS dialogs (alert) seen on the page
    page.on("console", lambda m: page.problems.append(m.text) if m.type == "error"
            and "status of 401" not in m.text else None)  # 401: a refused sign-in, on purpose
    page.on("pageerror", lambda e: page.problems.append(str(e)))
    page.on("dialog", lambda d: page.problems.append(f"dialog: {d.message}"))
    yield page
    await context.close()


async def tab(page: Page, name: str) -> None:
    await page.locator("#nav").get_by_role("button", name=name, exact=True).click()


async def sign_in(page: Page, gw, secret: str = BOOT) -> None:
    await page.goto(f"{gw.admin}/admin")
    await page.get_by_label("Admin token").fill(secret)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()


async def test_sign_in_create_see_the_secret_once_find_it_and_revoke_it(page, gw, http,  # noqa: F811
                                                                         artifacts):
    await page.goto(f"{gw.admin}/admin")
    await page.get_by_label("Admin token").fill("not-the-admin-token")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#signin-error")).to_contain_text("malformed")
    await sign_in(page, gw)

    await tab(page, "Tokens")
    await page.get_by_text("Create a token").click()
    await page.get_by_label("Subject").first.fill("alice")
    await page.get_by_label("Name").fill(XSS)
    await page.get_by_label("Scopes (space-separated)").fill("read reports:read")
    await page.get_by_label("Expires in").fill("30d")
    await page.get_by_label("Metadata").fill("team=payments\nticket = SEC-42")
    await page.get_by_role("button", name="Create token").click()

    secret_box = page.locator("#secret-value")
    await expect(secret_box).to_be_visible()
    secret = (await secret_box.text_content()).strip()
    assert TOKEN_RE.match(secret)
    r = await http.get(f"{gw.proxy}/echo", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 200  # the secret shown is the real one
    [created], _ = await gw.gateway.authority.list(subject="alice")
    assert created.metadata == {"team": "payments", "ticket": "SEC-42"}
    assert created.expires_at - created.created_at == timedelta(days=30)
    await page.get_by_role("button", name="Copy").click()
    assert await page.evaluate("navigator.clipboard.readText()") == secret
    await page.get_by_role("button", name="Done").click()
    await expect(page.locator("#secret-panel")).to_be_hidden()
    assert secret not in await page.content()  # shown once: gone from the page
    await page.reload()
    assert secret not in await page.content()

    # the XSS name is shown as text, in the table, and nothing ran
    await tab(page, "Tokens")
    row = page.locator("#tokens-table tbody tr", has_text="alice")
    await expect(row).to_have_count(1)
    await expect(row.locator("td").first).to_have_text(XSS)
    assert await page.locator("#tokens-table img").count() == 0
    await expect(row.locator(".badge")).to_have_text("Active")

    await row.get_by_role("button", name="Revoke").click()
    await expect(page.locator("#confirm-dialog")).to_be_visible()
    await page.get_by_role("button", name="Cancel").click()  # cancel changes nothing
    await expect(page.locator("#confirm-dialog")).to_be_hidden()
    await expect(row.locator(".badge")).to_have_text("Active")
    await row.get_by_role("button", name="Revoke").click()
    reason = page.locator("#confirm-dialog").get_by_label("Reason")
    await reason.fill("left the team")
    await reason.press("Enter")  # Enter confirms what was typed
    await expect(row.locator(".badge")).to_have_text("Revoked")
    await expect(row.get_by_role("button", name="Revoke")).to_be_disabled()
    r = await http.get(f"{gw.proxy}/echo", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 401

    for subject, name in (("billing", "nightly-export"), ("billing", "invoices"),
                          ("monitoring", "prometheus")):
        await gw.gateway.authority.create(Actor("cli:test"), subject=subject, name=name)
    await tab(page, "Tokens")
    await page.screenshot(path=str(artifacts / "admin-tokens.png"), full_page=True)
    await tab(page, "Dashboard")
    await expect(page.locator('[data-stat="Revoked"] .value')).to_have_text("1")
    await expect(page.locator('[data-stat="Active"] .value')).to_have_text("3")
    await expect(page.locator('[data-stat="Created (24 h)"] .value')).to_have_text("4")
    await expect(page.locator("#top-subjects tbody tr").first).to_have_text("billing2")
    await page.screenshot(path=str(artifacts / "admin-dashboard.png"), full_page=True)
    assert page.problems == []


async def test_detail_chart_rotate_and_audit_log(page, gw, http):  # noqa: F811
    auth = gw.gateway.authority
    record, secret = await auth.create(Actor("cli:test"), subject="bob", name="build-bot",
                                       scopes=["read"], metadata={"ci": "yes"})
    for _ in range(4):
        await http.get(f"{gw.proxy}/echo", headers={"Authorization": f"Bearer {secret}"})
    await gw.gateway.usage.flush()
    await sign_in(page, gw)
    await tab(page, "Tokens")
    row = page.locator(f'tr[data-token-id="{record.id}"]')
    await row.get_by_role("button", name="Details").click()

    detail = page.locator("#token-detail")
    await expect(detail).to_be_visible()
    await expect(detail.locator("dd", has_text=record.family)).to_have_count(1)
    await expect(detail.locator("dd", has_text='ci="yes"')).to_have_count(1)
    await expect(detail.locator("#usage-chart rect")).to_have_count(30)
    assert await detail.locator("#usage-chart rect").last.get_attribute("height") == "70"
    await expect(page.locator("#detail-ips")).to_contain_text("127.0.0.1: 4 request(s)")

    await page.get_by_role("button", name="Close").click()
    await row.get_by_role("button", name="Rotate").click()
    await page.get_by_label("Grace period in seconds").fill("60")
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.locator("#secret-value")).to_have_text(TOKEN_RE)
    new_secret = (await page.locator("#secret-value").text_content()).strip()
    assert TOKEN_RE.match(new_secret) and new_secret != secret
    await expect(page.locator("#tokens-table tbody tr", has_text="build-bot")).to_have_count(2)
    for s in (secret, new_secret):  # the old one works during its grace
        r = await http.get(f"{gw.proxy}/echo", headers={"Authorization": f"Bearer {s}"})
        assert r.status_code == 200

    await tab(page, "Audit log")
    await page.locator("#events-type").select_option("token_rotated")
    await page.get_by_role("button", name="Filter").click()
    rows = page.locator("#events-table tbody tr")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("admin:bootstrap")
    await expect(rows.first).to_contain_text(record.id)
    assert page.problems == []


async def test_revoke_a_subjects_tokens_and_filter_the_table(page, gw, http):  # noqa: F811
    auth = gw.gateway.authority
    for name in ("a", "b"):
        await auth.create(Actor("cli:test"), subject="carol", name=name)
    await auth.create(Actor("cli:test"), subject="dave", name="keep")
    await sign_in(page, gw)
    await tab(page, "Bulk actions")
    await page.locator("#subject-revoke-subject").fill("carol")
    await page.get_by_role("button", name="Revoke subject's tokens").click()
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.locator("#flash")).to_have_text("Revoked 2 token(s) of carol.")

    await tab(page, "Tokens")
    await page.locator("#filter-status").select_option("revoked")
    await page.locator("#token-filters").get_by_role("button", name="Filter").click()
    rows = page.locator("#tokens-table tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.locator(".badge")).to_have_text(["Revoked", "Revoked"])
    await page.locator("#filter-status").select_option("")
    await page.locator("#filter-subject").fill("dave")
    await page.locator("#token-filters").get_by_role("button", name="Filter").click()
    await expect(rows).to_have_count(1)
    await expect(rows.locator(".badge")).to_have_text("Active")
    assert page.problems == []


async def test_page_is_served_with_a_strict_content_security_policy(page, gw, http):  # noqa: F811
    r = await http.get(f"{gw.admin}/admin")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp and r.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in r.text and " style=" not in r.text  # nothing inline to allow
    # an inline script injected into the live page is blocked by the policy
    await sign_in(page, gw)
    ran = await page.evaluate("""() => {
        window.__ran = false;
        const s = document.createElement('script');
        s.textContent = 'window.__ran = true';
        document.body.append(s);
        return window.__ran;
    }""")
    assert ran is False


async def test_family_revoke_delete_and_csv_export(page, gw, http):  # noqa: F811
    auth = gw.gateway.authority
    old, _ = await auth.create(Actor("cli:test"), subject="erin", name="deployer")
    new, _, _ = await auth.rotate(Actor("cli:test"), old.id, 3600)  # in grace: still active
    await sign_in(page, gw)
    await tab(page, "Tokens")

    async with page.expect_download() as info:
        await page.get_by_role("button", name="Export CSV").click()
    download = await info.value
    text = (await download.path()).read_text()
    assert download.suggested_filename == "tokens.csv"
    assert text.splitlines()[0].startswith("id,subject,name,status")
    assert old.id in text and new.id in text

    await page.locator(f'tr[data-token-id="{new.id}"]').get_by_role("button",
                                                                   name="Details").click()
    await page.get_by_role("button", name="Revoke family").click()
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.locator("#flash")).to_have_text(f"Revoked 2 token(s) of {old.family}.")
    await expect(page.locator("#tokens-table .badge")).to_have_text(["Revoked", "Revoked"])

    await page.get_by_role("button", name="Delete record").click()
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.locator(f'tr[data-token-id="{new.id}"]')).to_have_count(0)
    await expect(page.locator("#tokens-table tbody tr")).to_have_count(1)
    assert (await auth.list())[0][0].id == old.id
    assert page.problems == []


async def test_pages_through_many_tokens(page, gw, http):  # noqa: F811
    auth = gw.gateway.authority
    for i in range(45):
        await auth.create(Actor("cli:test"), subject="load", name=f"t{i:02}")
    await sign_in(page, gw)
    await tab(page, "Tokens")
    rows = page.locator("#tokens-table tbody tr td:first-child")
    await expect(rows).to_have_count(20)
    await expect(rows.first).to_have_text("t44")
    await expect(page.get_by_role("button", name="Previous")).to_be_disabled()
    await page.get_by_role("button", name="Next").click()
    await expect(rows.first).to_have_text("t24")
    await page.get_by_role("button", name="Next").click()
    await expect(rows).to_have_count(5)
    await expect(rows.last).to_have_text("t00")
    await expect(page.get_by_role("button", name="Next")).to_be_disabled()
    await page.get_by_role("button", name="Previous").click()
    await expect(rows.first).to_have_text("t24")
    assert page.problems == []


async def test_cleanup_and_emergency_revoke_all(page, gw, http):  # noqa: F811
    auth = gw.gateway.authority
    dead, _ = await auth.create(Actor("cli:test"), subject="x", name="dead")
    await auth.revoke(Actor("cli:test"), dead.id)
    live = [(await auth.create(Actor("cli:test"), subject="y", name=f"l{i}"))[1]
            for i in range(3)]
    await sign_in(page, gw)
    await tab(page, "Bulk actions")

    await page.locator("#cleanup-days").fill("0")
    await page.get_by_role("button", name="Clean up").click()
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.locator("#flash")).to_have_text("Deleted 1 record(s).")

    await page.locator("#revoke-all-reason").fill("key leaked")
    await page.get_by_role("button", name="Revoke all tokens").click()
    await page.get_by_label("Confirmation").fill("yes")  # not the words asked for: nothing
    await page.get_by_role("button", name="Confirm").click()
    r = await http.get(f"{gw.proxy}/echo", headers={"Authorization": f"Bearer {live[0]}"})
    assert r.status_code == 200
    await page.get_by_role("button", name="Revoke all tokens").click()
    await page.get_by_label("Confirmation").fill("REVOKE ALL")
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.locator("#flash")).to_have_text("Revoked 3 token(s).")
    for secret in live:
        r = await http.get(f"{gw.proxy}/echo", headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 401
    await tab(page, "Dashboard")  # the bootstrap admin token keeps working
    await expect(page.locator('[data-stat="Revoked"] .value')).to_have_text("3")
    assert page.problems == []


async def test_a_self_service_token_manages_its_own_subject_in_the_page(page, gw, http):  # noqa: F811
    auth = gw.gateway.authority
    _, mine = await auth.create(Actor("cli:test"), subject="team-a", name="team key",
                                scopes=["authgate:self", "read"])
    await auth.create(Actor("cli:test"), subject="team-b", name="not yours")
    await sign_in(page, gw, mine)
    await expect(page.locator("#stats")).to_contain_text("authgate:admin")
    await tab(page, "Tokens")
    await expect(page.locator("#tokens-table tbody tr")).to_have_count(1)
    await expect(page.locator("#tokens-table tbody")).not_to_contain_text("team-b")

    await page.get_by_text("Create a token").click()
    await page.get_by_label("Subject").first.fill("team-a")
    await page.get_by_label("Name").fill("wider")
    await page.get_by_label("Scopes (space-separated)").fill("write")
    await page.get_by_role("button", name="Create token").click()
    await expect(page.locator("#flash")).to_contain_text("may not grant scope write")
    await page.get_by_label("Scopes (space-separated)").fill("read")
    await page.get_by_role("button", name="Create token").click()
    await expect(page.locator("#secret-value")).to_have_text(TOKEN_RE)
    await expect(page.locator("#tokens-table tbody tr")).to_have_count(2)
