"""The alert checks, the outbox and the watcher's lease on both backend pairs (SQLite + memory,
PostgreSQL + Redis), in process with a settable clock: every check raises what it should, once;
two replicas at once raise and deliver each alert once; the lease hands over; a store outage
skips the checks and is recorded once when the store returns."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from standardwebhooks import Webhook

from gateway.authority import Actor
from gateway.config import Settings
from gateway.errors import Refusal, StoreUnavailable
from gateway.monitor.repo import AlertFilter
from gateway.monitor.watcher import Watcher, lease_s, poll_s
from gateway.services import Services
from gateway.store import Event, EventFilter, Usage
from tests.alert_receiver import receiver
from tests.conftest import Clock, open_empty_store
from tests.contract.test_backends import pair  # noqa: F401 - the backend-pair fixture

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ACTOR = Actor("test")
Open = Callable[..., Any]
OFF = {"multi_ip": None, "rapid_use": None, "failed_auth": None, "rate_limit_breach": None}


@pytest.fixture
async def replicas(pair: tuple[str, str], clock: Clock) -> AsyncIterator[Open]:  # noqa: F811
    """Services (not started: the tests drive the watcher) on one pair, one clock."""
    store, cache = pair
    s = await open_empty_store(store)
    if s.dialect == "postgresql":
        async with s.driver.transaction() as tx:
            await tx.execute("TRUNCATE alerts, alert_deliveries, monitor_lease")
    await s.close()
    if cache != "memory://":
        r = aioredis.from_url(cache)
        await r.flushdb()
        await r.aclose()
    opened: list[Services] = []

    async def open_one(alerts: dict[str, Any] | None = None) -> Services:
        settings = Settings(store=store, cache=cache, pepper="alerts",
                            alerts={"check_interval_s": 1, **(alerts or {})})
        services = await Services.open(settings, clock=clock)
        opened.append(services)
        return services

    yield open_one
    for services in opened:
        await services.close()


def watcher(services: Services) -> Watcher:
    assert services.monitor is not None
    return services.monitor


async def alerts_of(services: Services, kind: str | None = None) -> list[Any]:
    return await watcher(services).repo.list_alerts(AlertFilter(kind=kind), 500)


async def test_token_expiring_once_per_threshold_with_its_severity(replicas: Open,
                                                                    clock: Clock) -> None:
    gw = await replicas({"detectors": OFF, "rotation": None})
    auth, w = gw.authority, watcher(gw)
    soon, _ = await auth.create(ACTOR, subject="alice", name="ci", expires_in="20d")
    later, _ = await auth.create(ACTOR, subject="bob", name="x", expires_in="60d")
    raised = await w.run_checks()
    assert [(a.kind, a.token_id, a.threshold, a.severity) for a in raised] == [
        ("token_expiring", soon.id, "30d", "low")]
    assert await w.run_checks() == []  # once per token and threshold
    clock.advance(days=7)  # 13 days left: the 14 d threshold
    clock.advance(hours=1)
    assert [(a.threshold, a.severity) for a in await w.run_checks()] == [("14d", "medium")]
    clock.advance(days=6)  # 6 days 23 h left
    assert [(a.threshold, a.severity) for a in await w.run_checks()] == [("7d", "high")]
    clock.advance(days=6, hours=1)
    assert [(a.threshold, a.severity) for a in await w.run_checks()] == [("1d", "critical")]
    clock.advance(days=2)  # expired: nothing more
    assert await w.run_checks() == []
    stored = await alerts_of(gw, "token_expiring")
    assert [a.threshold for a in stored] == ["1d", "7d", "14d", "30d"]  # newest first
    assert all(a.subject == "alice" and a.details["name"] == "ci" for a in stored)
    events = await gw.store.list_events(EventFilter(type="alert_raised"), 50)
    assert len(events) == 4 and {e.actor for e in events} == {"monitor"}
    assert {e.details["alert_id"] for e in events} == {a.id for a in stored}
    assert later.id not in {a.token_id for a in stored}


async def test_rotation_due_by_age_and_by_high_usage(replicas: Open, clock: Clock) -> None:
    gw = await replicas({"detectors": OFF, "expiry_days": [], "rotation": {
        "max_age_days": 90, "high_usage": {"requests_per_day": 100, "max_age_days": 30}}})
    auth, w = gw.authority, watcher(gw)
    quiet, _ = await auth.create(ACTOR, subject="s", name="quiet")
    busy, _ = await auth.create(ACTOR, subject="s", name="busy")
    clock.advance(days=31)
    now = clock()
    # 7 days x 120 requests for busy, 7 x 10 for quiet (written as the gateway's batches are)
    per_day = {(now - timedelta(days=i)).date(): 120 for i in range(7)}
    await gw.store.record_usage([Usage(busy.id, 840, now, "10.0.0.1", per_day=per_day),
                                 Usage(quiet.id, 70, now, "10.0.0.1", per_day={
                                     d: 10 for d in per_day})])
    raised = await w.run_checks()
    assert [(a.kind, a.token_id, a.threshold) for a in raised] == [
        ("rotation_due", busy.id, "high_usage:30d")]
    clock.advance(days=60)  # both older than 90 days
    raised = await w.run_checks()
    assert sorted((a.token_id, a.threshold) for a in raised) == sorted(
        [(quiet.id, "90d"), (busy.id, "90d")])
    assert await w.run_checks() == []
    rotated, _, _ = await auth.rotate(ACTOR, quiet.id)  # the successor is young
    clock.advance(days=1)
    assert await w.run_checks() == []
    assert rotated.id != quiet.id


async def test_inactive_tokens_are_revoked_with_reason_event_and_alert(replicas: Open,
                                                                       clock: Clock) -> None:
    gw = await replicas({"detectors": OFF, "expiry_days": [], "rotation": None,
                         "inactivity_revoke_days": 30})
    auth, w = gw.authority, watcher(gw)
    idle, secret = await auth.create(ACTOR, subject="s", name="idle")
    used, _ = await auth.create(ACTOR, subject="s", name="used")
    clock.advance(days=20)
    await gw.store.record_usage([Usage(used.id, 1, clock(), "10.0.0.9")])
    await gw.pipeline.verify(secret, None)  # cached as active before the revoke
    clock.advance(days=11)
    raised = await w.run_checks()
    assert [(a.kind, a.token_id) for a in raised] == [("inactive_token_revoked", idle.id)]
    record = await auth.get(idle.id)
    assert record.status(clock()) == "revoked" and record.revoked_reason == "inactive for 30 days"
    assert (await auth.get(used.id)).status(clock()) == "active"
    revoked = await gw.store.list_events(EventFilter(type="token_revoked"), 10)
    assert [(e.token_id, e.actor) for e in revoked] == [(idle.id, "monitor")]
    assert await w.run_checks() == []
    with pytest.raises(Refusal):
        await gw.pipeline.verify(secret, None)  # dropped from the caches too


async def test_multi_ip_and_rapid_use(replicas: Open, clock: Clock) -> None:
    gw = await replicas({"expiry_days": [], "rotation": None, "detectors": {
        **OFF, "multi_ip": {"distinct_ips": 3, "window": "1h"},
        "rapid_use": {"requests": 50, "window": "10m"}}})
    auth, w = gw.authority, watcher(gw)
    old, _ = await auth.create(ACTOR, subject="s", name="old")
    clock.advance(hours=2)
    new, _ = await auth.create(ACTOR, subject="t", name="new")
    now = clock()
    assert await w.run_checks() == []
    await gw.store.record_usage([
        Usage(old.id, 10, now, "10.0.0.3", ips={f"10.0.0.{i}": [now, 1] for i in (1, 2, 3)}),
        Usage(new.id, 60, now, "10.0.0.7", ips={"10.0.0.7": [now, 60]})])
    raised = {a.kind: a for a in await w.run_checks()}
    assert set(raised) == {"multi_ip", "rapid_use"}
    assert raised["multi_ip"].token_id == old.id and raised["multi_ip"].window == "1h"
    assert sorted(raised["multi_ip"].details["ips"]) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    # a token created inside the window: its whole count is within it
    assert raised["rapid_use"].token_id == new.id and raised["rapid_use"].details == {
        "requests": 60}
    assert await w.run_checks() == []  # once per window
    # the old token: 60 more requests between two checks 5 minutes apart
    clock.advance(minutes=5)
    await gw.store.record_usage([Usage(old.id, 60, clock(), "10.0.0.3")])
    clock.advance(minutes=5)
    rapid = [a for a in await w.run_checks() if a.kind == "rapid_use"]
    assert [(a.token_id, a.details["requests"]) for a in rapid] == [(old.id, 60)]


async def test_failed_auth_rate_limit_breach_and_creation_rate(replicas: Open,
                                                               clock: Clock) -> None:
    gw = await replicas({"expiry_days": [], "rotation": None, "detectors": {
        **OFF, "failed_auth": {"count": 10, "window": "5m"},
        "rate_limit_breach": {"count": 5, "window": "10m"}}})
    auth, w = gw.authority, watcher(gw)
    token, _ = await auth.create(ACTOR, subject="s", name="t")
    now = clock()

    def refusal(type_: str, count: int, **kw: Any) -> Event:
        details = {"count": count, "reason": kw.pop("reason", "unknown")}
        return Event(type=type_, actor="gateway", at=now, details=details, **kw)

    # batched refusal events, as gateway/usage.py writes them (with their counts)
    await gw.store.insert_events([
        refusal("auth_failed", 6, ip="203.0.113.5"), refusal("auth_failed", 6, ip="203.0.113.5",
                                                               reason="malformed"),
        refusal("auth_failed", 9, ip="203.0.113.6"),
        refusal("rate_limited", 5, ip="10.0.0.1", token_id=token.id, subject="s",
                reason="token"),
        refusal("rate_limited", 4, ip="198.51.100.1", reason="ip")])
    # the creation limit's refusals (branch suspend): one event per refused creation
    await gw.store.insert_events([Event(
        type="rate_limited", actor="admin:bootstrap", at=now, subject="mallory",
        details={"reason": "creation_limit", "limit": "10/hour"}) for _ in range(3)])
    raised = sorted(await w.run_checks(), key=lambda a: a.kind)
    assert [(a.kind, a.ip, a.token_id, a.subject, a.details.get("count")) for a in raised] == [
        ("creation_rate", None, None, "mallory", 3),
        ("failed_auth", "203.0.113.5", None, None, 12),
        ("rate_limit_breach", None, token.id, "s", 5)]
    assert raised[0].window == "1h" and raised[1].window == "5m"
    assert await w.run_checks() == []
    # a later window of the same attack is raised again, once
    clock.advance(minutes=10)
    now = clock()
    await gw.store.insert_events([refusal("auth_failed", 10, ip="203.0.113.5")])
    assert [(a.kind, a.ip) for a in await w.run_checks()] == [("failed_auth", "203.0.113.5")]


async def test_token_replay_is_raised_where_it_happens_and_once(replicas: Open,
                                                                 clock: Clock) -> None:
    gw = await replicas({"detectors": OFF, "expiry_days": [], "rotation": None})
    other = await replicas({"detectors": OFF, "expiry_days": [], "rotation": None})
    auth, w = gw.authority, watcher(gw)
    old, _ = await auth.create(ACTOR, subject="s", name="t")
    await auth.rotate(ACTOR, old.id, "1m")
    clock.advance(minutes=2)
    assert await auth.check_replay(await auth.get(old.id), Actor("gateway", "192.0.2.8"))
    await asyncio.gather(*w._replays)  # raised at once, off the request, by this replica
    [alert] = await alerts_of(gw, "token_replay_detected")
    assert (alert.severity, alert.token_id, alert.subject, alert.ip) == (
        "critical", old.id, "s", "192.0.2.8")
    assert alert.details["family"] == old.family and alert.details["revoked"] >= 1
    # the checks (on any replica) find the event and raise nothing more
    assert await watcher(other).run_checks() == [] and await w.run_checks() == []


async def test_a_replay_missed_where_it_happened_is_raised_by_the_next_check(
        replicas: Open, clock: Clock) -> None:
    gw = await replicas({"detectors": OFF, "expiry_days": [], "rotation": None})
    auth = gw.authority
    auth.on_replay = None  # as if the replica crashed before raising it
    old, _ = await auth.create(ACTOR, subject="s", name="t")
    await auth.rotate(ACTOR, old.id, "1m")
    clock.advance(minutes=2)
    assert await auth.check_replay(await auth.get(old.id), Actor("gateway", "192.0.2.8"))
    raised = await watcher(gw).run_checks()
    assert [(a.kind, a.token_id, a.ip) for a in raised] == [
        ("token_replay_detected", old.id, "192.0.2.8")]
    assert await watcher(gw).run_checks() == []


async def test_two_replicas_raise_and_deliver_each_alert_once(replicas: Open,
                                                              clock: Clock) -> None:
    async with receiver() as hook, receiver() as slack:
        channels = [{"type": "webhook", "url": hook.url + "/hook", "secret": SECRET},
                    {"type": "slack", "url": slack.url + "/slack"}]
        a = await replicas({"channels": channels, "detectors": OFF, "rotation": None})
        b = await replicas({"channels": channels, "detectors": OFF, "rotation": None})
        ids = [(await a.authority.create(ACTOR, subject=f"s{i}", name="n",
                                         expires_in="3d"))[0].id for i in range(20)]
        first, second = await asyncio.gather(watcher(a).run_checks(), watcher(b).run_checks())
        assert sorted(x.token_id for x in first + second) == sorted(ids)  # each once
        assert len(await alerts_of(a)) == 20
        delivered = await asyncio.gather(*(watcher(x).outbox.deliver_due()
                                           for x in (a, b, a, b)))
        assert sum(delivered) == 40
        assert len(hook.requests) == 20 and len(slack.requests) == 20
        wh = Webhook(SECRET)
        got = sorted(wh.verify(r.body, r.headers)["alert"]["token_id"] for r in hook.requests)
        assert got == sorted(ids)
        assert all("text" in r.json for r in slack.requests)
        assert await watcher(a).outbox.deliver_due() == 0


async def test_backoff_same_webhook_id_and_restart_mid_retry(replicas: Open,
                                                             clock: Clock) -> None:
    async with receiver(fail_first=3) as hook:
        channels = [{"type": "webhook", "url": hook.url, "secret": SECRET}]
        gw = await replicas({"channels": channels, "detectors": OFF, "rotation": None})
        token, _ = await gw.authority.create(ACTOR, subject="s", name="n", expires_in="2d")
        [alert] = await watcher(gw).run_checks()
        w = watcher(gw)
        assert await w.outbox.deliver_due() == 0  # 503
        assert await w.outbox.deliver_due() == 0  # not due yet
        clock.advance(seconds=5)  # the first retry within 5 s
        assert await w.outbox.deliver_due() == 0  # 503 again
        clock.advance(seconds=5)
        assert await w.outbox.deliver_due() == 0  # second retry is 10 s after
        await gw.close()  # the gateway restarts mid-retry
        gw2 = await replicas({"channels": channels, "detectors": OFF, "rotation": None})
        clock.advance(seconds=5)
        assert await watcher(gw2).outbox.deliver_due() == 0  # 503 (third failure)
        clock.advance(seconds=19)
        assert await watcher(gw2).outbox.deliver_due() == 0  # 20 s after the third
        clock.advance(seconds=1)
        assert await watcher(gw2).outbox.deliver_due() == 1
        assert len(hook.requests) == 4
        assert {r.headers["webhook-id"] for r in hook.requests} == {alert.id}
        body = Webhook(SECRET).verify(hook.requests[-1].body, hook.requests[-1].headers)
        assert body["type"] == "authgate.alert" and body["alert"] == alert.public()
        assert token.token_hash not in hook.requests[-1].body
        [row] = await watcher(gw2).repo.deliveries_of(alert.id)
        assert row["attempts"] == 4 and row["delivered_at"] is not None
        failures = gw.metrics.registry.get_sample_value(
            "authgate_alert_delivery_failures_total", {"channel": "webhook"})
        assert failures == 2.0  # this process's two; the restarted one counted its own


async def test_a_delivery_is_given_up_after_24_hours(replicas: Open, clock: Clock) -> None:
    async with receiver(status=500) as hook:
        gw = await replicas({"channels": [{"type": "discord", "url": hook.url}],
                             "detectors": OFF, "rotation": None})
        await gw.authority.create(ACTOR, subject="s", name="n", expires_in="2d")
        [alert] = await watcher(gw).run_checks()
        outbox, driver = watcher(gw).outbox, gw.store.driver
        gaps = []
        for _ in range(300):
            attempted = clock()
            assert await outbox.deliver_due() == 0
            row = await driver.fetchrow("SELECT next_at, failed_at, last_error FROM "
                                        "alert_deliveries WHERE alert_id = $1", alert.id)
            if row["failed_at"] is not None:
                break
            due = row["next_at"]
            due = due if not isinstance(due, str) else datetime.fromisoformat(due)
            gaps.append((due - attempted).total_seconds())
            clock.now = due
        assert row["failed_at"] is not None and row["last_error"] == "HTTP 500"
        assert gaps[:5] == [5, 10, 20, 40, 80] and max(gaps) == 600
        assert 24 * 3600 <= sum(gaps) < 24 * 3600 + 600
        assert len(hook.requests) == len(gaps) + 1
        assert await outbox.deliver_due() == 0  # given up: never sent again
        await outbox.update_lag()
        assert gw.metrics.registry.get_sample_value(
            "authgate_alert_delivery_lag_seconds") == 0


async def test_one_leader_and_handover(replicas: Open, clock: Clock) -> None:
    a = await replicas({"detectors": OFF, "rotation": None, "check_interval_s": 10})
    b = await replicas({"detectors": OFF, "rotation": None, "check_interval_s": 10})
    wa, wb = watcher(a), watcher(b)
    await asyncio.gather(wa.tick(), wb.tick())
    assert [wa.leader, wb.leader].count(True) == 1
    leader, standby = (wa, wb) if wa.leader else (wb, wa)
    # the leader dies without a word: its lease runs out, then the standby takes over
    clock.advance(seconds=lease_s(10) - 1)
    await standby.tick()
    assert not standby.leader
    clock.advance(seconds=1)
    await standby.tick()
    assert standby.leader
    # handover within 3 x interval or 30 s, whichever is longer
    assert lease_s(10) + poll_s(10) < max(3 * 10, 30)
    assert lease_s(300) + poll_s(300) < 900 and lease_s(1) + poll_s(1) < 30
    await leader.tick()  # the old one comes back: it is a standby now
    assert not leader.leader
    # a clean stop hands over at once
    standby._task = asyncio.create_task(asyncio.sleep(3600))  # as if started
    await standby.stop()
    await leader.tick()
    assert leader.leader


async def test_store_unreachable_skips_checks_and_is_recorded_once(
        replicas: Open, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    gw = await replicas({"channels": [{"type": "log"}], "detectors": OFF, "rotation": None})
    w = watcher(gw)
    await w.tick()
    assert w.leader
    await gw.authority.create(ACTOR, subject="s", name="n", expires_in="2d")
    store = gw.store
    await store.close()  # the store goes away
    caplog.set_level(logging.WARNING, "authgate.alerts")
    assert await w.check_once() == []
    assert await w.check_once() == []
    await asyncio.sleep(0.05)  # the log channel writes at once
    logged = [r.getMessage() for r in caplog.records if "store_unreachable" in r.getMessage()]
    assert len(logged) == 1
    skipped = gw.metrics.registry.get_sample_value("authgate_monitor_checks_skipped_total")
    assert skipped == 2
    await store.open()  # it returns
    raised = await w.check_once()
    assert sorted(a.kind for a in raised) == ["store_unreachable", "token_expiring"]
    outage = next(a for a in raised if a.kind == "store_unreachable")
    assert outage.id in logged[0] and outage.details["until"]
    assert await w.check_once() == []
    assert len(await alerts_of(gw, "store_unreachable")) == 1
    with pytest.raises(StoreUnavailable):
        await store.close()
        await w.run_checks()
    await store.open()


async def test_reconfigure_takes_new_channels_and_thresholds(replicas: Open,
                                                             clock: Clock) -> None:
    gw = await replicas({"detectors": OFF, "rotation": None, "expiry_days": [1]})
    w = watcher(gw)
    await gw.authority.create(ACTOR, subject="s", name="n", expires_in="3d")
    assert await w.run_checks() == []
    async with receiver() as slack:
        new = Settings(alerts={"check_interval_s": 1, "detectors": OFF, "rotation": None,
                               "expiry_days": [7], "channels": [
                                   {"type": "slack", "url": slack.url}]}).alerts
        assert new is not None
        w.reconfigure(new)
        [alert] = await w.run_checks()
        assert alert.threshold == "7d"
        assert await w.outbox.deliver_due() == 1
        assert json.loads(slack.requests[0].body)["text"].startswith("[authgate] high:")


async def test_an_inactive_token_alerted_before_a_crash_is_still_revoked(
        replicas: Open, clock: Clock) -> None:
    gw = await replicas({"detectors": OFF, "expiry_days": [], "rotation": None,
                         "inactivity_revoke_days": 7})
    w = watcher(gw)
    idle, _ = await gw.authority.create(ACTOR, subject="s", name="idle")
    clock.advance(days=8)
    [candidate] = await w.checks.inactive(clock())
    assert await w.raise_alert(candidate)  # ... and the process died before the revoke
    assert (await gw.authority.get(idle.id)).status(clock()) == "active"
    assert await w.run_checks() == []  # not raised twice
    assert (await gw.authority.get(idle.id)).status(clock()) == "revoked"


async def test_running_watchers_hand_over_when_the_leader_dies(replicas: Open,
                                                               clock: Clock) -> None:
    a = await replicas({"detectors": OFF, "rotation": None})
    b = await replicas({"detectors": OFF, "rotation": None})
    a.start()
    b.start()

    async def until(check: Callable[[], bool]) -> None:
        for _ in range(100):
            if check():
                return
            await asyncio.sleep(0.1)
        raise AssertionError("timed out")

    await until(lambda: watcher(a).leader or watcher(b).leader)
    leader, standby = (watcher(a), watcher(b)) if watcher(a).leader else (watcher(b), watcher(a))
    assert not standby.leader
    assert leader._task is not None
    leader._task.cancel()  # dies: no release, its lease simply stops being renewed
    await asyncio.gather(leader._task, return_exceptions=True)
    leader._task = None
    await asyncio.sleep(1.5)
    assert not standby.leader  # the lease still runs
    clock.advance(seconds=lease_s(1))
    await until(lambda: standby.leader)
    token, _ = await a.authority.create(ACTOR, subject="s", name="n", expires_in="1d")
    for _ in range(100):  # the new leader's checks raise it
        if [x for x in await alerts_of(a) if x.token_id == token.id]:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the new leader raised nothing")


async def test_a_flood_of_targets_is_capped_per_kind_and_run_and_nothing_is_lost(
        replicas: Open, clock: Clock) -> None:
    from gateway.monitor.watcher import MAX_ALERTS_PER_KIND as CAP
    gw = await replicas({"expiry_days": [], "rotation": None, "detectors": {
        **OFF, "failed_auth": {"count": 1, "window": "5m"}}})
    w, flood = watcher(gw), CAP + 37
    ips = [f"198.18.{i // 250}.{i % 250 + 1}" for i in range(flood)]
    await gw.store.insert_events([Event(type="auth_failed", actor="gateway", at=clock(), ip=ip,
                                        details={"count": 1, "reason": "unknown"}) for ip in ips])
    first = await w.run_checks()
    assert len(first) == CAP + 1 and {a.kind for a in first} == {"failed_auth"}
    summary = [a for a in first if a.ip is None]
    assert len(summary) == 1 and summary[0].details["suppressed"] == flood - CAP
    shown = summary[0].details["targets"]
    assert 0 < len(shown) <= 10 and set(shown) <= set(ips)
    assert {a.ip for a in first if a.ip} | set(shown) <= set(ips)
    assert len(await alerts_of(gw, "failed_auth")) == CAP + 1
    # the suppressed targets were not recorded: the next run raises them, then nothing
    second = await w.run_checks()
    assert sorted(a.ip for a in second) == sorted(set(ips) - {a.ip for a in first})
    assert {a.ip for a in first + second if a.ip} == set(ips)
    assert await w.run_checks() == []


async def test_failed_auth_and_rate_limit_breach_group_ipv6_clients_by_their_64(
        replicas: Open, clock: Clock) -> None:
    gw = await replicas({"expiry_days": [], "rotation": None, "detectors": {
        **OFF, "failed_auth": {"count": 10, "window": "5m"},
        "rate_limit_breach": {"count": 5, "window": "10m"}}})
    w, now = watcher(gw), clock()

    def refusal(type_: str, ip: str, count: int = 1) -> Event:
        return Event(type=type_, actor="gateway", at=now, ip=ip,
                     details={"count": count, "reason": "unknown"})

    # ten /128s of one /64, one refusal each: one client over the threshold; the next /64
    # and an IPv4 address below it; an IPv4-mapped IPv6 counts with its IPv4
    await gw.store.insert_events(
        [refusal("auth_failed", f"2001:db8:1:2::{i:x}") for i in range(1, 11)]
        + [refusal("auth_failed", "2001:db8:1:3::1", 9), refusal("auth_failed", "192.0.2.1", 5),
           refusal("auth_failed", "::ffff:192.0.2.1", 5)]
        + [refusal("rate_limited", f"2001:db8:7:7:{i}::1") for i in range(1, 6)])
    raised = sorted(await w.run_checks(), key=lambda a: (a.kind, a.ip))
    assert [(a.kind, a.ip, a.details["count"]) for a in raised] == [
        ("failed_auth", "192.0.2.1", 10), ("failed_auth", "2001:db8:1:2::/64", 10),
        ("rate_limit_breach", "2001:db8:7:7::/64", 5)]
    assert await w.run_checks() == []
