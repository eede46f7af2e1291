"""SqlStore: the one implementation of TokenStore, over a PostgreSQL or SQLite driver.

Queries are shared (queries.sql); the drivers differ only in connection handling, parameter
style and value conversion, so both backends behave identically by construction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any, Protocol

from gateway.config import RateLimit
from gateway.credits import Credits, NamedLimit
from gateway.errors import Refused
from gateway.store.base import (
    Event,
    EventFilter,
    LegacyImport,
    Revoked,
    Stats,
    Suspension,
    TokenFilter,
    TokenRecord,
    Usage,
)


class Row(Protocol):
    """A result row read by column name (asyncpg.Record, sqlite3.Row); not a Mapping: both
    iterate over values, not keys."""
    def __getitem__(self, key: str, /) -> Any: ...


class Conn(Protocol):
    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...
    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...
    async def execute(self, sql: str, *args: Any) -> int: ...
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...
    async def script(self, sql: str) -> None: ...


class Driver(Protocol):
    dialect: str
    migration_lock: str | None

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    def transaction(self) -> AbstractAsyncContextManager[Conn]: ...
    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...
    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...


@cache
def named_queries(package: str, filename: str) -> dict[str, str]:
    """The ``-- name: NAME`` blocks of a packaged SQL file, comments dropped (loaded once)."""
    text = resources.files(package).joinpath(filename).read_text("utf-8")
    named: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.M)[1:]:
        name, _, body = block.partition("\n")
        named[name.strip()] = "\n".join(
            line for line in body.splitlines() if not line.lstrip().startswith("--")).strip()
    return named


def queries() -> dict[str, str]:
    return named_queries("gateway.store", "queries.sql")


def Q(name: str) -> str:
    return queries()[name]


# Status predicates over a "now" parameter; revoked wins over expired.
_STATUS_SQL = {
    "active": "(revoked_at IS NULL OR revoked_at > {now}) "
              "AND (expires_at IS NULL OR expires_at > {now})",
    "revoked": "(revoked_at IS NOT NULL AND revoked_at <= {now})",
    "expired": "((revoked_at IS NULL OR revoked_at > {now}) AND expires_at IS NOT NULL "
               "AND expires_at <= {now})",
}
# What a bulk revoke may change: active, where "in a rotation grace" must say 'rotated', so a
# concurrent revoke whose clock read came earlier never revokes (and counts) a token twice.
_REVOCABLE = ("(revoked_at IS NULL OR (revoked_reason = 'rotated' AND revoked_at > {now})) "
              "AND (expires_at IS NULL OR expires_at > {now})")
_UPDATABLE = ("name", "scopes", "rate_limit", "metadata", "expires_at", "named_limits",
              "credits")


class _Params:
    """Collects bound values and hands out $n placeholders for dynamic WHERE clauses."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _time(v: Any) -> datetime | None:
    return None if v is None else _when(v)


def _when(v: Any) -> datetime:
    """A NOT NULL time column: asyncpg gives a datetime, SQLite the ISO text we stored."""
    return v if isinstance(v, datetime) else datetime.fromisoformat(v)


def _json(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) else v


def _record(row: Row) -> TokenRecord:
    limit = row["rate_limit"]
    return TokenRecord(
        id=row["id"], subject=row["subject"], name=row["name"],
        scopes=tuple(_json(row["scopes"])), family=row["family"],
        token_hash=row["token_hash"], hint=row["hint"],
        created_at=_when(row["created_at"]),
        rate_limit=RateLimit(limit, row["rate_window_s"]) if limit else None,
        metadata=_json(row["metadata"]), expires_at=_time(row["expires_at"]),
        last_used_at=_time(row["last_used_at"]), last_used_ip=row["last_used_ip"],
        usage_count=row["usage_count"], revoked_at=_time(row["revoked_at"]),
        revoked_reason=row["revoked_reason"], rotated_from=row["rotated_from"],
        grace_until=_time(row["grace_until"]), seq=row["seq"],
        legacy_kind=_optional(row, "legacy_kind"), legacy_hash=_optional(row, "legacy_hash"),
        suspended=bool(_optional(row, "suspended")),
        named_limits=_named_limits(row), credits=_credits(row),
    )


