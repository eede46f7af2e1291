"""Who may call the admin API, and what a self-service caller may touch.

    bootstrap secret (admin_token)   everything          actor admin:bootstrap
    token with authgate:admin        everything          actor admin:<token id>
    token with authgate:self         its own subject     actor self:<token id>
                                     only, within its own bounds (below)

A presented token goes through ``Pipeline.verify``: the same parse, lookup, revocation, expiry and
replay checks as the proxy, and refused credentials count against the caller's address. The
client address is ``Pipeline.client_address`` (trusted proxies), and an address over
``failed_auth_limit`` is refused by ``Pipeline.brake`` before anything, the bootstrap secret
included, is compared.

Self-service bounds (SPEC §7), all judged here by ``bounded``: a self caller may create, change
(PATCH) or rotate only a token that is no wider, no longer-lived and no faster than itself, and
the token it would leave behind must be within the same bounds:

    wider        a scope the caller's own scopes do not cover (authgate:* only by name); a
                 self caller never grants an authgate:* scope it did not find on the token
    longer-lived ends later: expires_at, or the end of a rotation grace; no expiry = never ends
    faster       admits more than the caller in some window: a limit of N per W admits a burst of
                 N, then N/W a second, so a token is faster when its burst or its rate is higher
                 (its own limit, else default_rate_limit); no limit at all = infinitely fast.
                 Named limits (SPEC §13): for each of the caller's limits, the token must have
                 one no faster than it by that rule (so it is held wherever the caller is)
    more credits a higher balance than the caller's, or a refill the caller lacks, of a higher
                 amount or more often; a caller without credits may grant any

Revoking and deleting a token of its own subject (one, a family, or all of them) is always
allowed, however wide the token: SPEC forbids a self caller to "rotate, change or re-limit" a
wider token, and taking a token away grants nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from typing import Any

from starlette.requests import Request

from gateway import tokens
from gateway.authority import Actor, Allow, rfc3339
from gateway.config import RateLimit
from gateway.credits import Credits
from gateway.errors import ADMIN_SCOPE, Forbidden, NotFound, Refusal
from gateway.pipeline import Pipeline, extract_credential
from gateway.store import TokenRecord

SELF_SCOPE = "authgate:self"


@dataclass(frozen=True, slots=True)
class Caller:
    actor: Actor
    admin: bool
    subject: str | None = None  # a self caller's subject
    scopes: tuple[str, ...] = ()
    ends_at: datetime | None = None  # a self caller's end (expiry or grace end); None: never
    rate: RateLimit | None = None  # a self caller's effective rate limit; None: unlimited
    default_rate: RateLimit | None = None  # default_rate_limit, for tokens without their own
    limits: tuple[RateLimit, ...] = ()  # a self caller's limits, named or one; () unlimited
    credits: Credits | None = None  # a self caller's credits; None: unlimited


async def authenticate(request: Request, pipeline: Pipeline, admin_token: str | None) -> Caller:
    """The caller behind ``Authorization: Bearer``; raises Refusal (401/429/503) or Forbidden."""
    peer = request.client.host if request.client else None
    ip = pipeline.client_address(peer, request.scope["headers"])
    pipeline.brake(ip)  # a blocked address learns nothing, not even a right bootstrap guess
    try:
        raw = extract_credential(request.scope["headers"], None)
    except Refusal as refusal:  # every 401 is an auth_failed event (SPEC §8)
        pipeline.usage.event("auth_failed", "missing", ip)
        raise refusal from None
    user_agent = request.headers.get("user-agent", "")[:200] or None
    if admin_token is not None and tokens.secrets_equal(raw, admin_token):
        return Caller(Actor("admin:bootstrap", ip, user_agent), admin=True)
    record = await pipeline.verify(raw, ip)
    pipeline.usage.hit(record.id, ip, pipeline.clock())
    if ADMIN_SCOPE in record.scopes:
        return Caller(Actor(f"admin:{record.id}", ip, user_agent), admin=True)
    if SELF_SCOPE in record.scopes:
        default = pipeline.settings.default_rate_limit
        return Caller(Actor(f"self:{record.id}", ip, user_agent), admin=False,
                      subject=record.subject, scopes=record.scopes, ends_at=_end(record),
                      rate=record.rate_limit or default, default_rate=default,
                      limits=_limits(record, default), credits=record.credits)
    pipeline.usage.event("access_denied", "admin_api", ip, record.id, record.subject)
    raise Forbidden(f"the token needs scope {ADMIN_SCOPE} or {SELF_SCOPE}")


def require_admin(caller: Caller) -> None:
    if not caller.admin:
        raise Forbidden(f"this call needs scope {ADMIN_SCOPE}")


def subject_filter(caller: Caller, subject: str | None) -> str | None:
    """The subject a listing is limited to: a self caller sees its own only (another: 403)."""
    if caller.admin:
        return subject
    if subject is not None and subject != caller.subject:
        raise Forbidden(f"a token with {SELF_SCOPE} may only act on its own subject")
    return caller.subject


def check_own(caller: Caller, record: TokenRecord) -> TokenRecord:
    """Another subject's token is a 404 to a self caller: existence is not revealed."""
    if not caller.admin and record.subject != caller.subject:
        raise NotFound(f"token {record.id} not found")
    return record


