"""The token authority: every lifecycle operation, used by the CLI, the admin API and the gateway.

Policy and validation live here; atomicity lives in the store (each call is one transaction with
its audit event). Bad input raises InvalidInput before anything is written.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from gateway import tokens
from gateway.config import RateLimit, Settings
from gateway.credits import NamedLimit, check_credits, check_named_limits
from gateway.errors import InvalidInput, NotFound, Refused
from gateway.store import (
    Event,
    EventFilter,
    Revoked,
    Stats,
    TokenFilter,
    TokenRecord,
    TokenStore,
)
from gateway.store.base import REPLAYED
from gateway.values import (
    BAD_CHARS,
    MAX_GRACE_S,
    MAX_LIFETIME_S,
    MAX_PAGE,
    MAX_RATE,
    MAX_TIME,
    MAX_WINDOW_S,
    check_filter,
    check_limit,
    check_metadata,
    check_rate_limit,
    check_seconds,
    check_status,
    check_text,
    decode_cursor,
    encode_cursor,
)

DEFAULT_GRACE_S = 3600

# Called with what a change made unusable (or None for "everything") so caches can drop it.
Invalidator = Callable[[Sequence[Revoked] | None], Awaitable[None]]
# A caller's veto on a change, run before anything is written: (the token before, or None for a
# create; the token as it would be stored). It raises to refuse (the admin API's self-service
# bounds).
Allow = Callable[[TokenRecord | None, TokenRecord], None]


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_id(kind: str) -> str:
    return f"{kind}_" + "".join(secrets.choice(tokens.BASE62) for _ in range(16))


@dataclass(frozen=True, slots=True)
class Actor:
    """Who performs an action, for the audit log: ``cli:alice``, ``admin:tok_...``, ``gateway``."""
    name: str
    ip: str | None = None
    user_agent: str | None = None


def public_record(r: TokenRecord, now: datetime) -> dict[str, Any]:
    """The record as users see it (SPEC §4); never the hash."""
    return {
        "id": r.id, "subject": r.subject, "name": r.name, "scopes": list(r.scopes),
        "family": r.family, "hint": r.hint,
        "rate_limit": [n.as_dict() for n in r.named_limits] if r.named_limits
        else r.rate_limit.as_dict() if r.rate_limit else None,
        "metadata": dict(r.metadata), "created_at": rfc3339(r.created_at),
        "expires_at": rfc3339(r.expires_at), "last_used_at": rfc3339(r.last_used_at),
        "last_used_ip": r.last_used_ip, "usage_count": r.usage_count,
        "revoked_at": rfc3339(r.revoked_at) if r.is_revoked(now) else None,
        "revoked_reason": r.revoked_reason if r.is_revoked(now) else None,
        "rotated_from": r.rotated_from, "grace_until": rfc3339(r.grace_until),
        "status": r.status(now),
        "credits": r.credits.as_dict() if r.credits is not None else None,
    }


def check_limits(value: object) -> tuple[RateLimit | None, tuple[NamedLimit, ...]]:
    """A token's ``rate_limit``: one limit (``"N/unit"``, ``{"limit", "window_s"}``), a list of
    named limits (SPEC §13), or None (the default)."""
    if isinstance(value, list | tuple):
        return None, check_named_limits(value, MAX_RATE, MAX_WINDOW_S)
    return check_rate_limit(value), ()


def public_event(e: Event) -> dict[str, Any]:
    return {"id": e.id, "type": e.type, "token_id": e.token_id, "subject": e.subject,
            "actor": e.actor, "ip": e.ip, "user_agent": e.user_agent, "at": rfc3339(e.at),
            "details": dict(e.details)}


class TokenAuthority:
    def __init__(self, store: TokenStore, settings: Settings,
                 clock: Callable[[], datetime] = utcnow,
                 invalidate: Invalidator | None = None) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self._invalidate = invalidate
        # Told of each replay this process handled (the alert watcher, when alerts is set).
        self.on_replay: Callable[[Event], None] | None = None

    async def _changed(self, revoked: Sequence[Revoked] | None) -> None:
        if self._invalidate is not None:
            await self._invalidate(revoked)

    def _event(self, type_: str, actor: Actor, record: TokenRecord | None = None,
               now: datetime | None = None, **details: Any) -> Event:
        return Event(type=type_, actor=actor.name, at=now or self.clock(),
                     token_id=record.id if record else None,
                     subject=record.subject if record else details.pop("subject", None),
                     ip=actor.ip, user_agent=actor.user_agent, details=details)

    def hash(self, plaintext: str) -> str:
        return tokens.hash_token(plaintext, self.settings.pepper)

    # --- create / read ----------------------------------------------------------------------

    def scopes_for(self, scopes: object = (), role: str | None = None) -> tuple[str, ...]:
        granted = tokens.normalise_scopes(list(scopes) if isinstance(scopes, tuple) else scopes)
        if role is None:
            return granted
        if role not in self.settings.roles:
            raise InvalidInput("role", f"unknown role {role!r}; configured: "
                               f"{', '.join(sorted(self.settings.roles)) or 'none'}")
        return tuple(dict.fromkeys((*self.settings.roles[role], *granted)))

    def expiry(self, now: datetime, expires_in: object = None,
               expires_at: datetime | None = None) -> datetime | None:
        if expires_in is not None and expires_at is not None:
            raise InvalidInput("expires_in", "give expires_in or expires_at, not both")
        if expires_in is not None:
            return now + timedelta(seconds=check_seconds("expires_in", expires_in, minimum=1,
                                                         maximum=MAX_LIFETIME_S))
        if expires_at is not None and expires_at <= now:
            raise InvalidInput("expires_at", "must be in the future")
        return expires_at

    async def create(self, actor: Actor, *, subject: str, name: str, scopes: object = (),
                     role: str | None = None, expires_in: object = None,
                     expires_at: datetime | None = None, rate_limit: object = None,
                     metadata: object = None, allow: Allow | None = None,
                     credits: object = None) -> tuple[TokenRecord, str]:
        now = self.clock()
        rate, named = check_limits(rate_limit)
        secret = tokens.generate(self.settings.token_prefix)
        record = TokenRecord(
            id=new_id("tok"), subject=check_text("subject", subject),
            name=check_text("name", name), scopes=self.scopes_for(scopes, role),
            family=new_id("fam"), token_hash=self.hash(secret.plaintext), hint=secret.hint,
            created_at=now, rate_limit=rate, named_limits=named,
            credits=check_credits(credits, now),
            metadata=check_metadata(metadata), expires_at=self.expiry(now, expires_in, expires_at))
        if allow is not None:
            allow(None, record)
        event = self._event("token_created", actor, record, now, name=record.name,
                            scopes=list(record.scopes))
        if self.settings.creation_limit is None:
            await self.store.insert_token(record, event)
        else:  # counted in the store with the insert (gateway/subjects.py)
            from gateway.subjects import insert_limited

            await insert_limited(self, record, event, actor)
        return record, secret.plaintext

    async def get(self, token_id: str) -> TokenRecord:
        # An id no store could hold (a NUL, a lone surrogate from a non-UTF-8 argv) is unknown.
        unstorable = not isinstance(token_id, str) or BAD_CHARS.search(token_id)
        record = None if unstorable else await self.store.get_token(token_id)
        if record is None:
            raise NotFound(f"token {token_id} not found")
        return record

    async def list(self, *, subject: str | None = None, status: str | None = None,
                   family: str | None = None, limit: int = 50, cursor: str | None = None,
                   max_limit: int = MAX_PAGE, expires_before: datetime | None = None,
                   ) -> tuple[list[TokenRecord], str | None]:
        flt = TokenFilter(check_filter("subject", subject), check_status(status),
                          check_filter("family", family), expires_before=expires_before)
        limit = check_limit(limit, max_limit)
        page = await self.store.list_tokens(flt, self.clock(), limit + 1, decode_cursor(cursor))
        more = len(page) > limit
        page = page[:limit]
        return page, encode_cursor(page[-1].seq) if more else None

    # --- change -----------------------------------------------------------------------------

    async def update(self, actor: Actor, token_id: str, allow: Allow | None = None,
                     **changes: Any) -> TokenRecord:
        clean: dict[str, Any] = {}
        for key, value in changes.items():
            if key == "name":
                clean[key] = check_text("name", value)
            elif key == "scopes":
                clean[key] = tokens.normalise_scopes(value)
            elif key == "rate_limit":
                clean[key], clean["named_limits"] = check_limits(value)
            elif key == "credits":
                clean[key] = check_credits(value, self.clock())
            elif key == "metadata":
                clean[key] = check_metadata(value)
            elif key == "expires_at":
                clean[key] = self.expiry(self.clock(), None, value) if value else None
            else:
                raise InvalidInput(key, "cannot be changed")
        details: dict[str, Any] = {k: (str(v) if isinstance(v, RateLimit | datetime) else v)
                   for k, v in clean.items() if k not in ("metadata", "named_limits", "credits")}
        if clean.get("named_limits"):
            details["rate_limit"] = [n.as_dict() for n in clean["named_limits"]]
        if "credits" in clean:
            details["credits"] = clean["credits"].as_dict() if clean["credits"] else None
        record = await self.get(token_id)
        if allow is not None:
            allow(record, replace(record, **clean))
        event = self._event("token_updated", actor, record, changes=sorted(clean), **details)
        updated = await self.store.update_token(token_id, clean, event)
        if updated is None:
            raise NotFound(f"token {token_id} not found")
        await self._changed([Revoked(updated.id, updated.token_hash)])
        return updated

    async def revoke(self, actor: Actor, token_id: str, reason: str | None = None) -> TokenRecord:
        reason = check_text("reason", reason or "revoked", 500)
        record = await self.get(token_id)
        event = self._event("token_revoked", actor, record, reason=reason)
        updated, changed = await self.store.revoke_token(token_id, reason, event)
        if updated is None:
            raise NotFound(f"token {token_id} not found")
        if changed:
            await self._changed([Revoked(updated.id, updated.token_hash)])
        return updated

    async def _revoke_many(self, actor: Actor, flt: TokenFilter, reason: str | None,
                           type_: str, **details: Any) -> int:
        reason = check_text("reason", reason or "revoked", 500)
        event = self._event(type_, actor, reason=reason, **details)
        done = await self.store.revoke_many(flt, reason, event)
        await self._changed(done if flt.subject or flt.family else None)
        return len(done)

    async def revoke_subject(self, actor: Actor, subject: str, reason: str | None = None) -> int:
        check_text("subject", subject)
        return await self._revoke_many(actor, TokenFilter(subject=subject), reason,
                                       "subject_tokens_revoked", subject=subject)

    async def revoke_family(self, actor: Actor, family: str, reason: str | None = None,
                            subject: str | None = None) -> int:
        """``subject``: only that subject's members (a self-service caller's family revoke)."""
        check_text("family", family)
        return await self._revoke_many(actor, TokenFilter(subject=subject, family=family),
                                       reason, "family_revoked", family=family)

    async def revoke_all(self, actor: Actor, reason: str) -> int:
        return await self._revoke_many(actor, TokenFilter(), reason, "all_tokens_revoked")

    async def delete(self, actor: Actor, token_id: str) -> TokenRecord:
        record = await self.get(token_id)
        deleted = await self.store.delete_token(token_id, self._event("token_deleted", actor,
                                                                      record))
        if deleted is None:
            raise NotFound(f"token {token_id} not found")
        await self._changed([Revoked(deleted.id, deleted.token_hash)])
        return deleted

    async def rotate(self, actor: Actor, token_id: str, grace: object = DEFAULT_GRACE_S,
                     allow: Allow | None = None, not_after: datetime | None = None
                     ) -> tuple[TokenRecord, str, TokenRecord]:
        """New secret in the same family; the old one works until the grace ends.

        The successor keeps the old token's lifetime length (expires_at - created_at), but
        never expires after ``MAX_TIME`` nor after ``not_after`` (a self-service caller's own
        end: rotation replaces a secret, it does not extend what the caller may grant).
        Returns (successor, its plaintext, the old record).
        """
        grace_s = check_seconds("grace", grace, maximum=MAX_GRACE_S)
        now = self.clock()
        old = await self.get(token_id)
        secret = tokens.generate(self.settings.token_prefix)
        successor = TokenRecord(
            id=new_id("tok"), subject=old.subject, name=old.name, scopes=old.scopes,
            family=old.family, token_hash=self.hash(secret.plaintext), hint=secret.hint,
            created_at=now, rate_limit=old.rate_limit, metadata=old.metadata,
            named_limits=old.named_limits, credits=old.credits,
            expires_at=_successor_expiry(old, now, not_after), rotated_from=old.id)
        if allow is not None:
            allow(old, successor)
        event = self._event("token_rotated", actor, old, now, successor=successor.id,
                            grace_s=grace_s)
        grace_until = now + timedelta(seconds=grace_s)
        if self.settings.creation_limit is None:
            rotated = await self.store.rotate_token(old.id, successor, grace_until, event)
        else:  # the successor is a creation: counted like create (gateway/subjects.py)
            from gateway.subjects import rotate_limited

            rotated = await rotate_limited(self, old.id, successor, grace_until, event, actor)
        if rotated is None:
            raise Refused(self._why_not_rotatable(await self.get(token_id), now))
        await self._changed([Revoked(rotated.id, rotated.token_hash)])
        return successor, secret.plaintext, rotated

    @staticmethod
    def _why_not_rotatable(record: TokenRecord, now: datetime) -> str:
        if record.is_revoked(now):
            return f"token {record.id} is revoked and cannot be rotated"
        if record.grace_until is not None:
            return f"token {record.id} was already rotated; rotate its successor instead"
        if record.is_expired(now):
            return f"token {record.id} has expired and cannot be rotated"
        return f"token {record.id} cannot be rotated"

    async def check_replay(self, record: TokenRecord, actor: Actor) -> bool:
        """A rotated-out token presented after its grace: revoke the family, record the replay.

        The gateway calls this for a refused token; True means it was a replay.
        """
        now = self.clock()
        if not record.is_replay(now):
            return False
        event = self._event("token_replay_detected", actor, record, now, family=record.family)
        # Idempotent: only the first presentation (on any replica) writes; the others find the
        # replay handled (None) and write nothing. Dropping the rotated-out tokens from every
        # cache means later presentations are plain revoked tokens, judged without the store.
        done = await self.store.revoke_replayed(record.family, REPLAYED, event)
        if done is not None:
            await self._changed(done)
            if self.on_replay is not None:
                self.on_replay(event.with_details(revoked=len(done)))
        return True

    async def cleanup(self, actor: Actor, older_than: object = 30 * 86400) -> int:
        seconds = check_seconds("older_than", older_than, maximum=MAX_LIFETIME_S)
        now = self.clock()
        event = self._event("tokens_cleaned_up", actor, now=now, older_than_s=seconds)
        return await self.store.cleanup(now - timedelta(seconds=seconds), event)

    # --- analytics and audit -----------------------------------------------------------------

    async def usage(self, token_id: str, days: int = 30, ips: int = 10
                    ) -> tuple[Sequence[tuple[date, int]], Sequence[tuple[str, datetime, int]]]:
        """Requests per UTC day for the last ``days`` days (zeros included, oldest first) and
        the addresses it was used from most recently. Counts lag by one usage flush."""
        today = self.clock().date()
        since = today - timedelta(days=days - 1)
        counted = dict(await self.store.daily_usage(token_id, since))
        window = [since + timedelta(days=i) for i in range(days)]
        per_day = [(day, counted.get(day, 0)) for day in window]
        return per_day, await self.store.recent_ips(token_id, ips)

    async def stats(self, top: int = 10) -> Stats:
        return await self.store.stats(self.clock(), top)

    async def events(self, *, token_id: str | None = None, subject: str | None = None,
                     type: str | None = None, since: datetime | None = None, limit: int = 50,
                     cursor: str | None = None,
                     max_limit: int = MAX_PAGE) -> tuple[Sequence[Event], str | None]:
        limit = check_limit(limit, max_limit)
        flt = EventFilter(check_filter("token_id", token_id), check_filter("subject", subject),
                          check_filter("type", type), since)
        page = await self.store.list_events(flt, limit + 1, decode_cursor(cursor))
        more = len(page) > limit
        page = page[:limit]
        return page, encode_cursor(page[-1].id or 0) if more else None


def _successor_expiry(old: TokenRecord, now: datetime,
                      not_after: datetime | None) -> datetime | None:
    if old.expires_at is None:
        return not_after
    lifetime = old.expires_at - old.created_at
    expires = MAX_TIME if lifetime >= MAX_TIME - now else now + lifetime
    return expires if not_after is None else min(expires, not_after)


def stats_dict(s: Stats) -> dict[str, Any]:
    return {"total": s.total, "active": s.active, "revoked": s.revoked, "expired": s.expired,
            "created_24h": s.created_24h, "used_24h": s.used_24h,
            "top_subjects": [{"subject": sub, "active": n} for sub, n in s.top_subjects]}
