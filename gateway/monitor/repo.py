"""The alerts' tables (migrations 006) over the token store's driver; SQL in alerts.sql.

Every raise is one transaction: the alert (ON CONFLICT on its dedup key: of two replicas raising
the same alert at once, exactly one inserts), one delivery row per channel and the
``alert_raised`` audit event, so an alert is never recorded without its deliveries.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.monitor.model import Alert
from gateway.store import SqlStore
from gateway.store.sql import Row, _Params, _time, _when, _where, named_queries


def Q(name: str) -> str:
    return named_queries("gateway.monitor", "alerts.sql")[name]


def _json(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) else v


def _alert(row: Row) -> Alert:
    return Alert(id=row["id"], kind=row["kind"], severity=row["severity"],
                 message=row["message"], raised_at=_when(row["raised_at"]),
                 dedup_key=row["dedup_key"], token_id=row["token_id"], subject=row["subject"],
                 ip=row["ip"], threshold=row["threshold"], window=row["window"],
                 details=_json(row["details"]) or {}, seq=row["seq"])


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery this worker holds until its claim ends."""
    id: int
    alert_id: str
    channel: str
    created_at: datetime
    attempts: int


@dataclass(frozen=True, slots=True)
class AlertFilter:
    kind: str | None = None
    token_id: str | None = None
    subject: str | None = None
    since: datetime | None = None


class AlertStore:
    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self._driver = store.driver

    async def raise_alert(self, alert: Alert, channels: Sequence[str]) -> bool:
        """Record ``alert`` with a delivery per channel and its event; False when an alert with
        its dedup key exists (nothing is written then)."""
        a = alert
        async with self._driver.transaction() as tx:
            inserted = await tx.execute(
                Q("insert_alert"), a.id, a.dedup_key, a.kind, a.severity, a.message,
                a.raised_at, a.token_id, a.subject, a.ip, a.threshold, a.window, dict(a.details))
            if not inserted:
                return False
            for channel in channels:
                await tx.execute(Q("insert_delivery"), a.id, channel, a.raised_at)
            await tx.execute(Q("insert_alert_event"), a.token_id, a.subject, a.ip, a.raised_at, {
                "alert_id": a.id, "kind": a.kind, "severity": a.severity,
                "threshold": a.threshold, "window": a.window})
            return True

    async def known_keys(self, kind: str, since: datetime) -> set[str]:
        return {r["dedup_key"] for r in await self._driver.fetch(Q("known_keys"), kind, since)}

    async def get(self, alert_id: str) -> Alert | None:
        row = await self._driver.fetchrow(Q("get_alert"), alert_id)
        return _alert(row) if row else None

    async def list_alerts(self, flt: AlertFilter, limit: int, before_seq: int | None = None
                   ) -> list[Alert]:
        p = _Params()
        conds = [f"{col} = {p(getattr(flt, col))}" for col in ("kind", "token_id", "subject")
                 if getattr(flt, col) is not None]
        if flt.since is not None:
            conds.append(f"raised_at >= {p(flt.since)}")
        if before_seq is not None:
            conds.append(f"seq < {p(before_seq)}")
        # only $n placeholders are interpolated; every value is bound
        sql = f"SELECT * FROM alerts{_where(conds)} ORDER BY seq DESC LIMIT {p(limit)}"  # noqa: S608
        return [_alert(r) for r in await self._driver.fetch(sql, *p.values)]

    # --- outbox -------------------------------------------------------------------------------

    async def claim(self, now: datetime, until: datetime, limit: int) -> list[Claimed]:
        async with self._driver.transaction() as tx:
            rows = await tx.fetch(Q("claim_deliveries"), now, until, limit)
        return [Claimed(r["id"], r["alert_id"], r["channel"], _when(r["created_at"]),
                        int(r["attempts"])) for r in rows]

    async def delivered(self, delivery_id: int, at: datetime) -> None:
        async with self._driver.transaction() as tx:
            await tx.execute(Q("delivered"), delivery_id, at)

    async def retry_later(self, delivery_id: int, at: datetime, error: str) -> None:
        async with self._driver.transaction() as tx:
            await tx.execute(Q("retry_later"), delivery_id, at, error[:500])

    async def give_up(self, delivery_id: int, at: datetime, error: str) -> None:
        async with self._driver.transaction() as tx:
            await tx.execute(Q("give_up"), delivery_id, at, error[:500])

    async def release(self, delivery_id: int) -> None:
        """Give a claimed delivery back unsent (a worker stopping mid-pass)."""
        async with self._driver.transaction() as tx:
            await tx.execute(Q("release_claim"), delivery_id)

    async def pending(self) -> tuple[datetime | None, datetime | None]:
        """(created_at of the oldest pending delivery, the earliest next attempt): a read, so
        an idle worker writes nothing."""
        row = await self._driver.fetchrow(Q("oldest_pending"))
        return (_time(row["oldest"]), _time(row["due"])) if row else (None, None)

    async def deliveries_of(self, alert_id: str) -> list[dict[str, Any]]:
        return [{"channel": r["channel"], "attempts": int(r["attempts"]),
                 "delivered_at": _time(r["delivered_at"]), "failed_at": _time(r["failed_at"]),
                 "last_error": r["last_error"]}
                for r in await self._driver.fetch(Q("deliveries_of"), alert_id)]

    # --- the watcher's lease ------------------------------------------------------------------

    async def take_lease(self, holder: str, until: datetime, now: datetime) -> bool:
        """Take or renew the lease; True when ``holder`` holds it until ``until``."""
        async with self._driver.transaction() as tx:
            await tx.execute(Q("take_lease"), holder, until, now)
            row = await tx.fetchrow(Q("lease_holder"))
        return row is not None and row["holder"] == holder

    async def release_lease(self, holder: str) -> None:
        async with self._driver.transaction() as tx:
            await tx.execute(Q("release_lease"), holder)

    # --- what the checks read -------------------------------------------------------------------

    async def fetch(self, name: str, *args: Any) -> list[Row]:
        return await self._driver.fetch(Q(name), *args)
