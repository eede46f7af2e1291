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
from gateway.store import Event, TokenStore, Usage

log = logging.getLogger("authgate.usage")
MAX_IPS_PER_FLUSH = 32  # addresses kept per token per batch: bounded memory under churn


class UsageRecorder:
    def __init__(self, store: TokenStore, interval_s: float, metrics: Metrics,
                 clock: Callable[[], datetime]) -> None:
        self._store = store
        self._interval_s = interval_s
        self._metrics = metrics
        self._clock = clock
        self._usage: dict[str, Usage] = {}
        # (type, token id, ip, reason, actor) -> [count, subject, first seen]
        self._events: dict[tuple[str, str | None, str | None, str, str], list] = {}
        self._oldest: float | None = None
        self._task: asyncio.Task[None] | None = None
        # One flush at a time: a caller's flush (or shutdown's) waits for one in progress, so
        # "flush() returned" means everything counted before it is written.
        self._lock = asyncio.Lock()

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
        """Count an auth_failed / rate_limited / admin_read occurrence; one event per key per
        flush, with the count in its details."""
        key = (type_, token_id, ip, reason, actor)
        entry = self._events.get(key)
        if entry is None:
            self._events[key] = [1, subject, self._clock()]
            if self._oldest is None:
                self._oldest = time.monotonic()
        else:
            entry[0] += 1

    def _take(self) -> tuple[list[Usage], list[Event]]:
        usage, self._usage = list(self._usage.values()), {}
        events = [Event(type=t, actor=actor, at=at, token_id=tid, subject=subject, ip=ip,
                        details={"count": count, "reason": reason})
                  for (t, tid, ip, reason, actor), (count, subject, at) in self._events.items()]
        self._events = {}
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
            key = (e.type, e.token_id, e.ip, e.details["reason"], e.actor)
            entry = self._events.setdefault(key, [0, e.subject, e.at])
            entry[0] += e.details["count"]

    async def flush(self) -> int:
        async with self._lock:
            return await self._flush()

    async def _flush(self) -> int:
        if not self._usage and not self._events:
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
        self._metrics.flush_rows.observe(len(usage))
        self._metrics.flush_lag.set(0)
        return len(usage)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            # Shielded: cancelling the loop at shutdown must not drop a batch mid-write.
            await asyncio.shield(self.flush())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()