def check_grant(caller: Caller, scopes: Iterable[str]) -> None:
    """A self caller may grant only scopes it holds itself, and never an authgate:* scope."""
    if caller.admin:
        return
    for scope in scopes:
        if scope.startswith(tokens.RESERVED_SCOPE_PREFIX) or tokens.has_scopes(
                caller.scopes, [scope]) is not None:
            raise Forbidden(f"scopes: a token with {SELF_SCOPE} may not grant scope {scope}",
                            scope)


def bounded(caller: Caller, expiry_field: str = "expires_at") -> Allow | None:
    """The self-service veto the authority runs before a create, PATCH or rotation writes:
    the token as it was (None for a create) and as it would be stored must both be within the
    caller's bounds. ``expiry_field`` is the body field a refused lifetime is named by."""
    if caller.admin:
        return None

    def allow(before: TokenRecord | None, after: TokenRecord) -> None:
        if before is not None:
            _within(caller, before, "the token", expiry_field)
        check_grant(caller, [s for s in after.scopes if before is None or s not in before.scopes])
        _within(caller, after, "the result", expiry_field)

    return allow


def _within(caller: Caller, record: TokenRecord, what: str, expiry_field: str) -> None:
    who = f"a token with {SELF_SCOPE} may not manage a token"
    missing = tokens.has_scopes(caller.scopes, record.scopes)
    if missing is not None:
        raise Forbidden(f"scopes: {who} wider than itself ({what} has {missing})")
    end = _end(record)
    if caller.ends_at is not None and (end is None or end > caller.ends_at):
        raise Forbidden(f"{expiry_field}: {who} that outlives it ({what} "
                        f"{'never expires' if end is None else 'ends ' + str(rfc3339(end))}, "
                        f"the caller {rfc3339(caller.ends_at)})")
    limits = _limits(record, caller.default_rate)
    if _faster_than_all(limits, caller.limits):
        raise Forbidden(f"rate_limit: {who} faster than itself ({what} "
                        f"{_describe(limits)}, the caller {_describe(caller.limits)})")
    if _more_credits(record.credits, caller.credits):
        raise Forbidden(f"credits: {who} with more credits than itself ({what} "
                        f"{record.credits or 'unlimited'}, the caller {caller.credits})")


def _limits(record: TokenRecord, default: RateLimit | None) -> tuple[RateLimit, ...]:
    """What limits a token's requests: its named limits, else its own or the default."""
    if record.named_limits:
        return tuple(n.limit for n in record.named_limits)
    own = record.rate_limit or default
    return () if own is None else (own,)


def _describe(limits: tuple[RateLimit, ...]) -> str:
    return ", ".join(map(str, limits)) if limits else "is unlimited"


def _faster_than_all(limits: tuple[RateLimit, ...], than: tuple[RateLimit, ...]) -> bool:
    """Named limits (SPEC §13): a token is no faster than the caller when, for every limit of
    the caller, it has a limit of its own that is no faster than that one (the N/W rule of
    ``_faster``): then it is held wherever the caller is held. One limit each: ``_faster``."""
    return any(all(_faster(mine, theirs) for mine in limits) for theirs in than)


def _more_credits(credits: Credits | None, than: Credits | None) -> bool:
    """More credits than the caller: a higher balance, or a refill the caller lacks, of a
    higher amount, or more often (daily where the caller's is monthly)."""
    if than is None:
        return False
    if credits is None or credits.remaining > than.remaining:
        return True
    if credits.refill_amount is None:
        return False
    return (than.refill_amount is None or credits.refill_amount > than.refill_amount
            or (credits.refill_interval == "day" and than.refill_interval == "month"))


def _end(record: TokenRecord) -> datetime | None:
    """When a token stops working: its expiry, or the end of its rotation grace if sooner."""
    ends = [t for t in (record.expires_at, record.grace_until) if t is not None]
    return min(ends) if ends else None


def _faster(rate: RateLimit | None, than: RateLimit | None) -> bool:
    """Does ``rate`` admit more than ``than`` in some window? A limit of N per W admits a burst
    of N at once and N/W a second after it (SPEC §3), so both must be no higher."""
    if than is None:
        return False
    if rate is None:
        return True
    return rate.limit > than.limit or Fraction(rate.limit, rate.window_s) > Fraction(
        than.limit, than.window_s)


def visible_event(caller: Caller, event: dict[str, Any]) -> dict[str, Any]:
    """A self caller sees its subject's events, but not other actors' addresses and user
    agents (another client of the subject, an admin, the gateway's refusals)."""
    if caller.admin or event["actor"] == caller.actor.name:
        return event
    return {**event, "ip": None, "user_agent": None}


def refusal_from_forbidden(e: Forbidden) -> Refusal:
    return Refusal(403, "insufficient_scope", e.description, scope=e.scope)
