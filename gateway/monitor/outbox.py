"""The outbox: every alert's deliveries, kept in the store and sent until delivered (SPEC §12).

Each serving replica runs a worker. A worker claims due deliveries in one UPDATE (a claimed row
is skipped by the others until its claim ends, so two workers never send one delivery at once),
sends them concurrently, each bounded by its channel's timeout, and records the outcome:

    delivered      delivered_at set; never sent again
    failed         next_at = now + 5 s x 2^(attempt-1), at most 10 min apart (first retry
                   within 5 s), until the delivery is 24 h old; then failed_at (given up)
    worker dies    its claim ends after CLAIM_S and another worker (or it, restarted) sends it

So each delivery is made at least once; the webhook id is the alert's id on every attempt, so a
receiver can drop a repeat. A channel that hangs or answers 5xx delays only its own deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from gateway.errors import StoreUnavailable
from gateway.metrics import Metrics
from gateway.monitor.channels import Channel, DeliveryError
from gateway.monitor.model import Alert
from gateway.monitor.repo import AlertStore, Claimed

log = logging.getLogger("authgate.alerts")
FIRST_RETRY_S = 5.0
MAX_RETRY_S = 600.0
GIVE_UP_AFTER = timedelta(hours=24)
CLAIM_S = 90.0       # longer than any channel's timeout (at most 60 s)
BATCH = 50


def retry_delay(attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: 5, 10, 20 ... 600."""
    return min(FIRST_RETRY_S * 2.0 ** max(0, min(attempts - 1, 20)), MAX_RETRY_S)


class Outbox:
    def __init__(self, repo: AlertStore, channels: Callable[[], dict[str, Channel]],
                 metrics: Metrics, clock: Callable[[], datetime], poll_s: float = 1.0) -> None:
        self.repo = repo
        self._channels = channels
        self.metrics = metrics
        self.clock = clock
        self.poll_s = poll_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def nudge(self) -> None:
        """Something was raised here: look now rather than at the next poll."""
        self._wake.set()

    async def deliver_due(self) -> int:
        """One pass: claim and send what is due; the number delivered."""
        now = self.clock()
        claimed = await self.repo.claim(now, now + timedelta(seconds=CLAIM_S), BATCH)
        if not claimed:
            return 0
        alerts: dict[str, Alert | None] = {}
        for c in claimed:
            if c.alert_id not in alerts:
                alerts[c.alert_id] = await self.repo.get(c.alert_id)
        channels = self._channels()
        done: set[int] = set()

        async def send(c: Claimed) -> int:
            n = await self._send(c, alerts[c.alert_id], channels)
            done.add(c.id)
            return n

        try:
            return sum(await asyncio.gather(*(send(c) for c in claimed)))
        except asyncio.CancelledError:
            # stopping mid-pass: what was not sent is given back at once, not after CLAIM_S
            with contextlib.suppress(StoreUnavailable):
                for c in claimed:
                    if c.id not in done:
                        await self.repo.release(c.id)
            raise

    async def _send(self, c: Claimed, alert: Alert | None, channels: dict[str, Channel]) -> int:
        channel = channels.get(c.channel)
        error: str | None = None
        if alert is None:
            error = "alert no longer stored"
        elif channel is None:
            error = "channel no longer configured"
        else:
            try:
                await channel.send(alert.public(), alert.id)
            except DeliveryError as e:
                error = str(e)
            except Exception as e:  # a channel's bug must not stop the worker
                error = f"unexpected {type(e).__name__}"
        now = self.clock()
        kind = c.channel.split(":", 1)[0]
        if error is None:
            await self.repo.delivered(c.id, now)
            return 1
        self.metrics.alert_delivery_failures.labels(kind).inc()
        if now - c.created_at >= GIVE_UP_AFTER:
            log.error("alert %s: giving up on channel %s after %d attempts: %s",
                      c.alert_id, c.channel, c.attempts, error)
            await self.repo.give_up(c.id, now, error)
        else:
            delay = retry_delay(c.attempts)
            log.warning("alert %s: channel %s failed (%s), retry in %g s",
                        c.alert_id, c.channel, error, delay)
            await self.repo.retry_later(c.id, now + timedelta(seconds=delay), error)
        return 0

    async def update_lag(self) -> datetime | None:
        """Set the lag gauge; the earliest next attempt (None: nothing pending)."""
        oldest, due = await self.repo.pending()
        lag = 0.0 if oldest is None else max(0.0, (self.clock() - oldest).total_seconds())
        self.metrics.alert_delivery_lag.set(lag)
        return due

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            self._wake.clear()
            try:
                due = await self.update_lag()
                if due is not None and due <= self.clock():
                    await self.deliver_due()
            except StoreUnavailable as e:
                log.warning("alert outbox: store unavailable, will retry: %s", e)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
