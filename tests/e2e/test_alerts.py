"""Alerts end to end on both backend pairs: real gateways (uvicorn) running the watcher and the
outbox, a real webhook receiver, Slack/Teams/Discord receivers and a real SMTP server
(aiosmtpd), the admin API over HTTP. Signatures are checked with the standardwebhooks package."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from standardwebhooks import Webhook

from tests.alert_receiver import receiver
from tests.e2e.conftest import StartGateway, free_port

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ADMIN = "alerts-admin-token-0123456789"
HDR = {"Authorization": f"Bearer {ADMIN}"}
QUIET = {"multi_ip": None, "rapid_use": None, "failed_auth": None, "rate_limit_breach": None}


def alerts_config(*channels: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"check_interval_s": 1, "channels": list(channels), "rotation": None,
            "detectors": QUIET, **kw}


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.1)


async def create(http: httpx.AsyncClient, admin: str, subject: str, **body: Any) -> dict[str, Any]:
    r = await http.post(f"{admin}/v1/tokens", headers=HDR,
                        json={"subject": subject, "name": "n", "scopes": ["read"], **body})
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


async def test_failed_auth_reaches_a_signed_webhook_the_api_and_metrics(
        start_gateway: StartGateway, http: httpx.AsyncClient) -> None:
    async with receiver() as hook:
        gw = await start_gateway(admin_token=ADMIN, usage_flush_interval_s=0.2,
                                 alerts=alerts_config(
                                     {"type": "webhook", "url": hook.url + "/in",
                                      "secret": SECRET},
                                     detectors={**QUIET, "failed_auth": {
                                         "count": 5, "window": "5m"}}))
        for _ in range(6):
            r = await http.get(f"{gw.proxy}/x", headers={"Authorization": "Bearer agt_nope"})
            assert r.status_code == 401
        await until(lambda: len(hook.requests) >= 1)
        [req] = hook.requests
        body = Webhook(SECRET).verify(req.body, req.headers)
        alert = body["alert"]
        assert body["type"] == "authgate.alert" and req.path == "/in"
        assert (alert["kind"], alert["ip"], alert["severity"]) == ("failed_auth", "127.0.0.1",
                                                                 "high")
        assert alert["details"]["count"] >= 5 and req.headers["webhook-id"] == alert["id"]
        assert "agt_nope" not in req.body
        page = (await http.get(f"{gw.admin}/v1/alerts?kind=failed_auth", headers=HDR)).json()
        assert [a["id"] for a in page["items"]] == [alert["id"]] and page["next_cursor"] is None
        assert page["items"][0] == alert
        events = (await http.get(f"{gw.admin}/v1/events?type=alert_raised",
                                 headers=HDR)).json()["items"]
        assert [e["details"]["alert_id"] for e in events] == [alert["id"]]
        metrics = (await http.get(f"{gw.admin}/metrics")).text
        assert 'authgate_alerts_total{kind="failed_auth"} 1.0' in metrics
        assert "authgate_alert_delivery_lag_seconds" in metrics
        assert hook.url not in metrics


async def test_two_replicas_deliver_each_alert_exactly_once(
        start_gateway: StartGateway, http: httpx.AsyncClient) -> None:
    async with receiver() as hook, receiver() as slack:
        config = alerts_config({"type": "webhook", "url": hook.url, "secret": SECRET},
                               {"type": "slack", "url": slack.url})
        a = await start_gateway(admin_token=ADMIN, alerts=config)
        b = await start_gateway(admin_token=ADMIN, alerts=config)
        ids = [(await create(http, (a, b)[i % 2].admin, f"s{i}", expires_in="5d"))["id"]
               for i in range(6)]
        await until(lambda: len(hook.requests) >= 6 and len(slack.requests) >= 6)
        await asyncio.sleep(2.5)  # more checks and outbox passes on both replicas
        verified = [Webhook(SECRET).verify(r.body, r.headers)["alert"] for r in hook.requests]
        assert sorted(x["token_id"] for x in verified) == sorted(ids)
        assert len(hook.requests) == 6 and len(slack.requests) == 6
        listed = (await http.get(f"{b.admin}/v1/alerts?limit=500", headers=HDR)).json()
        assert len(listed["items"]) == 6
        leaders = [gw.gateway.services.monitor.leader for gw in (a, b)]  # type: ignore[union-attr]
        assert sorted(leaders) == [False, True]


async def test_a_receiver_that_fails_and_a_restart_mid_retry_lose_nothing(
        start_gateway: StartGateway, http: httpx.AsyncClient) -> None:
    async with receiver(fail_first=2) as hook:
        config = alerts_config({"type": "webhook", "url": hook.url, "secret": SECRET})
        gw = await start_gateway(admin_token=ADMIN, alerts=config)
        token = await create(http, gw.admin, "alice", expires_in="2d")
        await until(lambda: len(hook.requests) >= 1)
        first_at = time.monotonic()
        await gw.stop()  # restarted while its delivery waits for a retry
        gw2 = await start_gateway(admin_token=ADMIN, alerts=config)
        await until(lambda: len(hook.requests) >= 3, timeout=30)
        assert time.monotonic() - first_at < 60  # 5 s, then 10 s (+ polls, restart, load)
        assert len({r.headers["webhook-id"] for r in hook.requests}) == 1
        alerts = [Webhook(SECRET).verify(r.body, r.headers)["alert"] for r in hook.requests]
        assert all(x == alerts[0] for x in alerts)
        assert alerts[0]["token_id"] == token["id"] and token["token"] not in hook.requests[2].body
        await asyncio.sleep(1.5)
        assert len(hook.requests) == 3  # delivered: not sent again
        listed = (await http.get(f"{gw2.admin}/v1/alerts", headers=HDR)).json()["items"]
        assert [x["id"] for x in listed] == [alerts[0]["id"]]


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                              envelope.content.decode("utf-8", "replace")))
        return "250 OK"


@pytest.fixture
def smtp() -> Any:
    box = _Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, f"smtp://127.0.0.1:{port}"
    controller.stop()


async def test_alerts_test_answers_per_channel_and_formats(
        start_gateway: StartGateway, http: httpx.AsyncClient, smtp: Any) -> None:
    box, smtp_url = smtp
    async with receiver() as hook, receiver(status=500) as slack, \
            receiver(hang=True) as discord, receiver() as teams:
        gw = await start_gateway(admin_token=ADMIN, alerts=alerts_config(
            {"type": "webhook", "url": hook.url, "secret": SECRET},
            {"type": "slack", "url": slack.url + "/services/T0/B0/secretpart"},
            {"type": "discord", "url": discord.url, "timeout_s": 1},
            {"type": "teams", "url": teams.url},
            {"type": "email", "smtp": smtp_url, "from": "authgate@example.com",
             "to": ["ops@example.com"]},
            {"type": "log"}))
        started = time.monotonic()
        r = await http.post(f"{gw.admin}/v1/alerts/test", headers=HDR)
        assert r.status_code == 200, r.text
        assert time.monotonic() - started < 20  # a hanging channel costs its timeout only
        results = {c["type"]: c["result"] for c in r.json()["channels"]}
        assert results == {"webhook": "ok", "slack": "HTTP 500",
                           "discord": "timed out after 1 s", "teams": "ok", "email": "ok",
                           "log": "ok"}
        assert "secretpart" not in r.text and slack.url not in r.text
        assert Webhook(SECRET).verify(hook.requests[0].body, hook.requests[0].headers)
        card = teams.requests[0].json
        assert card["type"] == "message"
        assert card["attachments"][0]["contentType"] == "application/vnd.microsoft.card.adaptive"
        assert slack.requests[0].json["text"].startswith("[authgate] info:")
        assert "content" in discord.requests[0].json
        [(sender, rcpts, content)] = box.messages
        assert sender == "authgate@example.com" and rcpts == ["ops@example.com"]
        assert "Subject: [authgate] info: test" in content
        # only an admin may send test notifications
        self_token = (await create(http, gw.admin, "alice", scopes=["authgate:self"]))["token"]
        denied = await http.post(f"{gw.admin}/v1/alerts/test",
                                 headers={"Authorization": f"Bearer {self_token}"})
        assert denied.status_code == 403


async def test_alerts_test_without_alerts_is_404_naming_the_key(
        start_gateway: StartGateway, http: httpx.AsyncClient) -> None:
    gw = await start_gateway(admin_token=ADMIN)
    assert gw.gateway.services.monitor is None  # nothing runs, the hot path is as before
    r = await http.post(f"{gw.admin}/v1/alerts/test", headers=HDR)
    assert r.status_code == 404 and "alerts" in r.json()["error_description"]
    listed = await http.get(f"{gw.admin}/v1/alerts", headers=HDR)
    assert listed.status_code == 200 and listed.json() == {"items": [], "next_cursor": None}


@pytest.fixture
async def raised(start_gateway: StartGateway,
                 http: httpx.AsyncClient) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A gateway that raised token_expiring for alice's two tokens and bob's one."""
    gw = await start_gateway(admin_token=ADMIN, alerts=alerts_config({"type": "log"}))
    ids = {}
    for subject, name in (("alice", "a1"), ("bob", "b1"), ("alice", "a2")):
        ids[name] = (await create(http, gw.admin, subject, expires_in="3d"))["id"]
    async def count() -> int:
        r = await http.get(f"{gw.admin}/v1/alerts", headers=HDR)
        return len(r.json()["items"])
    deadline = time.monotonic() + 20
    while await count() < 3:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    yield gw.admin, ids