def _named_limits(row: Row) -> tuple[NamedLimit, ...]:
    text = _optional(row, "rate_limits")  # NULL, or a store migrated before 007
    return tuple(NamedLimit(n["name"], RateLimit(n["limit"], n["window_s"]))
                 for n in _json(text)) if text else ()


def _credits(row: Row) -> Credits | None:
    remaining = _optional(row, "credits_remaining")
    if remaining is None:
        return None
    return Credits(int(remaining), None if row["credits_refill"] is None
                   else int(row["credits_refill"]), row["credits_interval"],
                   int(row["credits_period"]), int(row["credits_gen"]))


def _quota_row(r: TokenRecord, generation: int | None = None) -> tuple[Any, ...]:
    """The set_quota parameters of a record: named limits as JSON text, credits."""
    named = json.dumps([n.as_dict() for n in r.named_limits]) if r.named_limits else None
    c = r.credits
    if c is None:
        return (r.id, named, None, None, None, 0, generation or 0)
    return (r.id, named, c.remaining, c.refill_amount, c.refill_interval, c.period,
            c.generation if generation is None else generation)


def _optional(row: Row, column: str) -> Any:
    """A column a store migrated before 003 lacks (asyncpg: KeyError, sqlite3: IndexError)."""
    try:
        return row[column]
    except (KeyError, IndexError):
        return None


def _event(row: Row) -> Event:
    return Event(
        id=row["id"], type=row["type"], token_id=row["token_id"], subject=row["subject"],
        actor=row["actor"], ip=row["ip"], user_agent=row["user_agent"],
        at=_when(row["at"]), details=_json(row["details"]),
    )


def _event_row(e: Event) -> tuple[Any, ...]:
    return (e.type, e.token_id, e.subject, e.actor, e.ip, e.user_agent, e.at, dict(e.details))


def _where(conds: list[str]) -> str:
    return f" WHERE {' AND '.join(conds)}" if conds else ""


