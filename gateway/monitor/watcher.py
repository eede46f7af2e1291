"""The watcher: runs the checks every ``check_interval_s`` on one replica at a time, raises what
they find into the outbox, and keeps the outbox worker and the channels (SPEC §12).

Leadership is a lease row in the store (``monitor_lease``), the same on PostgreSQL and SQLite:
every replica tries to take or renew it every POLL (= min(interval, LEASE / 3)), and it is
held for LEASE = max(3 x interval, 30 s) / 2. A leader that dies stops renewing; a standby takes
over at the latest LEASE + POLL after the last renewal (< 3 x interval or 30 s). One stopping
cleanly releases it at once. Two leaders for a moment (a paused process whose lease ran out)
raise nothing twice: every alert has a unique key in the store.

The store unreachable: the check is skipped and counted (``authgate_monitor_checks_skipped_total``)
and the leader raises ``store_unreachable`` in memory, written at once to the log channel (the
process log); when the store answers again, that same alert (same id) is recorded in the outbox
and goes to every channel. Nothing else is raised twice when the store returns: the keys decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from gateway.authority import Actor, TokenAuthority, rfc3339
from gateway.config import Alerts
from gateway.errors import AuthgateError, StoreUnavailable
from gateway.metrics import Metrics
from gateway.monitor.channels import Channel, HttpSession, LogChannel, build_channels
from gateway.monitor.checks import Checks, make_alert, replay_alert
from gateway.monitor.model import ACTOR, KINDS, SEVERITIES, Alert
from gateway.monitor.outbox import Outbox
from gateway.monitor.repo import AlertStore
from gateway.store import Event, SqlStore

log = logging.getLogger("authgate.alerts")
LIFECYCLE = {"token_expiring", "rotation_due", "inactive_token_revoked"}
_EPOCH = datetime.fromisoformat("1970-01-01T00:00:00+00:00")


def lease_s(interval: float) -> float:
    return max(3 * interval, 30.0) / 2


def poll_s(interval: float) -> float:
    return min(interval, lease_s(interval) / 3)


class Watcher:
    """Checks + leadership + outbox + channels of one process."""

    def __init__(self, config: Alerts, store: SqlStore, authority: TokenAuthority,
                 metrics: Metrics, clock: Callable[[], datetime],
                 holder: str | None = None) -> None:
        self.config = config
        self.repo = AlertStore(store)
        self.authority = authority
        self.metrics = metrics
        self.clock = clock
        self.holder = holder or f"replica-{secrets.token_hex(6)}"
        self.checks = Checks(config, self.repo, clock)
        self._session = HttpSession()
        self.channels: dict[str, Channel] = build_channels(config.channels, self._session)
        self.outbox = Outbox(self.repo, lambda: self.channels, metrics, clock)
        self.leader = False
        self._last_check: float | None = None
        self._outage: Alert | None = None  # store_unreachable, raised in memory
        self._task: asyncio.Task[None] | None = None
        self._log_task: asyncio.Task[None] | None = None
        self._replays: set[asyncio.Task[None]] = set()
        self._warned = False

    # --- configuration ------------------------------------------------------------------------

    def reconfigure(self, config: Alerts) -> None:
        """Take a new ``alerts`` setting (SIGHUP reload): channels, thresholds, detectors and
        the interval apply from the next check; pending deliveries keep their channel by name."""
        self.config = config
        self.checks.config = config
        self.channels = build_channels(config.channels, self._session)

    # --- one run of the checks ----------------------------------------------------------------

    async def run_checks(self) -> list[Alert]:
        """Every check once; the alerts newly raised. StoreUnavailable propagates (nothing is
        half raised: each alert is one transaction)."""
        now = self.clock()
        raised: list[Alert] = []
        for check in self.checks.all():
            candidates: list[Alert] = await check(now)
            raised += await self._raise_new(candidates, now)
        return raised

    async def _raise_new(self, candidates: list[Alert], now: datetime) -> list[Alert]:
        if not candidates:
            return []
        kind = candidates[0].kind
        since = _EPOCH if kind in LIFECYCLE else now - self._detector_span()
        known = await self.repo.known_keys(kind, since)
        raised = []
        new = [a for a in candidates if a.dedup_key not in known]
        for alert in new[:MAX_ALERTS_PER_KIND]:
            if await self.raise_alert(alert):
                raised.append(alert)
        if len(new) > MAX_ALERTS_PER_KIND:
            summary = _suppressed(new[MAX_ALERTS_PER_KIND:], now)
            if await self.raise_alert(summary):
                raised.append(summary)
        for alert in candidates:
            if alert.kind == "inactive_token_revoked" and alert.token_id:
                await self._revoke_inactive(alert)  # also when raised before a crash
        return raised

    def _detector_span(self) -> timedelta:
        d = self.config.detectors
        windows = [x.window for x in (d.multi_ip, d.rapid_use, d.failed_auth,
                                      d.rate_limit_breach) if x is not None]
        return timedelta(seconds=max([*windows, 86400]) * 2)

    async def _revoke_inactive(self, alert: Alert) -> None:
        """Revoked after its alert is recorded: a crash in between re-finds the token, whose
        alert exists, and revokes it then (a revoke of a revoked token changes nothing)."""
        with contextlib.suppress(AuthgateError):
            reason = str(alert.details.get("reason") or "inactive")
            assert alert.token_id is not None
            await self.authority.revoke(Actor(ACTOR), alert.token_id, reason)

    async def raise_alert(self, alert: Alert) -> bool:
        """Record ``alert`` with a delivery per configured channel; False if already raised."""
        if not await self.repo.raise_alert(alert, list(self.channels)):
            return False
        self.metrics.alerts.labels(alert.kind).inc()
        log.info("alert raised: %s %s %s", alert.kind, alert.id, alert.dedup_key.split("|")[1])
        self.outbox.nudge()
        return True

    async def check_once(self) -> list[Alert]:
        """A leader's tick: record a pending outage alert, then run the checks; a store that
        is down skips the run (counted) and raises store_unreachable in memory."""
        try:
            recorded = await self._record_outage() if self._outage is not None else []
            return recorded + await self.run_checks()
        except StoreUnavailable as e:
            self.metrics.monitor_checks_skipped.inc()
            self._store_down(str(e))
            return []

    def _store_down(self, why: str) -> None:
        if self._outage is not None:
            return
        now = self.clock()
        self._outage = make_alert(
            "store_unreachable", "critical", "the token store is unreachable: checks are "
            "skipped and alerts wait until it answers", f"{self.holder}|{rfc3339(now)}", now,
            details={"since": rfc3339(now), "error": why[:200]})
        # the log channel at once: no other channel can be reached through the outbox now
        self._log_task = asyncio.get_running_loop().create_task(LogChannel().send(
            self._outage.public(), self._outage.id))

    async def _record_outage(self) -> list[Alert]:
        alert = self._outage
        assert alert is not None
        back = self.clock()
        recorded = dataclasses.replace(
            alert, message=f"the token store was unreachable from {rfc3339(alert.raised_at)} "
            f"to {rfc3339(back)}", details={**alert.details, "until": rfc3339(back)})
        raised = await self.raise_alert(recorded)
        self._outage = None
        return [recorded] if raised else []

    def replayed(self, event: Event) -> None:
        """A replay this process just handled: raise it now, off the request (a task), on
        whichever replica it happened; the next check finds it if this fails."""
        alert = replay_alert(event.token_id, event.subject, event.ip, event.at, event.details,
                             self.clock())

        async def raise_it() -> None:
            with contextlib.suppress(StoreUnavailable):
                await self.raise_alert(alert)

        task = asyncio.get_running_loop().create_task(raise_it())
        self._replays.add(task)
        task.add_done_callback(self._replays.discard)

    # --- the loop -------------------------------------------------------------------------------

    async def tick(self) -> None:
        """Take or renew the lease; run the checks when leading and the interval has passed."""
        now = self.clock()
        try:
            self.leader = await self.repo.take_lease(
                self.holder, now + timedelta(seconds=lease_s(self.config.check_interval_s)), now)
        except StoreUnavailable as e:
            if not self._warned:  # e.g. PostgreSQL without migration 006: say so, once
                log.warning("alert watcher: cannot reach the store, will retry: %s", e)
                self._warned = True
            if self.leader:  # the leader speaks for the outage; standbys stay quiet
                self.metrics.monitor_checks_skipped.inc()
                self._store_down(str(e))
            return
        self._warned = False
        self.metrics.monitor_leader.set(1 if self.leader else 0)
        if not self.leader:
            self._last_check = None
            if self._outage is not None:  # it led when the store went; another leads now
                with contextlib.suppress(StoreUnavailable):
                    await self._record_outage()
            return
        due = self._last_check is None or (
            time.monotonic() - self._last_check >= self.config.check_interval_s)
        if due:
            self._last_check = time.monotonic()
            await self.check_once()

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # never let one bad check end monitoring
                log.exception("alert watcher: a check failed")
            await asyncio.sleep(poll_s(self.config.check_interval_s))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())
            self.outbox.start()

    async def stop(self) -> None:
        """Stop checking and delivering; hand the lease over at once."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            if self.leader:
                with contextlib.suppress(StoreUnavailable):
                    await self.repo.release_lease(self.holder)
                self.leader = False
        if self._replays:
            await asyncio.gather(*self._replays, return_exceptions=True)
        await self.outbox.stop()
        await self._session.close()

    # --- alerts test ----------------------------------------------------------------------------

    async def test_channels(self) -> list[dict[str, Any]]:
        """Send a test alert to every channel now (not through the outbox)."""
        now = self.clock()
        alert = make_alert("test", "info", "test notification from authgate: channels work",
                           "test", now).public()

        async def one(channel: Channel) -> dict[str, Any]:
            try:
                await channel.send(alert, alert["id"])
                result = "ok"
            except Exception as e:  # DeliveryError: a safe reason; anything else: its type
                result = str(e) if type(e).__name__ == "DeliveryError" else \
                    f"unexpected {type(e).__name__}"
            return {"channel": channel.name, "type": channel.type, "result": result}

        return list(await asyncio.gather(*(one(c) for c in self.channels.values())))