async def test_alerts_api_filters_pages_and_refuses_bad_input(
        raised: tuple[str, dict[str, str]], http: httpx.AsyncClient) -> None:
    admin, ids = raised

    async def get(query: str, headers: dict[str, str] = HDR) -> httpx.Response:
        return await http.get(f"{admin}/v1/alerts{query}", headers=headers)

    items = (await get("")).json()["items"]
    assert [a["token_id"] for a in items] == [ids["a2"], ids["b1"], ids["a1"]]  # newest first
    assert {a["kind"] for a in items} == {"token_expiring"}
    assert set(items[0]) == {"id", "kind", "severity", "message", "raised_at", "token_id",
                             "subject", "ip", "threshold", "window", "details"}
    assert [a["token_id"] for a in (await get("?subject=bob")).json()["items"]] == [ids["b1"]]
    assert [a["token_id"] for a in (await get(f"?token_id={ids['a1']}")).json()["items"]] == [
        ids["a1"]]
    assert (await get("?kind=multi_ip")).json()["items"] == []
    future = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert (await get(f"?since={future}")).json()["items"] == []
    assert len((await get("?since=2020-01-01")).json()["items"]) == 3
    first = (await get("?limit=2")).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    rest = (await get(f"?limit=2&cursor={first['next_cursor']}")).json()
    assert [a["token_id"] for a in rest["items"]] == [ids["a1"]] and rest["next_cursor"] is None
    for bad in ("?kind=banana", "?limit=0", "?limit=501", "?since=yesterday", "?cursor=zzz",
                "?kynd=token_expiring"):
        r = await get(bad)
        assert r.status_code in (400, 422), bad
        assert set(r.json()) == {"error", "error_description"}
    assert (await get("", {})).status_code == 401
    assert (await get("", {"Authorization": "Bearer agt_garbage"})).status_code == 401


