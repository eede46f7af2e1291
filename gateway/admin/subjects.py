"""Subject suspension in the admin API (SPEC §7), and the creation limit's 429 (SPEC §3).

    POST /v1/subjects/{subject}/suspend     {reason?}   200 the subject's suspension + tokens
    POST /v1/subjects/{subject}/resume      {reason?}   200 the subject, not suspended + tokens
    GET  /v1/subjects/{subject}/suspension              200 the subject's suspension state
    GET  /v1/subjects/suspended   ?limit=&cursor=       suspended subjects, newest first

``{subject}`` may hold ``/`` (``team/carol``), sent as is or as ``%2F``: the routes take the
rest of the path up to the action (``{subject:path}``); ``/v1/subjects/suspended`` has no action
suffix, so it never reaches them.

Admin callers only: a self caller (authgate:self) gets 403, for its own subject too (suspension
is the operator's brake on a subject, not the subject's to lift). The logic is in
``gateway.subjects``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from gateway import subjects
from gateway.admin import models as m
from gateway.admin.access import require_admin
from gateway.admin.api import AuthDep, CallerDep, audit_read, caller, known_query
from gateway.admin.errors import error
from gateway.errors import CreationLimited

router = APIRouter(prefix="/v1", responses=m.ERRORS, tags=["subjects"],
                   dependencies=[Depends(caller), Depends(known_query), Depends(audit_read)])


class SubjectBody(m._Body):
    reason: m.Reason | None = None


class SuspensionOut(BaseModel):
    subject: str
    suspended: bool
    reason: str | None
    suspended_at: str | None
    actor: str | None


class SuspensionChange(SuspensionOut):
    tokens: int  # working tokens with exactly this subject: 0 means it matches none


class SuspensionPage(BaseModel):
    items: list[SuspensionOut]
    next_cursor: str | None


@router.post("/subjects/{subject:path}/suspend", response_model=SuspensionChange)
async def suspend_subject(subject: str, who: CallerDep, auth: AuthDep,
                          body: SubjectBody | None = None) -> dict[str, Any]:
    """Refuse every token of the subject (401 invalid_token) until it is resumed; nothing is
    revoked. Idempotent: suspending a suspended subject changes nothing."""
    require_admin(who)
    suspension, _ = await subjects.suspend(auth, who.actor, subject, body.reason if body else None)
    return {**subjects.public_suspension(subject, suspension),
            "tokens": await subjects.token_count(auth, subject)}


@router.post("/subjects/{subject:path}/resume", response_model=SuspensionChange)
async def resume_subject(subject: str, who: CallerDep, auth: AuthDep,
                         body: SubjectBody | None = None) -> dict[str, Any]:
    """End the subject's suspension: its tokens work again (idempotent)."""
    require_admin(who)
    await subjects.resume(auth, who.actor, subject, body.reason if body else None)
    return {**subjects.public_suspension(subject, None),
            "tokens": await subjects.token_count(auth, subject)}


@router.get("/subjects/suspended", response_model=SuspensionPage)
async def suspended_subjects(who: CallerDep, auth: AuthDep, limit: m.PAGE_LIMIT = 50,
                             cursor: Annotated[str | None, Query(max_length=1000)] = None
                             ) -> dict[str, Any]:
    """Suspended subjects, most recently suspended first."""
    require_admin(who)
    page, nxt = await subjects.suspended(auth, limit, cursor)
    return {"items": [subjects.public_suspension(s.subject, s) for s in page],
            "next_cursor": nxt}


@router.get("/subjects/{subject:path}/suspension", response_model=SuspensionOut)
async def subject_suspension(subject: str, who: CallerDep, auth: AuthDep) -> dict[str, Any]:
    """Whether the subject is suspended (any subject: one never suspended is not)."""
    require_admin(who)
    return subjects.public_suspension(subject, await subjects.status(auth, subject))


async def _creation_limited(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CreationLimited)
    return error(429, "rate_limited", str(exc), {"retry-after": str(exc.retry_after_s)})


def install(app: FastAPI) -> None:
    """The routes, and CreationLimited (a Refused, else a 409) as 429 with Retry-After."""
    app.add_exception_handler(CreationLimited, _creation_limited)
    app.include_router(router)
