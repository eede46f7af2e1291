"""The admin JSON API (SPEC §7): thin handlers over TokenAuthority.

Each handler authenticates the caller (``access``), applies the self-service rules, calls the
authority (which validates, writes the record and its audit event in one transaction, and drops
changed tokens from every cache) and returns a model. Errors are rendered in one place
(``gateway.admin.errors``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.admin import models as m
from gateway.admin.access import (
    Caller,
    authenticate,
    bounded,
    check_changes,
    check_create,
    check_grant,
    check_own,
    require_admin,
    subject_filter,
    visible_event,
)
from gateway.admin.deps import AuthorityDep, PipelineDep, SettingsDep, UsageDep
from gateway.admin.expiry import ExpiresBefore, expiry_cut
from gateway.admin.export import EVENT_COLUMNS, TOKEN_COLUMNS, csv_response, wants_csv
from gateway.authority import (
    Allow,
    TokenAuthority,
    public_event,
    public_record,
    rfc3339,
    stats_dict,
)
from gateway.errors import InvalidInput, NotFound, Refusal
from gateway.store import TokenRecord
from gateway.values import BAD_CHARS

ERRORS = m.ERRORS
CSV = {"content": {"text/csv": {"schema": {"type": "string"}}}}


def known_query(request: Request) -> None:
    """Unknown query parameters are refused, as unknown body fields are: a mistyped filter
    (``?subjet=alice``) must not silently widen a listing or an export."""
    route = request.scope.get("route")
    known = _query_names(route.dependant) if isinstance(route, APIRoute) else set()
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise InvalidInput(f"query.{unknown[0]}", "unknown parameter")


def _query_names(dependant: Any) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


_bearer = HTTPBearer(auto_error=False, description="An admin or self-service token, or the "
                     "bootstrap admin_token")


async def caller(request: Request, _: Annotated[HTTPAuthorizationCredentials | None,
                                                Depends(_bearer)],
                 pipeline: PipelineDep, settings: SettingsDep) -> Caller:
    """The authenticated caller (the bearer scheme is declared for the OpenAPI document)."""
    who = await authenticate(request, pipeline, settings.admin_token)
    request.state.caller = who  # for the audit of a later 403 (gateway.admin.errors)
    return who


CallerDep = Annotated[Caller, Depends(caller)]


async def audit_read(request: Request, who: CallerDep, usage: UsageDep) -> None:
    """Reads are audited too: counted in memory per (caller, call, token) and written with the
    usage batches as ``admin_read`` events, so a read costs no store write of its own. Changes
    write their own event in the authority, in the same transaction as the change."""
    route = request.scope.get("route")
    if request.method == "GET" or request.url.path == "/v1/introspect":
        call = f"{request.method} {route.path if isinstance(route, APIRoute) else '?'}"
        token_id = request.path_params.get("token_id")
        if token_id is not None and BAD_CHARS.search(token_id):
            token_id = None  # e.g. /v1/tokens/%00: no store could hold it (read still audited)
        usage.event("admin_read", call, who.actor.ip, token_id, who.subject,
                    actor=who.actor.name)


# The caller first: an unauthenticated request learns nothing but 401 (FastAPI runs each
# dependency once per request, so handlers asking for the caller get this same one).
router = APIRouter(prefix="/v1", responses=ERRORS,
                   dependencies=[Depends(caller), Depends(known_query), Depends(audit_read)])
AuthDep = AuthorityDep
Format = Annotated[Literal["json", "csv"] | None, Query(
    description="csv: the whole filtered list as CSV (also Accept: text/csv)")]


def _out(auth: TokenAuthority, record: TokenRecord, secret: str | None = None) -> dict[str, Any]:
    data = public_record(record, auth.clock())
    return data if secret is None else {**data, "token": secret}


async def _own(auth: TokenAuthority, who: Caller, token_id: str) -> TokenRecord:
    return check_own(who, await auth.get(token_id))


def _rate(value: Any) -> Any:
    if isinstance(value, list):  # named limits (SPEC §13)
        return [v.model_dump() for v in value]
    return value.model_dump() if isinstance(value, m.RateLimitIn) else value


def _credits(value: m.CreditsIn | None) -> dict[str, Any] | None:
    return None if value is None else value.model_dump()


def _presentable(auth: TokenAuthority, allow: Allow | None) -> Allow:
    """Before a create writes: the caller's bounds, then the response built from the record
    as it will be stored, so a token is never committed whose secret cannot be answered."""

    def check(before: TokenRecord | None, after: TokenRecord) -> None:
        if allow is not None:
            allow(before, after)
        m.TokenOut.model_validate(public_record(after, auth.clock()))

    return check


# --- tokens -------------------------------------------------------------------------------


@router.post("/tokens", status_code=201, response_model=m.TokenWithSecret, tags=["tokens"])
async def create_token(body: m.TokenCreate, who: CallerDep, auth: AuthDep) -> dict[str, Any]:
    """Create a token; the response holds its secret (`token`), shown this once."""
    subject_filter(who, body.subject)
    check_create(who)
    scopes = auth.scopes_for(body.scopes, body.role)
    check_grant(who, scopes)
    allow = bounded(who, "expires_in" if body.expires_in is not None else "expires_at")
    record, secret = await auth.create(
        who.actor, subject=body.subject, name=body.name, scopes=scopes,
        expires_in=body.expires_in, expires_at=body.expires_at,
        rate_limit=_rate(body.rate_limit), metadata=body.metadata,
        allow=_presentable(auth, allow), credits=_credits(body.credits))
    return _out(auth, record, secret)


@router.get("/tokens", response_model=m.TokenPage, tags=["tokens"],
            responses={200: CSV})
async def list_tokens(request: Request, who: CallerDep, auth: AuthDep,
                      subject: Annotated[str | None, Query(max_length=200)] = None,
                      status: Literal["active", "revoked", "expired"] | None = None,
                      family: Annotated[str | None, Query(max_length=200)] = None,
                      limit: m.PAGE_LIMIT = 50,
                      cursor: Annotated[str | None, Query(max_length=200)] = None,
                      format: Format = None,
                      expires_before: ExpiresBefore | None = None) -> Any:
    """Tokens, newest first; `?format=csv` exports every match. `expires_before` keeps tokens
    with an expiry before that time (`30d`: within 30 days from now)."""
    subject = subject_filter(who, subject)
    cut = expiry_cut(expires_before, auth.clock())
    if wants_csv(request, format):
        async def pages(after: str | None) -> tuple[list[dict[str, Any]], str | None]:
            page, nxt = await auth.list(subject=subject, status=status, family=family,
                                        limit=500, cursor=after, expires_before=cut)
            return [_out(auth, r) for r in page], nxt
        return await _export(pages, TOKEN_COLUMNS, "tokens.csv")
    page, nxt = await auth.list(subject=subject, status=status, family=family, limit=limit,
                                cursor=cursor, expires_before=cut)
    return {"items": [_out(auth, r) for r in page], "next_cursor": nxt}


@router.get("/tokens/{token_id}", response_model=m.TokenOut, tags=["tokens"])
async def get_token(token_id: str, who: CallerDep, auth: AuthDep) -> dict[str, Any]:
    return _out(auth, await _own(auth, who, token_id))


@router.patch("/tokens/{token_id}", response_model=m.TokenOut, tags=["tokens"])
async def update_token(token_id: str, body: m.TokenUpdate, who: CallerDep,
                       auth: AuthDep) -> dict[str, Any]:
    """Change name, scopes, rate_limit (null: the default), metadata or expires_at (null:
    never)."""
    await _own(auth, who, token_id)
    check_changes(who, body.model_fields_set)
    changes = {k: getattr(body, k) for k in body.model_fields_set}
    if "rate_limit" in changes:
        changes["rate_limit"] = _rate(changes["rate_limit"])
    if "credits" in changes:
        changes["credits"] = _credits(changes["credits"])
    return _out(auth, await auth.update(who.actor, token_id, allow=bounded(who), **changes))


@router.post("/tokens/{token_id}/revoke", response_model=m.TokenOut, tags=["tokens"])
async def revoke_token(token_id: str, who: CallerDep, auth: AuthDep,
                       body: m.RevokeBody | None = None) -> dict[str, Any]:
    """Revoke one token (idempotent: an already revoked token is returned unchanged). A self
    caller may revoke any token of its own subject, however wide."""
    await _own(auth, who, token_id)
    return _out(auth, await auth.revoke(who.actor, token_id, body.reason if body else None))


@router.delete("/tokens/{token_id}", status_code=204, response_class=Response, tags=["tokens"])
async def delete_token(token_id: str, who: CallerDep, auth: AuthDep) -> Response:
    await _own(auth, who, token_id)
    await auth.delete(who.actor, token_id)
    return Response(status_code=204)


@router.post("/tokens/{token_id}/rotate", status_code=201, response_model=m.TokenWithSecret,
             tags=["tokens"])
async def rotate_token(token_id: str, who: CallerDep, auth: AuthDep,
                       body: m.RotateBody | None = None) -> dict[str, Any]:
    """A new secret in the same family; the old one works for `grace_s` (default 1 h)."""
    await _own(auth, who, token_id)
    record, secret, _ = await auth.rotate(who.actor, token_id, (body or m.RotateBody()).grace_s,
                                          allow=bounded(who), not_after=who.ends_at)
    return _out(auth, record, secret)


@router.get("/tokens/{token_id}/usage", response_model=m.UsageOut, tags=["analytics"])
async def token_usage(token_id: str, who: CallerDep, auth: AuthDep,
                      days: Annotated[int, Query(ge=1, le=366)] = 30) -> dict[str, Any]:
    """Requests per UTC day for the last `days` days and the most recent client addresses."""
    record = await _own(auth, who, token_id)
    per_day, ips = await auth.usage(token_id, days)
    return {"token_id": token_id,
            "credits": record.credits.as_dict() if record.credits is not None else None,
            "days": [{"day": d, "requests": n} for d, n in per_day],
            "last_ips": [{"ip": ip, "last_seen_at": rfc3339(at), "requests": n}
                         for ip, at, n in ips]}


# --- bulk revocation ---------------------------------------------------------------------


@router.post("/subjects/{subject:path}/revoke", response_model=m.Revoked, tags=["revocation"])
async def revoke_subject(subject: str, who: CallerDep, auth: AuthDep,
                         body: m.RevokeBody | None = None) -> dict[str, int]:
    subject_filter(who, subject)
    return {"revoked": await auth.revoke_subject(who.actor, subject,
                                                 body.reason if body else None)}


@router.post("/families/{family}/revoke", response_model=m.Revoked, tags=["revocation"])
async def revoke_family(family: str, who: CallerDep, auth: AuthDep,
                        body: m.RevokeBody | None = None) -> dict[str, int]:
    if not who.admin:  # a family belongs to one subject: it must be the caller's
        members, _ = await auth.list(family=family, limit=1)
        if members and members[0].subject != who.subject:
            raise NotFound(f"family {family} not found")
    # The store revokes the caller's subject's members only, whatever changed in between.
    return {"revoked": await auth.revoke_family(who.actor, family, body.reason if body else None,
                                                subject=None if who.admin else who.subject)}


@router.post("/revoke-all", response_model=m.Revoked, tags=["revocation"])
async def revoke_all(body: m.RevokeAllBody, who: CallerDep, auth: AuthDep) -> dict[str, int]:
    """Emergency: revoke every active token (the bootstrap admin token keeps working)."""
    require_admin(who)
    return {"revoked": await auth.revoke_all(who.actor, body.reason)}


@router.post("/cleanup", response_model=m.Deleted, tags=["revocation"])
async def cleanup(who: CallerDep, auth: AuthDep,
                  body: m.CleanupBody | None = None) -> dict[str, int]:
    """Delete records revoked or expired longer ago than `older_than_s` (CLI: tokens cleanup)."""
    require_admin(who)
    return {"deleted": await auth.cleanup(who.actor, (body or m.CleanupBody()).older_than_s)}


# --- analytics and audit ----------------------------------------------------------------


@router.get("/stats", response_model=m.StatsOut, tags=["analytics"])
async def stats(who: CallerDep, auth: AuthDep) -> dict[str, Any]:
    require_admin(who)
    return stats_dict(await auth.stats())


@router.get("/events", response_model=m.EventPage, tags=["audit"], responses={200: CSV})
async def events(request: Request, who: CallerDep, auth: AuthDep,
                 token_id: Annotated[str | None, Query(max_length=200)] = None,
                 subject: Annotated[str | None, Query(max_length=200)] = None,
                 type: Annotated[str | None, Query(max_length=100)] = None,
                 since: m.Since | None = None,
                 limit: m.PAGE_LIMIT = 50,
                 cursor: Annotated[str | None, Query(max_length=200)] = None,
                 format: Format = None) -> Any:
    """The audit log, newest first; `?format=csv` exports every match."""
    subject = subject_filter(who, subject)
    filters: dict[str, Any] = {"token_id": token_id, "subject": subject, "type": type,
                               "since": since}
    if wants_csv(request, format):
        async def pages(after: str | None) -> tuple[list[dict[str, Any]], str | None]:
            page, nxt = await auth.events(**filters, limit=500, cursor=after)
            return [visible_event(who, public_event(e)) for e in page], nxt
        return await _export(pages, EVENT_COLUMNS, "events.csv")
    page, nxt = await auth.events(**filters, limit=limit, cursor=cursor)
    return {"items": [visible_event(who, public_event(e)) for e in page], "next_cursor": nxt}


Pages = Callable[[str | None], Awaitable[tuple[list[dict[str, Any]], str | None]]]


async def _export(pages: Pages, columns: tuple[str, ...], filename: str) -> Response:
    """Every page as CSV. The first page is read before the response starts, so a store that is
    down is a clean 503 rather than a 200 cut short."""
    first = await pages(None)

    async def rows() -> AsyncIterator[dict[str, Any]]:
        page, cursor = first
        while True:
            for row in page:
                yield row
            if cursor is None:
                return
            page, cursor = await pages(cursor)

    return csv_response(rows(), columns, filename)


# --- introspection --------------------------------------------------------------------------


@router.post("/introspect", response_model=m.Introspection, response_model_exclude_none=True,
             tags=["introspection"])
async def introspect(who: CallerDep, pipeline: PipelineDep,
                     token: Annotated[str, Form(max_length=512)],
                     token_type_hint: Annotated[str | None, Form(
                         max_length=64, description="Accepted and ignored (RFC 7662 §2.1)")]
                     = None) -> dict[str, Any]:
    """RFC 7662: the same checks as the proxy. A self caller learns only of its own subject's
    tokens; anything else is `{"active": false}`."""
    try:
        record = await pipeline.verify(token, None, count_failures=False)
    except Refusal as refusal:
        if refusal.status == 503:
            raise
        return {"active": False}
    if not who.admin and record.subject != who.subject:
        return {"active": False}
    return {"active": True, "scope": " ".join(record.scopes), "sub": record.subject,
            "exp": _epoch(record.expires_at), "iat": _epoch(record.created_at),
            "jti": record.id, "token_type": "Bearer", "client_id": record.name}


def _epoch(dt: datetime | None) -> int | None:
    return None if dt is None else int(dt.astimezone(UTC).timestamp())