class SqlStore:
    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    @property
    def dialect(self) -> str:
        return self.driver.dialect

    async def open(self) -> None:
        await self.driver.open()

    async def close(self) -> None:
        await self.driver.close()

    async def ping(self) -> None:
        await self.driver.fetchrow("SELECT 1 AS ok")

    # --- schema ---------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Apply pending migrations in one transaction; returns the names applied (idempotent)."""
        folder = resources.files("gateway.store").joinpath("migrations", self.dialect)
        available = sorted(f.name for f in folder.iterdir() if f.name.endswith(".sql"))
        applied_now: list[str] = []
        async with self.driver.transaction() as tx:
            if self.driver.migration_lock:
                await tx.execute(self.driver.migration_lock)
            await tx.script(Q("create_migrations_table"))
            done = {r["version"] for r in await tx.fetch(Q("applied_migrations"))}
            for name in available:
                version = int(name.split("_", 1)[0])
                if version in done:
                    continue
                await tx.script(folder.joinpath(name).read_text("utf-8"))
                await tx.execute(Q("record_migration"), version, name,
                                 datetime.now(UTC).isoformat())
                applied_now.append(name)
        return applied_now

    # --- tokens ---------------------------------------------------------------------------

    async def insert_token(self, record: TokenRecord, event: Event) -> None:
        async with self.driver.transaction() as tx:
            await self._insert(tx, record)
            await tx.execute(Q("insert_event"), *_event_row(event))

    @staticmethod
    async def _insert(tx: Conn, r: TokenRecord) -> None:
        rl = r.rate_limit
        await tx.execute(
            Q("insert_token"), r.id, r.token_hash, r.hint, r.subject, r.name, list(r.scopes),
            r.family, rl.limit if rl else None, rl.window_s if rl else None, dict(r.metadata),
            r.created_at, r.expires_at, r.rotated_from)
        if r.named_limits or r.credits is not None:
            await tx.execute(Q("set_quota"), *_quota_row(r))

    async def get_token(self, token_id: str) -> TokenRecord | None:
        row = await self.driver.fetchrow(Q("get_token"), token_id)
        return _record(row) if row else None

    async def get_by_hash(self, token_hash: str) -> TokenRecord | None:
        row = await self.driver.fetchrow(Q("get_by_hash"), token_hash)
        return _record(row) if row else None

    @staticmethod
    def _token_conds(flt: TokenFilter, now: datetime, p: _Params) -> list[str]:
        conds = []
        if flt.subject is not None:
            conds.append(f"subject = {p(flt.subject)}")
        if flt.family is not None:
            conds.append(f"family = {p(flt.family)}")
        if flt.status is not None:
            conds.append(_STATUS_SQL[flt.status].replace("{now}", p(now)))
        if flt.expires_before is not None:
            conds.append(f"expires_at < {p(flt.expires_before)}")
        return conds

    async def list_tokens(self, flt: TokenFilter, now: datetime, limit: int,
                          before_seq: int | None = None) -> list[TokenRecord]:
        p = _Params()
        conds = self._token_conds(flt, now, p)
        if before_seq is not None:
            conds.append(f"seq < {p(before_seq)}")
        sql = f"SELECT * FROM tokens{_where(conds)} ORDER BY seq DESC LIMIT {p(limit)}"
        return [_record(r) for r in await self.driver.fetch(sql, *p.values)]

    async def update_token(self, token_id: str, changes: Mapping[str, Any],
                           event: Event) -> TokenRecord | None:
        p = _Params()
        sets = []
        for key, value in changes.items():
            if key not in _UPDATABLE:
                raise KeyError(key)
            if key == "rate_limit":
                sets.append(f"rate_limit = {p(value.limit if value else None)}")
                sets.append(f"rate_window_s = {p(value.window_s if value else None)}")
            elif key == "named_limits":
                named = json.dumps([n.as_dict() for n in value]) if value else None
                sets.append(f"rate_limits = {p(named)}")
            elif key == "credits":  # a new balance: a new generation (gateway/credits.py)
                c: Credits | None = value
                sets.append(f"credits_remaining = {p(c.remaining if c else None)}")
                sets.append(f"credits_refill = {p(c.refill_amount if c else None)}")
                sets.append(f"credits_interval = {p(c.refill_interval if c else None)}")
                sets.append(f"credits_period = {p(c.period if c else 0)}")
                sets.append("credits_gen = credits_gen + 1")
            else:
                sets.append(f"{key} = {p(list(value) if key == 'scopes' else value)}")
        async with self.driver.transaction() as tx:
            if sets:
                sql = f"UPDATE tokens SET {', '.join(sets)} WHERE id = {p(token_id)}"
                if not await tx.execute(sql, *p.values):
                    return None
            row = await tx.fetchrow(Q("get_token"), token_id)
            if row is None:
                return None
            await tx.execute(Q("insert_event"), *_event_row(event))
            return _record(row)

    async def revoke_token(self, token_id: str, reason: str,
                           event: Event) -> tuple[TokenRecord | None, bool]:
        async with self.driver.transaction() as tx:
            changed = await tx.execute(Q("revoke_token"), token_id, event.at, reason) > 0
            row = await tx.fetchrow(Q("get_token"), token_id)
            if changed:
                await tx.execute(Q("insert_event"), *_event_row(event))
            return (_record(row) if row else None), changed

    async def revoke_many(self, flt: TokenFilter, reason: str, event: Event) -> list[Revoked]:
        """Revoke every active token the filter matches; one audit event with the count."""
        async with self.driver.transaction() as tx:
            done = await self._revoke_many(tx, flt, reason, event.at)
            await tx.execute(Q("insert_event"), *_event_row(event.with_details(revoked=len(done))))
            return done

    async def _revoke_many(self, tx: Conn, flt: TokenFilter, reason: str,
                           at: datetime) -> list[Revoked]:
        p = _Params()
        sets = f"revoked_at = {p(at)}, revoked_reason = {p(reason)}"
        conds = self._token_conds(TokenFilter(flt.subject, None, flt.family), at, p)
        conds.append(_REVOCABLE.replace("{now}", p(at)))
        sql = f"UPDATE tokens SET {sets}{_where(conds)} RETURNING id, token_hash"
        return [Revoked(r["id"], r["token_hash"]) for r in await tx.fetch(sql, *p.values)]

    async def revoke_replayed(self, family: str, reason: str,
                              event: Event) -> list[Revoked] | None:
        """A replay: mark the family's rotated-out members whose grace ended, revoke the rest
        of the family and record ``event``, in one transaction. None when another call already
        did (nothing is written then), so a replay is recorded once however often it is
        presented, on one replica or many."""
        async with self.driver.transaction() as tx:
            claimed = await tx.fetch(Q("claim_replay"), family, event.at, reason)
            if not claimed:
                return None
            done = await self._revoke_many(tx, TokenFilter(family=family), reason, event.at)
            await tx.execute(Q("insert_event"), *_event_row(event.with_details(revoked=len(done))))
            return [Revoked(r["id"], r["token_hash"]) for r in claimed] + done

    async def delete_token(self, token_id: str, event: Event) -> TokenRecord | None:
        async with self.driver.transaction() as tx:
            row = await tx.fetchrow(Q("get_token"), token_id)
            if row is None:
                return None
            await tx.execute(Q("delete_token"), token_id)
            await tx.execute(Q("delete_usage"), token_id)
            await tx.execute(Q("delete_usage_ips"), token_id)
            await tx.execute(Q("insert_event"), *_event_row(event))
            return _record(row)

    async def rotate_token(self, old_id: str, successor: TokenRecord, grace_until: datetime,
                           event: Event) -> TokenRecord | None:
        """Rotate out ``old_id`` and insert its successor; None if it cannot be rotated."""
        async with self.driver.transaction() as tx:
            return await self._rotate(tx, old_id, successor, grace_until, event)

    async def _rotate(self, tx: Conn, old_id: str, successor: TokenRecord,
                      grace_until: datetime, event: Event) -> TokenRecord | None:
        """``rotate_token``'s writes in ``tx`` (also run by ``rotate_token_limited``)."""
        if not await tx.execute(Q("rotate_out"), old_id, grace_until, event.at):
            return None
        if successor.credits is not None:  # the balance moves over, as it is now
            moved = await tx.fetchrow(Q("credits_hand_over"), old_id)
            if moved is not None:
                await tx.execute(Q("credits_zero"), old_id)
                successor = replace(successor, credits=replace(
                    successor.credits, remaining=int(moved["credits_remaining"]),
                    period=int(moved["credits_period"]), generation=0))
        await self._insert(tx, successor)
        await tx.execute(Q("insert_event"), *_event_row(event))
        row = await tx.fetchrow(Q("get_token"), old_id)
        return _record(row) if row else None

    async def cleanup(self, before: datetime, event: Event) -> int:
        async with self.driver.transaction() as tx:
            deleted = await tx.execute(Q("cleanup_tokens"), before)
            await tx.execute(Q("cleanup_usage"))
            await tx.execute(Q("cleanup_usage_ips"), before)
            await tx.execute(Q("insert_event"), *_event_row(event.with_details(deleted=deleted)))
            return deleted

    async def stats(self, now: datetime, top: int = 10) -> Stats:
        row = await self.driver.fetchrow(Q("token_stats"), now, now - timedelta(days=1))
        assert row is not None
        tops = await self.driver.fetch(Q("top_subjects"), now, top)
        revoked, expired = int(row["revoked"]), int(row["expired"])
        return Stats(
            active=int(row["total"]) - revoked - expired, revoked=revoked, expired=expired,
            created_24h=int(row["created_24h"]), used_24h=int(row["used_24h"]),
            top_subjects=[(r["subject"], int(r["active"])) for r in tops])

    # --- usage (written in batches by the gateway, never per request) -------------------------

    async def record_usage(self, usage: Sequence[Usage], events: Sequence[Event] = ()) -> None:
        """Add a batch of aggregated usage (and aggregated events) in one transaction."""
        async with self.driver.transaction() as tx:
            await tx.executemany(Q("add_usage"), [
                (u.token_id, u.count, u.last_used_at, u.last_used_ip) for u in usage])
            await tx.executemany(Q("add_daily_usage"), [
                (u.token_id, day, n) for u in usage for day, n in u.per_day.items()])
            await tx.executemany(Q("add_usage_ip"), [
                (u.token_id, ip, seen, n) for u in usage for ip, (seen, n) in u.ips.items()])
            if events:
                await tx.executemany(Q("insert_event"), [_event_row(e) for e in events])

    async def daily_usage(self, token_id: str, since: date) -> list[tuple[date, int]]:
        rows = await self.driver.fetch(Q("daily_usage"), token_id, since)
        return [(r["day"] if isinstance(r["day"], date) else date.fromisoformat(r["day"]),
                 int(r["count"])) for r in rows]

    async def recent_ips(self, token_id: str, limit: int = 10) -> list[tuple[str, datetime, int]]:
        rows = await self.driver.fetch(Q("recent_ips"), token_id, limit)
        return [(r["ip"], _when(r["last_seen_at"]), int(r["count"])) for r in rows]

    # --- events ---------------------------------------------------------------------------

    async def insert_events(self, events: Sequence[Event]) -> None:
        if events:
            async with self.driver.transaction() as tx:
                await tx.executemany(Q("insert_event"), [_event_row(e) for e in events])

    async def list_events(self, flt: EventFilter, limit: int,
                          before_id: int | None = None) -> list[Event]:
        p = _Params()
        conds = []
        for column in ("token_id", "subject", "type"):
            value = getattr(flt, column)
            if value is not None:
                conds.append(f"{column} = {p(value)}")
        if flt.since is not None:
            conds.append(f"at >= {p(flt.since)}")
        if before_id is not None:
            conds.append(f"id < {p(before_id)}")
        sql = f"SELECT * FROM token_events{_where(conds)} ORDER BY id DESC LIMIT {p(limit)}"
        return [_event(r) for r in await self.driver.fetch(sql, *p.values)]

    # --- imported tokens (SPEC §10) ----------------------------------------------------------

    async def import_tokens(self, kind: str, tokens: Sequence[LegacyImport], event: Event,
                            max_per_key: int | None = None) -> tuple[int, int]:
        """Insert the tokens whose source hash is not imported yet, and one event with the
        counts, in one transaction: (imported, skipped). Refused (nothing written) when more
        than ``max_per_key`` tokens would then wait under one candidate key."""
        async with self.driver.transaction() as tx:
            known = {r["legacy_hash"] for r in await tx.fetch(Q("legacy_hashes"), kind)}
            new = [t for t in tokens if t.record.legacy_hash not in known]
            await tx.executemany(Q("insert_legacy_token"), [
                (r.id, r.token_hash, r.hint, r.subject, r.name, list(r.scopes), r.family,
                 dict(r.metadata), r.created_at, r.expires_at, r.last_used_at, r.legacy_kind,
                 r.legacy_hash, t.prefix, t.key)
                for t in new for r in (t.record,)])
            if max_per_key is not None:
                await self._check_keys(tx, sorted({t.key for t in new if t.key}), max_per_key)
            skipped = len(tokens) - len(new)
            await tx.execute(Q("insert_event"), *_event_row(
                event.with_details(imported=len(new), skipped=skipped)))
            return len(new), skipped

    @staticmethod
    async def _check_keys(tx: Conn, keys: list[str], most: int) -> None:
        for start in range(0, len(keys), 500):  # under both dialects' parameter limits
            p = _Params()
            listed = ", ".join(p(k) for k in keys[start:start + 500])
            row = await tx.fetchrow(
                f"SELECT legacy_key, COUNT(*) AS n FROM tokens WHERE legacy_key IN ({listed}) "
                f"GROUP BY legacy_key HAVING COUNT(*) > {p(most)} LIMIT 1", *p.values)
            if row is not None:
                prefix, _, hint = row["legacy_key"].partition(" ")
                raise Refused(
                    f"{row['n']} bcrypt tokens with prefix {prefix!r} and hint {hint!r} would "
                    f"wait for their first use; at most {most}, as each refused request pays "
                    "one bcrypt check per such token: give each a longer \"hint\"")

    async def legacy_prefixes(self) -> list[str]:
        return [r["legacy_prefix"] for r in await self.driver.fetch(Q("legacy_prefixes"))]

    async def legacy_candidates(self, keys: Sequence[str], now: datetime,
                                limit: int) -> list[TokenRecord]:
        """Bcrypt tokens not yet matched whose candidate key is one of ``keys`` (an indexed
        IN list), not revoked, oldest first, at most ``limit``."""
        p = _Params()
        listed = ", ".join(p(k) for k in keys)
        sql = (f"SELECT * FROM tokens WHERE legacy_key IN ({listed}) "
               f"AND (revoked_at IS NULL OR revoked_at > {p(now)}) ORDER BY seq LIMIT {p(limit)}")
        return [_record(r) for r in await self.driver.fetch(sql, *p.values)]

    async def legacy_rehash(self, token_id: str, token_hash: str) -> TokenRecord | None:
        """Re-store a matched bcrypt token under authgate's keyed hash; the record as stored."""
        async with self.driver.transaction() as tx:
            await tx.execute(Q("legacy_rehash"), token_id, token_hash)
            row = await tx.fetchrow(Q("get_token"), token_id)
            return _record(row) if row else None

    # --- requests by outcome per hour (gateway.outcomes) ------------------------------------

    async def record_outcomes(self, rows: Sequence[tuple[datetime, str, int]],
                              prune_before: datetime | None = None) -> None:
        """Add (hour, outcome, count) rows and drop the hours before ``prune_before``, in one
        transaction."""
        async with self.driver.transaction() as tx:
            await tx.executemany(Q("add_outcomes"), [tuple(r) for r in rows])
            if prune_before is not None:
                await tx.execute(Q("prune_outcomes"), prune_before)

    async def outcome_counts(self, since: datetime) -> list[tuple[datetime, str, int]]:
        rows = await self.driver.fetch(Q("outcome_counts"), since)
        return [(_when(r["hour"]), r["outcome"], int(r["count"])) for r in rows]

    # --- subjects: suspension and the creation limit (SPEC §7, §3; gateway/subjects.py) ------

    async def insert_token_limited(self, record: TokenRecord, event: Event, limit: RateLimit,
                                   refused: Event) -> float | None:
        """``insert_token`` unless ``record.subject`` already had ``limit.limit`` tokens created
        in the ``limit.window_s`` seconds before ``event.at``: then ``refused`` is recorded
        instead and the seconds until one more may be created are returned. Count and insert
        run under the subject's lock, so concurrent creates (any process) are exact."""
        async with self.driver.transaction() as tx:
            await tx.execute(Q("lock_subject"), record.subject)
            since = event.at - timedelta(seconds=limit.window_s)
            rows = await tx.fetch(Q("created_since"), record.subject, since, limit.limit)
            if len(rows) >= limit.limit:
                await tx.execute(Q("insert_event"), *_event_row(refused))
                frees = _when(rows[-1]["at"]) + timedelta(seconds=limit.window_s)
                return max(0.0, (frees - event.at).total_seconds())
            await self._insert(tx, record)
            await tx.execute(Q("insert_event"), *_event_row(event))
            return None

    async def rotate_token_limited(self, old_id: str, successor: TokenRecord,
                                   grace_until: datetime, event: Event, limit: RateLimit,
                                   refused: Event) -> tuple[TokenRecord | None, float | None]:
        """``rotate_token`` counted against ``limit`` like ``insert_token_limited`` (the
        successor is a new token of the subject): (the old record, None) when rotated, (None,
        seconds to wait) when refused by the limit (``refused`` recorded), (None, None) when
        the token cannot be rotated (nothing written). Under the subject's lock, so exact."""
        async with self.driver.transaction() as tx:
            await tx.execute(Q("lock_subject"), successor.subject)
            since = event.at - timedelta(seconds=limit.window_s)
            rows = await tx.fetch(Q("created_since"), successor.subject, since, limit.limit)
            if len(rows) >= limit.limit:
                if not await tx.fetch(Q("rotatable"), old_id, event.at):
                    return None, None
                await tx.execute(Q("insert_event"), *_event_row(refused))
                frees = _when(rows[-1]["at"]) + timedelta(seconds=limit.window_s)
                return None, max(0.0, (frees - event.at).total_seconds())
            return await self._rotate(tx, old_id, successor, grace_until, event), None

    async def suspend_subject(self, subject: str, reason: str | None,
                              event: Event) -> tuple[Suspension | None, bool, list[Revoked]]:
        """Suspend ``subject`` (recording ``event``) unless it is already: (the suspension,
        whether this call made it, the subject's tokens to drop from the caches)."""
        async with self.driver.transaction() as tx:
            changed = await tx.execute(Q("suspend_subject"), subject, event.at, reason,
                                       event.actor) > 0
            if changed:
                await tx.execute(Q("insert_event"), *_event_row(event))
            row = await tx.fetchrow(Q("get_subject"), subject)
            tokens = await tx.fetch(Q("subject_token_hashes"), subject) if changed else []
            return (_suspension(row) if row else None), changed, [
                Revoked(r["id"], r["token_hash"]) for r in tokens]

    async def resume_subject(self, subject: str, event: Event) -> tuple[bool, list[Revoked]]:
        """End a suspension (recording ``event``); (whether there was one, tokens to drop)."""
        async with self.driver.transaction() as tx:
            changed = await tx.execute(Q("resume_subject"), subject) > 0
            if not changed:
                return False, []
            await tx.execute(Q("insert_event"), *_event_row(event))
            tokens = await tx.fetch(Q("subject_token_hashes"), subject)
            return True, [Revoked(r["id"], r["token_hash"]) for r in tokens]

    async def get_suspension(self, subject: str) -> Suspension | None:
        row = await self.driver.fetchrow(Q("get_subject"), subject)
        return _suspension(row) if row else None

    async def count_subject_tokens(self, subject: str, now: datetime) -> int:
        """The working tokens whose subject is exactly ``subject`` (one indexed COUNT)."""
        row = await self.driver.fetchrow(Q("count_subject_tokens"), subject, now)
        return int(row["n"]) if row else 0

    async def list_suspended(self, limit: int,
                             after: tuple[datetime, str] | None = None) -> list[Suspension]:
        """Suspended subjects, most recently suspended first (then by subject, descending);
        ``after``: the (suspended_at, subject) of the previous page's last one."""
        p = _Params()
        conds = ["suspended_at IS NOT NULL"]
        if after is not None:
            at, subject = p(after[0]), p(after[1])
            conds.append(f"(suspended_at < {at} OR (suspended_at = {at} AND subject < {subject}))")
        sql = (f"SELECT * FROM subjects{_where(conds)} ORDER BY suspended_at DESC, subject DESC "
               f"LIMIT {p(limit)}")
        return [s for r in await self.driver.fetch(sql, *p.values)
                if (s := _suspension(r)) is not None]


    # --- credits (SPEC §13): leases for the gateway's counters -----------------------------

    async def take_credits(self, token_id: str, generation: int, period: int, want: int) -> int:
        """Take up to ``want`` credits of this generation's balance (refilled first when
        ``period`` is a new one); the number taken, 0 when none is left."""
        async with self.driver.transaction() as tx:
            await tx.execute(Q("credits_refill"), token_id, generation, period)
            for _ in range(3):  # the balance may shrink under us (another replica's lease)
                row = await tx.fetchrow(Q("credits_take"), token_id, generation, want)
                if row is not None:
                    return want
                row = await tx.fetchrow(Q("credits_balance"), token_id, generation)
                if row is None or row["credits_remaining"] is None \
                        or int(row["credits_remaining"]) <= 0:
                    return 0
                want = int(row["credits_remaining"])
            return 0


def _suspension(row: Row) -> Suspension | None:
    if row["suspended_at"] is None:
        return None
    return Suspension(subject=row["subject"], suspended_at=_when(row["suspended_at"]),
                      reason=row["suspended_reason"], actor=row["suspended_by"] or "")
