"""The checks the watcher runs (SPEC §12): each reads what the gateway already keeps (token
records, usage per day and per address, batched refusal events) and returns candidate alerts.
Nothing here is on the request path, and nothing is written per request.

Each candidate carries a dedup key: (kind, target, threshold or window). Lifecycle alerts are
raised once per token and threshold, ever. A detector counts, per target, what happened within
its window and after the target's previous alert of that kind (so nothing is counted twice and
a continuing attack is raised again once it crosses the threshold anew); its key is the target
and that previous alert's id, which every replica reads alike, so two replicas checking at once
raise it once. creation_rate is keyed by subject and the creation limit's own window.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gateway.addresses import limit_key
from gateway.authority import new_id, rfc3339
from gateway.config import Alerts, parse_rate_limit
from gateway.monitor.model import Alert, Severity, expiry_severity, window_text
from gateway.monitor.repo import AlertStore
from gateway.store.sql import _when

Clock = Callable[[], datetime]
LOOKBACK = timedelta(days=1)  # replays and creation refusals are looked for this far back
DAY = timedelta(days=1)


def make_alert(kind: str, severity: Severity, message: str, key: str, now: datetime,
               **fields: Any) -> Alert:
    return Alert(id=new_id("alt"), kind=kind, severity=severity, message=message, raised_at=now,
                 dedup_key=f"{kind}|{key}", **fields)


@dataclass(frozen=True, slots=True)
class _Previous:
    id: str
    at: datetime
    last_event_id: int = 0  # the events it counted: up to this id

    def counted(self, event: Any) -> bool:
        return int(event["id"]) <= self.last_event_id


def _bucket(now: datetime, window_s: int) -> int:
    return int(now.timestamp() // window_s)


def _details(v: Any) -> Mapping[str, Any]:
    v = json.loads(v) if isinstance(v, str) else v
    return v if isinstance(v, Mapping) else {}


def _count(details: Mapping[str, Any]) -> int:
    n = details.get("count", 1)
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1


def _days(delta: timedelta) -> str:
    if delta >= DAY:
        return f"{delta.days} day{'s' if delta.days != 1 else ''}"
    hours = max(1, int(delta.total_seconds() // 3600))
    return f"{hours} hour{'s' if hours != 1 else ''}"


@dataclass(slots=True)
class _Snapshot:
    at: datetime
    count: int


class Checks:
    """Every check, on one config (``reconfigure`` swaps it) and one store."""

    def __init__(self, config: Alerts, repo: AlertStore, clock: Clock) -> None:
        self.config = config
        self.repo = repo
        self.clock = clock
        # rapid_use: usage_count per token at each check, as long as the window needs
        self._seen: dict[str, deque[_Snapshot]] = {}

    # --- lifecycle ------------------------------------------------------------------------

    async def token_expiring(self, now: datetime) -> list[Alert]:
        """Once per token and threshold; a token first seen inside several thresholds is
        raised at the tightest one only (it would be noise to announce 30 d and 7 d at once)."""
        thresholds = sorted(self.config.expiry_days)
        if not thresholds:
            return []
        out = []
        for r in await self.repo.fetch("expiring_tokens", now, now + timedelta(
                days=thresholds[-1])):
            expires = _when(r["expires_at"])
            left = expires - now
            days = next(d for d in thresholds if left <= timedelta(days=d))
            out.append(make_alert(
                "token_expiring", expiry_severity(days),
                f"token {r['id']} ({r['name']}) of {r['subject']} expires in {_days(left)}",
                f"{r['id']}|{days}d", now, token_id=r["id"], subject=r["subject"],
                threshold=f"{days}d", details={"name": r["name"],
                                               "expires_at": rfc3339(expires)}))
        return out

    async def rotation_due(self, now: datetime) -> list[Alert]:
        policy = self.config.rotation
        if policy is None:
            return []
        out = []
        if policy.max_age_days is not None:
            n = policy.max_age_days
            for r in await self.repo.fetch("old_tokens", now - timedelta(days=n), now):
                out.append(self._rotation(r, now, f"{n}d", f"is older than {n} days", {}))
        hu = policy.high_usage
        if hu is not None:
            # busy: at least requests_per_day on average over the last 7 UTC days
            busy = {r["token_id"]: int(r["requests"]) for r in await self.repo.fetch(
                "busy_tokens", (now - timedelta(days=6)).date(), hu.requests_per_day * 7)}
            if busy:
                for r in await self.repo.fetch("old_tokens",
                                               now - timedelta(days=hu.max_age_days), now):
                    if r["id"] in busy:
                        out.append(self._rotation(
                            r, now, f"high_usage:{hu.max_age_days}d",
                            f"serves {busy[r['id']] // 7}+ requests a day and is older than "
                            f"{hu.max_age_days} days", {"requests_7d": busy[r["id"]]}))
        return out

    @staticmethod
    def _rotation(r: Any, now: datetime, threshold: str, why: str,
                  extra: dict[str, Any]) -> Alert:
        return make_alert(
            "rotation_due", "medium", f"token {r['id']} ({r['name']}) of {r['subject']} {why}: "
            "rotate it", f"{r['id']}|{threshold}", now, token_id=r["id"], subject=r["subject"],
            threshold=threshold, details={"name": r["name"],
                                          "created_at": rfc3339(_when(r["created_at"])), **extra})

    async def inactive(self, now: datetime) -> list[Alert]:
        """Tokens unused (or never used) for inactivity_revoke_days; the watcher revokes each
        one it raises."""
        n = self.config.inactivity_revoke_days
        if n is None:
            return []
        out = []
        for r in await self.repo.fetch("inactive_tokens", now - timedelta(days=n), now):
            last = r["last_used_at"]
            out.append(make_alert(
                "inactive_token_revoked", "medium",
                f"token {r['id']} ({r['name']}) of {r['subject']} was unused for {n} days and "
                "has been revoked", r["id"], now, token_id=r["id"], subject=r["subject"],
                threshold=f"{n}d", details={
                    "name": r["name"], "reason": f"inactive for {n} days",
                    "last_used_at": None if last is None else rfc3339(_when(last))}))
        return out

    # --- detectors --------------------------------------------------------------------------

    async def _previous(self, kind: str, now: datetime, window_s: int) -> dict[str, _Previous]:
        """Each target's latest alert of ``kind`` (within two days, or two windows)."""
        since = now - max(2 * DAY, timedelta(seconds=2 * window_s))
        out = {}
        for r in await self.repo.fetch("recent_alerts", kind, since):
            last = _details(r["details"]).get("last_event_id")
            out[r["dedup_key"].split("|")[1]] = _Previous(
                r["id"], _when(r["raised_at"]), last if isinstance(last, int) else 0)
        return out

    @staticmethod
    def _key(target: str, previous: _Previous | None, first: int) -> str:
        """After the target's previous alert; else from ``first`` (the first event counted, or
        the window's number since the epoch): both only grow, so a key is never reused."""
        return f"{target}|after:{previous.id}" if previous else f"{target}|from:{first}"

    async def multi_ip(self, now: datetime) -> list[Alert]:
        d = self.config.detectors.multi_ip
        if d is None:
            return []
        since = now - timedelta(seconds=d.window)
        previous = await self._previous("multi_ip", now, d.window)
        out = []
        for r in await self.repo.fetch("ips_in_window", since, d.distinct_ips):
            prev = previous.get(r["token_id"])
            after = max(since, prev.at) if prev else since
            ips = [x["ip"] for x in await self.repo.fetch("recent_ips_of", r["token_id"], after)
                   if not prev or _when(x["last_seen_at"]) > prev.at]
            shown = ips[:20]
            if len(ips) < d.distinct_ips:
                continue
            out.append(make_alert(
                "multi_ip", "high", f"token {r['token_id']} of {r['subject']} was used from "
                f"{len(ips)} addresses within {window_text(d.window)}",
                self._key(r["token_id"], prev, _bucket(now, d.window)), now,
                token_id=r["token_id"],
                subject=r["subject"], window=window_text(d.window),
                threshold=str(d.distinct_ips), details={"distinct_ips": len(ips), "ips": shown}))
        return out

    async def rapid_use(self, now: datetime) -> list[Alert]:
        """Requests per token within the window, from the difference of its usage count between
        checks (the count before a token's first use is 0: one created inside the window needs
        no earlier check). A new leader starts without history for older tokens."""
        d = self.config.detectors.rapid_use
        if d is None:
            self._seen.clear()
            return []
        window = timedelta(seconds=d.window)
        start = now - window
        previous = await self._previous("rapid_use", now, d.window)
        out = []
        rows = await self.repo.fetch("usage_counts", start)
        live = set()
        for r in rows:
            token_id, count = r["id"], int(r["usage_count"])
            live.add(token_id)
            seen = self._seen.setdefault(token_id, deque())
            while seen and seen[0].at < start:
                seen.popleft()
            prev = previous.get(token_id)
            while seen and prev and seen[0].at < prev.at:
                seen.popleft()  # counted by the previous alert
            base: int | None = seen[0].count if seen else None
            if base is None and prev is None and _when(r["created_at"]) >= start:
                base = 0  # created inside the window: every request of it is
            seen.append(_Snapshot(now, count))
            if base is None or count - base < d.requests:
                continue
            seen.clear()
            seen.append(_Snapshot(now, count))
            out.append(make_alert(
                "rapid_use", "medium", f"token {token_id} of {r['subject']} served "
                f"{count - base} requests within {window_text(d.window)}",
                self._key(token_id, prev, _bucket(now, d.window)), now, token_id=token_id,
                subject=r["subject"], window=window_text(d.window), threshold=str(d.requests),
                details={"requests": count - base}))
        for token_id in [t for t in self._seen if t not in live]:
            del self._seen[token_id]
        return out

    async def _events(self, type_: str, since: datetime) -> list[Any]:
        return await self.repo.fetch("events_since", type_, since)

    async def failed_auth(self, now: datetime) -> list[Alert]:
        d = self.config.detectors.failed_auth
        if d is None:
            return []
        previous = await self._previous("failed_auth", now, d.window)
        # ip -> [count, first event id, last event id] (events come in id order)
        per_ip: dict[str, list[int]] = {}
        for e in await self._events("auth_failed", now - timedelta(seconds=d.window)):
            ip = limit_key(e["ip"])  # an IPv6 client's /64, as the brake counts it
            prev = previous.get(ip) if ip else None
            if ip and not (prev and prev.counted(e)):
                entry = per_ip.setdefault(ip, [0, int(e["id"]), 0])
                entry[0] += _count(_details(e["details"]))
                entry[2] = int(e["id"])
        return [make_alert(
            "failed_auth", "high", f"{n} refused credentials from {ip} within "
            f"{window_text(d.window)}", self._key(ip, previous.get(ip), first), now, ip=ip,
            window=window_text(d.window), threshold=str(d.count),
            details={"count": n, "last_event_id": last})
            for ip, (n, first, last) in per_ip.items() if n >= d.count]

    async def rate_limit_breach(self, now: datetime) -> list[Alert]:
        d = self.config.detectors.rate_limit_breach
        if d is None:
            return []
        previous = await self._previous("rate_limit_breach", now, d.window)
        per: dict[tuple[str, str], list[Any]] = {}  # (token|ip, id) -> [count, subject]
        for e in await self._events("rate_limited", now - timedelta(seconds=d.window)):
            details = _details(e["details"])
            if details.get("reason") == "creation_limit":
                continue  # creation_rate's
            what, target = ("token", e["token_id"]) if e["token_id"] else \
                ("ip", limit_key(e["ip"]))  # an IPv6 client's /64, as the limits count it
            prev = previous.get(target) if target else None
            if target is None or (prev and prev.counted(e)):
                continue
            entry = per.setdefault((what, target), [0, e["subject"], int(e["id"]), 0])
            entry[0] += _count(details)
            entry[3] = int(e["id"])
        out = []
        for (what, target), (n, subject, first, last) in per.items():
            if n < d.count:
                continue
            out.append(make_alert(
                "rate_limit_breach", "medium", f"{n} requests refused by rate limits for "
                f"{'token ' + target if what == 'token' else target} within "
                f"{window_text(d.window)}", self._key(target, previous.get(target), first), now,
                token_id=target if what == "token" else None, subject=subject,
                ip=target if what == "ip" else None, window=window_text(d.window),
                threshold=str(d.count), details={"count": n, "last_event_id": last}))
        return out

    async def creation_rate(self, now: datetime) -> list[Alert]:
        """One alert per subject and creation_limit window, from the refusals branch
        ``suspend`` records (rate_limited, details.reason creation_limit)."""
        firsts: dict[tuple[str, int], tuple[int, str, int]] = {}
        for e in await self._events("rate_limited", now - LOOKBACK):
            details = _details(e["details"])
            if details.get("reason") != "creation_limit" or not e["subject"]:
                continue
            limit = str(details.get("limit") or "")
            try:
                window = parse_rate_limit(limit).window_s
            except ValueError:
                window = 3600
            key = (e["subject"], _bucket(_when(e["at"]), window))
            n, _, _ = firsts.get(key, (0, limit, window))
            firsts[key] = (n + _count(details), limit, window)
        return [make_alert(
            "creation_rate", "high", f"subject {subject} was refused {n} token creation"
            f"{'s' if n != 1 else ''} over its creation limit {limit}".rstrip(),
            f"{subject}|{bucket}", now, subject=subject, window=window_text(window),
            threshold=limit or None, details={"count": n, "limit": limit})
            for (subject, bucket), (n, limit, window) in firsts.items()]

    async def token_replay(self, now: datetime) -> list[Alert]:
        """Each token_replay_detected event (authority.check_replay records it) once: the
        replica that handled the replay raises it at once (``replay_alert``); this finds any
        it could not (a crash, the store down for a moment) at the next check."""
        return [replay_alert(e["token_id"], e["subject"], e["ip"], _when(e["at"]),
                             _details(e["details"]), now)
                for e in await self._events("token_replay_detected", now - LOOKBACK)]

    def all(self) -> Iterable[Callable[[datetime], Any]]:
        return (self.token_expiring, self.rotation_due, self.inactive, self.multi_ip,
                self.rapid_use, self.failed_auth, self.rate_limit_breach, self.creation_rate,
                self.token_replay)


def replay_alert(token_id: str | None, subject: str | None, ip: str | None, at: datetime,
                 details: Mapping[str, Any], now: datetime) -> Alert:
    """A family is replayed once (the store records the first presentation only), so the
    family is the key, the same from the event and from where it happened."""
    family = str(details.get("family") or token_id)
    return make_alert(
        "token_replay_detected", "critical", f"rotated-out token {token_id} of {subject} was "
        "presented after its grace: its family was revoked", family, now, token_id=token_id,
        subject=subject, ip=ip, details={"family": family, "at": rfc3339(at), **{
            k: v for k, v in details.items() if k == "revoked"}})