__all__ = ["KINDS", "Watcher"]


# At most this many alerts of one kind per check run (each is a delivery to every channel): a
# flood of targets (one caller's many tokens, many addresses) is summarised in one more alert of
# that kind. The suppressed ones are not recorded, so a detector that finds them again raises
# them at a later run; their count is in the summary either way.
MAX_ALERTS_PER_KIND = 100
SUPPRESSED_SHOWN = 10  # targets named in the summary


def _suppressed(rest: list[Alert], now: datetime) -> Alert:
    kind, n = rest[0].kind, len(rest)
    targets = [a.dedup_key.split("|")[1] for a in rest]
    # the same suppressed set gives the same key on every replica: raised once
    digest = hashlib.sha256("\n".join(a.dedup_key for a in rest).encode()).hexdigest()[:24]
    log.warning("alerts: %d more %s alerts in one check run suppressed (at most %d per kind); "
                "first targets: %s", n, kind, MAX_ALERTS_PER_KIND, ", ".join(targets[:5]))
    return make_alert(
        kind, min((a.severity for a in rest), key=SEVERITIES.index),
        f"{n} more {kind} alerts in this check run were suppressed (at most "
        f"{MAX_ALERTS_PER_KIND} per kind and run)", f"suppressed:{digest}", now,
        details={"suppressed": n, "targets": targets[:SUPPRESSED_SHOWN]})