async def test_a_self_caller_sees_its_own_subjects_alerts_only(
        raised: tuple[str, dict[str, str]], http: httpx.AsyncClient) -> None:
    admin, ids = raised
    r = await http.post(f"{admin}/v1/tokens", headers=HDR, json={
        "subject": "alice", "name": "me", "scopes": ["authgate:self", "read"]})
    me = {"Authorization": f"Bearer {r.json()['token']}"}
    mine = (await http.get(f"{admin}/v1/alerts", headers=me)).json()["items"]
    assert sorted(a["token_id"] for a in mine) == sorted([ids["a1"], ids["a2"]])
    assert all(a["subject"] == "alice" and a["ip"] is None for a in mine)
    other = await http.get(f"{admin}/v1/alerts?subject=bob", headers=me)
    assert other.status_code == 403
    by_id = (await http.get(f"{admin}/v1/alerts?token_id={ids['b1']}", headers=me)).json()
    assert by_id["items"] == []  # another subject's token: nothing, as if unknown




async def test_a_replay_is_raised_at_once_where_it_happens(
        start_gateway: StartGateway, http: httpx.AsyncClient) -> None:
    async with receiver() as hook:
        # checks once a minute: the alert cannot come from a check after the replay
        gw = await start_gateway(admin_token=ADMIN, alerts=alerts_config(
            {"type": "webhook", "url": hook.url, "secret": SECRET}, check_interval_s=60,
            expiry_days=[]))
        old = await create(http, gw.admin, "alice")
        r = await http.post(f"{gw.admin}/v1/tokens/{old['id']}/rotate", headers=HDR,
                            json={"grace_s": 1})
        assert r.status_code == 201
        await asyncio.sleep(1.5)
        refused = await http.get(f"{gw.proxy}/x",
                                 headers={"Authorization": f"Bearer {old['token']}"})
        assert refused.status_code == 401
        await until(lambda: len(hook.requests) >= 1, timeout=10)
        alert = Webhook(SECRET).verify(hook.requests[0].body, hook.requests[0].headers)["alert"]
        assert (alert["kind"], alert["token_id"], alert["severity"], alert["ip"]) == (
            "token_replay_detected", old["id"], "critical", "127.0.0.1")
        assert old["token"] not in hook.requests[0].body


async def test_a_hanging_channel_blocks_neither_the_checks_nor_requests(
        start_gateway: StartGateway, http: httpx.AsyncClient) -> None:
    async with receiver(hang=True) as stuck:
        gw = await start_gateway(admin_token=ADMIN, alerts=alerts_config(
            {"type": "discord", "url": stuck.url, "timeout_s": 30}))
        first = await create(http, gw.admin, "alice", expires_in="2d")
        await until(lambda: len(stuck.requests) >= 1)  # its delivery now hangs
        second = await create(http, gw.admin, "bob", expires_in="2d")

        async def listed() -> set[str]:
            items = (await http.get(f"{gw.admin}/v1/alerts", headers=HDR)).json()["items"]
            return {a["token_id"] for a in items}

        deadline = time.monotonic() + 10
        while second["id"] not in await listed():
            assert time.monotonic() < deadline, "the checks waited for a hanging channel"
            await asyncio.sleep(0.2)
        assert first["id"] in await listed()
        started = time.monotonic()
        r = await http.get(f"{gw.proxy}/x", headers={"Authorization": f"Bearer {first['token']}"})
        assert r.status_code == 200 and time.monotonic() - started < 5
