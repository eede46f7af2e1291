"""Subjects: suspension and the per-subject creation limit (SPEC §3, §7, §8).

Suspension. ``suspend`` marks a subject in the store (table ``subjects``) and drops every token
of it from every cache (broadcast, as a revoke does). The gateway's lookup by hash joins the
mark into the record (``TokenRecord.suspended``), so ``Pipeline._unusable`` refuses it (401
``invalid_token``, ``auth_failed`` reason ``suspended``) on the proxy, forward auth, admin callers
and introspection alike, and a cached copy dies within the revocation bound like any other.
Nothing is revoked: ``resume`` drops the tokens from the caches again and they work as before.
A subject need not have tokens to be suspended (tokens created for it later are refused too);
suspending a suspended subject, or resuming one that is not, succeeds and changes nothing.

Creation limit. With ``creation_limit: N/unit``, a subject's ``token_created`` events in the
last window are counted in the same transaction as the insert, under a per-subject lock (the
subject's row), so concurrent creates from any process are exact. A rotation counts as a
creation (its ``token_rotated`` event; the successor is a new token, and the rotated-out one
works on through its grace, so uncounted rotations would multiply working tokens past the
limit); it is refused the same way and is exact the same way. Import (it brings tokens that
exist already) does not count; deleted tokens still do. A refused create or rotation records a
``rate_limited`` event with ``details = {"reason": "creation_limit", "limit": "N/unit"}`` and
raises ``CreationLimited`` (API 429 + Retry-After, CLI exit 1).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from datetime import UTC, datetime
from typing import Any

from gateway.authority import Actor, TokenAuthority, rfc3339
from gateway.errors import CreationLimited, InvalidInput
from gateway.store import Event, Suspension, TokenRecord
from gateway.values import MAX_PAGE, check_limit, check_text

REASON_MAX = 500


async def insert_limited(auth: TokenAuthority, record: TokenRecord, event: Event,
                         actor: Actor) -> None:
    """Insert a new token unless its subject is over ``creation_limit`` (which must be set)."""
    limit = auth.settings.creation_limit
    assert limit is not None
    refused = Event(type="rate_limited", actor=actor.name, at=event.at, subject=record.subject,
                    ip=actor.ip, user_agent=actor.user_agent,
                    details={"reason": "creation_limit", "limit": str(limit)})
    wait = await auth.store.insert_token_limited(record, event, limit, refused)
    if wait is not None:
        raise CreationLimited(record.subject, str(limit), max(1, math.ceil(wait)))


async def rotate_limited(auth: TokenAuthority, old_id: str, successor: TokenRecord,
                         grace_until: datetime, event: Event, actor: Actor
                         ) -> TokenRecord | None:
    """Rotate ``old_id`` unless its subject is over ``creation_limit`` (which must be set);
    the old record, None when it cannot be rotated."""
    limit = auth.settings.creation_limit
    assert limit is not None
    refused = Event(type="rate_limited", actor=actor.name, at=event.at, subject=successor.subject,
                    ip=actor.ip, user_agent=actor.user_agent,
                    details={"reason": "creation_limit", "limit": str(limit)})
    rotated, wait = await auth.store.rotate_token_limited(old_id, successor, grace_until, event,
                                                          limit, refused)
    if wait is not None:
        raise CreationLimited(successor.subject, str(limit), max(1, math.ceil(wait)))
    return rotated


def _reason(reason: str | None) -> str | None:
    return None if reason is None else check_text("reason", reason, REASON_MAX)


async def suspend(auth: TokenAuthority, actor: Actor, subject: str,
                  reason: str | None = None) -> tuple[Suspension, bool]:
    """Suspend ``subject`` (idempotent); (the suspension, whether this call made it)."""
    check_text("subject", subject)
    reason = _reason(reason)
    event = Event(type="subject_suspended", actor=actor.name, at=auth.clock(), subject=subject,
                  ip=actor.ip, user_agent=actor.user_agent,
                  details={"reason": reason} if reason else {})
    suspension, changed, tokens = await auth.store.suspend_subject(subject, reason, event)
    if changed:
        await auth._changed(tokens)
    assert suspension is not None  # in the same transaction as the suspend
    return suspension, changed


async def resume(auth: TokenAuthority, actor: Actor, subject: str,
                 reason: str | None = None) -> bool:
    """End ``subject``'s suspension (idempotent); whether it was suspended."""
    check_text("subject", subject)
    reason = _reason(reason)
    event = Event(type="subject_resumed", actor=actor.name, at=auth.clock(), subject=subject,
                  ip=actor.ip, user_agent=actor.user_agent,
                  details={"reason": reason} if reason else {})
    changed, tokens = await auth.store.resume_subject(subject, event)
    if changed:
        await auth._changed(tokens)
    return changed


async def token_count(auth: TokenAuthority, subject: str) -> int:
    """How many working tokens have exactly ``subject``. Subjects are exact strings (no case
    folding, no Unicode normalisation, no trimming), so the suspend/resume answers show it: 0
    means the suspension matches no token (``José`` vs ``josé``, NFC vs NFD, a trailing space)."""
    check_text("subject", subject)
    return await auth.store.count_subject_tokens(subject, auth.clock())


async def status(auth: TokenAuthority, subject: str) -> Suspension | None:
    """The subject's suspension, None when it is not suspended."""
    check_text("subject", subject)
    return await auth.store.get_suspension(subject)


async def suspended(auth: TokenAuthority, limit: int = 50, cursor: str | None = None,
                    max_limit: int = MAX_PAGE) -> tuple[list[Suspension], str | None]:
    """Suspended subjects, most recently suspended first, paged by ``cursor``."""
    limit = check_limit(limit, max_limit)
    page = await auth.store.list_suspended(limit + 1, _decode(cursor))
    more = len(page) > limit
    page = page[:limit]
    return page, _encode(page[-1]) if more else None


def public_suspension(subject: str, s: Suspension | None) -> dict[str, Any]:
    """As the API and the CLI show it."""
    return {"subject": subject, "suspended": s is not None,
            "reason": s.reason if s else None,
            "suspended_at": rfc3339(s.suspended_at) if s else None,
            "actor": s.actor if s else None}


# Cursor: the last item's (suspended_at, subject), opaque to clients.
def _encode(s: Suspension) -> str:
    text = json.dumps([s.suspended_at.isoformat(), s.subject])
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode(cursor: str | None) -> tuple[datetime, str] | None:
    if not cursor:
        return None
    try:
        at, subject = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        when = datetime.fromisoformat(at)
        if not isinstance(subject, str) or when.tzinfo is None:
            raise ValueError(cursor)
        return when.astimezone(UTC), check_text("cursor", subject)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("cursor", "is not a cursor this API returned") from None
