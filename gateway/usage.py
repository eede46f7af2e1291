"""Usage and security events, aggregated in memory and written in batches off the hot path.

``hit`` and ``event`` only touch dicts. ``run`` flushes every ``usage_flush_interval_s``; a failed
flush keeps its batch for the next one, and ``stop`` flushes what is left on graceful shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime

from gateway.errors import StoreUnavailable
from gateway.metrics import Metrics
from gateway.outcomes import OutcomeCounts
from gateway.store import Event, TokenStore, Usage

log = logging.getLogger("authgate.usage")
MAX_IPS_PER_FLUSH = 32  # addresses kept per token per batch: bounded memory under churn
# Distinct (type, token, ip, reason, actor) events kept per batch (also while the store is down).
# Past it, an event keeps its type, reason and actor and is counted in one "folded" entry per
# (type, reason, actor) with token, subject and ip null: counts are never lost, detail is.
MAX_EVENT_KEYS = 10_000

EventKey = tuple[str, str | None, str | None, str, str]  # type, token id, ip, reason, actor
FoldKey = tuple[str, str, str]  # type, reason, actor


class _Tally:
    """One batched event: counted in place, so a repeat allocates nothing."""
    __slots__ = ("at", "count", "subject")

    def __init__(self, count: int, subject: str | None, at: datetime) -> None:
        self.count = count
        self.subject = subject
        self.at = at  # first seen


class UsageRecorder:
    def __init__(self, store: TokenStore, interval_s: float, metrics: Metrics,
                 clock: Callable[[], datetime]) -> None:
        self._store = store
        self._interval_s = interval_s
        self._metrics = metrics
        self._clock = clock
        self._usage: dict[str, Usage] = {}
        self._events: dict[EventKey, _Tally] = {}
        self._folded: dict[FoldKey, _Tally] = {}  # subject always None
        self._oldest: float | None = None
        self._task: asyncio.Task[None] | None = None
        # One flush at a time: a caller's flush (or shutdown's) waits for one in progress, so
        # "flush() returned" means everything counted before it is written.
        self._lock = asyncio.Lock()
        self.outcomes = OutcomeCounts(store, metrics, clock)  # the dashboard's hourly chart

    def hit(self, token_id: str, ip: str | None, now: datetime) -> None:
        u = self._usage.get(token_id)
        if u is None:
            u = self._usage[token_id] = Usage(token_id, 0, now, ip)
            if self._oldest is None:
                self._oldest = time.monotonic()
        u.count += 1
        u.last_used_at, u.last_used_ip = now, ip
        day = now.date()
        u.per_day[day] = u.per_day.get(day, 0) + 1
        if ip is not None:
            seen = u.ips.get(ip)
            if seen is not None:  # updated in place: no allocation per request
                seen[0] = now
                seen[1] += 1
            elif len(u.ips) < MAX_IPS_PER_FLUSH:
                u.ips[ip] = [now, 1]

    def event(self, type_: str, reason: str, ip: str | None, token_id: str | None = None,
              subject: str | None = None, actor: str = "gateway") -> None:
        """Count a refusal (auth_failed, access_denied, rate_limited) or an admin read; one
        event per key per flush, with the count in its details."""
        key = (type_, token_id, ip, reason, actor)
        entry = self._events.get(key)
        if entry is not None:
            entry.count += 1
        else:
            self._add(key, 1, subject, None)

    def _add(self, key: EventKey, count: int, subject: str | None, at: datetime | None) -> None:
        """A key not yet in the batch: kept while there is room, else folded (bounded)."""
        if self._oldest is None:
            self._oldest = time.monotonic()
        if len(self._events) < MAX_EVENT_KEYS:
            self._events[key] = _Tally(count, subject, at or self._clock())
            return
        self._fold((key[0], key[3], key[4]), count, at)

    def _fold(self, key: FoldKey, count: int, at: datetime | None) -> None:
        self._metrics.events_folded.inc(count)
        entry = self._folded.get(key)
        if entry is None:
            self._folded[key] = _Tally(count, None, at or self._clock())
        else:
            entry.count += count

    def _take(self) -> tuple[list[Usage], list[Event]]:
        usage, self._usage = list(self._usage.values()), {}
        events = [Event(type=t, actor=actor, at=e.at, token_id=tid, subject=e.subject, ip=ip,
                        details={"count": e.count, "reason": reason})
                  for (t, tid, ip, reason, actor), e in self._events.items()]
        events += [Event(type=t, actor=actor, at=e.at, details={
                       "count": e.count, "reason": reason, "folded": True})
                   for (t, reason, actor), e in self._folded.items()]
        self._events, self._folded = {}, {}
        return usage, events

    def _put_back(self, usage: list[Usage], events: list[Event]) -> None:
        for u in usage:
            mine = self._usage.get(u.token_id)
            if mine is None:
                self._usage[u.token_id] = u
                continue
            mine.count += u.count
            for day, n in u.per_day.items():
                mine.per_day[day] = mine.per_day.get(day, 0) + n
            for ip, (seen, n) in u.ips.items():
                old = mine.ips.get(ip)
                mine.ips[ip] = [max(seen, old[0]), old[1] + n] if old else [seen, n]
        for e in events:
            reason, count = e.details["reason"], e.details["count"]
            if e.details.get("folded"):
                self._put_back_folded((e.type, reason, e.actor), count, e.at)
                continue
            key = (e.type, e.token_id, e.ip, reason, e.actor)
            entry = self._events.get(key)
            if entry is not None:
                entry.count += count
            else:
                self._add(key, count, e.subject, e.at)

    def _put_back_folded(self, key: FoldKey, count: int, at: datetime) -> None:
        entry = self._folded.get(key)  # already counted in the metric when first folded
        if entry is None:
            self._folded[key] = _Tally(count, None, at)
        else:
            entry.count += count

    async def flush(self) -> int:
        async with self._lock:
            await self.outcomes.flush()
            return await self._flush()

    async def _flush(self) -> int:
        if not self._usage and not self._events and not self._folded:
            self._metrics.flush_lag.set(0)
            return 0
        oldest = self._oldest
        self._oldest = None
        usage, events = self._take()
        try:
            await self._store.record_usage(usage, events)
        except StoreUnavailable as e:
            self._put_back(usage, events)
            self._oldest = oldest
            self._metrics.flush_failures.inc()
            if oldest is not None:
                self._metrics.flush_lag.set(time.monotonic() - oldest)
            log.warning("usage flush failed, will retry: %s", e)
            return 0
        except Exception as e:  # the store refused a value (not an outage): find the row
            self._metrics.flush_failures.inc()
            log.error("usage flush refused by the store (%s): writing row by row",
                      type(e).__name__)
            await self._flush_singly(usage, events)
        self._metrics.flush_rows.observe(len(usage))
        self._metrics.flush_lag.set(0)
        return len(usage)

    async def _flush_singly(self, usage: list[Usage], events: list[Event]) -> None:
        """A batch the store refused as a whole: the usage, then each event, on its own, so one
        value no store can hold costs that row alone (logged by type, never by value); an outage
        meanwhile puts the rest back for the next flush."""
        pending: list[tuple[list[Usage], list[Event]]] = [(usage, [])] + [([], [e])
                                                                          for e in events]
        for i, (rows, evs) in enumerate(pending):
            try:
                await self._store.record_usage(rows, evs)
            except StoreUnavailable:
                for later_rows, later_evs in pending[i:]:
                    self._put_back(later_rows, later_evs)
                return
            except Exception as e:
                what = f"event {evs[0].type}" if evs else f"{len(rows)} usage rows"
                log.error("usage flush: the store refused %s (%s); dropped", what,
                          type(e).__name__)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            # Shielded: cancelling the loop at shutdown must not drop a batch mid-write.
            try:
                await asyncio.shield(self.flush())
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one bad flush end the flushing for good
                log.exception("usage flush failed")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()
