"""Requests by outcome per UTC hour (the admin dashboard's chart), at no cost per request.

The proxy and forward auth already count every request's outcome in memory: the
``authgate_requests_total{outcome}`` counters. At each usage flush the counts added since the
previous flush are read from those counters (one pass over the registry) and added to the
current hour's row of ``request_outcomes``. So the request path gains nothing, and a request is
filed under the hour of the flush that wrote it (at most ``usage_flush_interval_s`` late at an
hour's edge). A failed write keeps its counts for the next flush (bounded: one entry per hour
and outcome); every replica adds its own counts, so the rows are the sum over replicas.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from gateway.errors import OUTCOMES, StoreUnavailable
from gateway.metrics import Metrics

log = logging.getLogger("authgate.outcomes")
COUNTER = "authgate_requests"  # family name of authgate_requests_total
MAX_HOURS = 24 * 31  # the widest window the admin API serves; older hours are dropped


class OutcomeStore(Protocol):
    async def record_outcomes(self, rows: Sequence[tuple[datetime, str, int]],
                              prune_before: datetime | None = None) -> None: ...
    async def outcome_counts(self, since: datetime) -> list[tuple[datetime, str, int]]: ...


def hour_of(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


class OutcomeCounts:
    """Turns the outcome counters' growth into per-hour rows, written at each flush."""

    def __init__(self, store: OutcomeStore, metrics: Metrics,
                 clock: Callable[[], datetime]) -> None:
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._seen: dict[str, float] = {}  # counter values at the last flush
        self._pending: dict[tuple[datetime, str], int] = {}  # not yet written
        self._pruned: datetime | None = None  # the hour of the last pruning

    def _totals(self) -> dict[str, float]:
        for family in self._metrics.registry.collect():
            if family.name == COUNTER:
                return {s.labels["outcome"]: s.value for s in family.samples
                        if s.name == f"{COUNTER}_total"}
        return {}

    def take(self) -> None:
        """Move what the counters gained since the last call under the current hour."""
        hour = hour_of(self._clock())
        for outcome, total in self._totals().items():
            added = int(total - self._seen.get(outcome, 0.0))
            if added > 0:
                self._seen[outcome] = total
                key = (hour, outcome)
                self._pending[key] = self._pending.get(key, 0) + added

    async def flush(self) -> None:
        self.take()
        hour = hour_of(self._clock())
        prune = None if hour == self._pruned else hour - timedelta(hours=MAX_HOURS)
        if not self._pending and prune is None:
            return
        batch, self._pending = self._pending, {}
        try:
            await self._store.record_outcomes(
                [(hour, outcome, n) for (hour, outcome), n in batch.items()], prune)
        except StoreUnavailable as e:
            for key, n in batch.items():
                self._pending[key] = self._pending.get(key, 0) + n
            log.warning("outcome counts not written, will retry: %s", e)
            return
        self._pruned = hour


async def hourly(store: OutcomeStore, now: datetime, hours: int) -> list[dict[str, object]]:
    """The last ``hours`` UTC hours, oldest first, the current one included; every hour is
    listed, with every known outcome (0 when none), plus any other outcome a replica wrote."""
    first = hour_of(now) - timedelta(hours=hours - 1)
    counted: dict[datetime, dict[str, int]] = {}
    for hour, outcome, n in await store.outcome_counts(first):
        counted.setdefault(hour, {})[outcome] = n
    out: list[dict[str, object]] = []
    for i in range(hours):
        hour = first + timedelta(hours=i)
        counts: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        counts.update(counted.get(hour, {}))
        out.append({"hour": hour, "outcomes": counts})
    return out
