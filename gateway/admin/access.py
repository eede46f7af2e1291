"""Who may call the admin API, and what a self-service caller may touch.

    bootstrap secret (admin_token)   everything          actor admin:bootstrap
    token with authgate:admin        everything          actor admin:<token id>
    token with authgate:self         its own subject     actor self:<token id>
                                     only; grants at most its own scopes, never authgate:*

A presented token goes through ``Pipeline.verify``: the same parse, lookup, revocation, expiry and
replay checks as the proxy, and refused credentials count against the caller's address.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from starlette.requests import Request

from gateway import tokens
from gateway.authority import Actor
from gateway.errors import NotFound
from gateway.pipeline import Pipeline, Refusal, extract_credential
from gateway.store import TokenRecord

ADMIN_SCOPE = "authgate:admin"
SELF_SCOPE = "authgate:self"


@dataclass(frozen=True, slots=True)
class Caller:
    actor: Actor
    admin: bool
    subject: str | None = None  # a self caller's subject
    scopes: tuple[str, ...] = ()


class Forbidden(Exception):
    """A 403: the caller is known but may not do this. ``scope`` names what was missing."""

    def __init__(self, description: str, scope: str = ADMIN_SCOPE) -> None:
        super().__init__(description)
        self.description = description
        self.scope = scope


async def authenticate(request: Request, pipeline: Pipeline, admin_token: str | None) -> Caller:
    """The caller behind ``Authorization: Bearer``; raises Refusal (401/429/503) or Forbidden."""
    ip = request.client.host if request.client else None
    raw = extract_credential(request.scope["headers"], None)
    user_agent = request.headers.get("user-agent", "")[:200] or None
    if admin_token is not None and tokens.secrets_equal(raw, admin_token):
        return Caller(Actor("admin:bootstrap", ip, user_agent), admin=True)
    record = await pipeline.verify(raw, ip)
    pipeline.usage.hit(record.id, ip, pipeline.clock())
    if ADMIN_SCOPE in record.scopes:
        return Caller(Actor(f"admin:{record.id}", ip, user_agent), admin=True)
    if SELF_SCOPE in record.scopes:
        return Caller(Actor(f"self:{record.id}", ip, user_agent), admin=False,
                      subject=record.subject, scopes=record.scopes)
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
            raise Forbidden(f"a token with {SELF_SCOPE} may not grant scope {scope}", scope)


def refusal_from_forbidden(e: Forbidden) -> Refusal:
    return Refusal(403, "insufficient_scope", e.description, scope=e.scope)
