"""The alerts endpoints (SPEC §7, §12): ``GET /v1/alerts`` and ``POST /v1/alerts/test``.

Listing reads the store (alerts are kept whether or not this replica's ``alerts`` is set); a
self caller (``authgate:self``) sees its own subject's alerts only, as with events, and without
the addresses in them (``ip`` and ``details.ips`` are other clients' addresses). Another
subject (``?subject=``) is a 403. ``alerts/test`` is admin only; 404 naming ``alerts`` when it is
not configured.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi import Query as Q
from pydantic import BaseModel

from gateway.admin import models as m
from gateway.admin.access import Caller, require_admin, subject_filter
from gateway.admin.api import CallerDep, audit_read, caller, known_query
from gateway.admin.deps import services_of
from gateway.errors import NotFound
from gateway.monitor.model import KINDS, Alert
from gateway.monitor.repo import AlertFilter, AlertStore
from gateway.values import decode_cursor, encode_cursor

Kind = Literal["token_expiring", "rotation_due", "inactive_token_revoked", "multi_ip",
               "rapid_use", "failed_auth", "rate_limit_breach", "creation_rate",
               "token_replay_detected", "store_unreachable"]
assert set(Kind.__args__) == set(KINDS)  # type: ignore[attr-defined]


class AlertOut(BaseModel):
    id: str
    kind: str
    severity: Literal["critical", "high", "medium", "low", "info"]
    message: str
    raised_at: datetime
    token_id: str | None
    subject: str | None
    ip: str | None
    threshold: str | None
    window: str | None
    details: dict[str, Any]


class AlertPage(BaseModel):
    items: list[AlertOut]
    next_cursor: str | None


class ChannelResult(BaseModel):
    channel: str  # type:fingerprint, never the URL
    type: str
    result: str   # "ok" or the error


class TestResults(BaseModel):
    channels: list[ChannelResult]


router = APIRouter(prefix="/v1", responses=m.ERRORS, tags=["alerts"],
                   dependencies=[Depends(caller), Depends(known_query), Depends(audit_read)])


def visible_alert(who: Caller, alert: Alert) -> dict[str, Any]:
    data = alert.public()
    if not who.admin:
        data["ip"] = None
        data["details"] = {k: v for k, v in data["details"].items() if k != "ips"}
    return data


@router.get("/alerts", response_model=AlertPage)
async def list_alerts(request: Request, who: CallerDep,
                      kind: Kind | None = None,
                      token_id: Annotated[str | None, Q(max_length=200)] = None,
                      subject: Annotated[str | None, Q(max_length=200)] = None,
                      since: m.Since | None = None,
                      limit: m.PAGE_LIMIT = 50,
                      cursor: Annotated[str | None, Q(max_length=200)] = None) -> dict[str, Any]:
    """Raised alerts, newest first."""
    subject = subject_filter(who, subject)
    store = AlertStore(services_of(request).store)  # type: ignore[arg-type]
    flt = AlertFilter(kind=kind, token_id=token_id, subject=subject,
                      since=since)  # type: ignore[arg-type]
    page = await store.list_alerts(flt, limit + 1, decode_cursor(cursor))
    more = len(page) > limit
    page = page[:limit]
    return {"items": [visible_alert(who, a) for a in page],
            "next_cursor": encode_cursor(page[-1].seq) if more else None}


@router.post("/alerts/test", response_model=TestResults)
async def test_alerts(request: Request, who: CallerDep) -> dict[str, Any]:
    """Send a test notification to every configured channel now; per channel `ok` or the
    error."""
    require_admin(who)
    monitor = getattr(services_of(request), "monitor", None)
    if monitor is None:
        raise NotFound("alerts is not configured (the alerts key)")
    return {"channels": await monitor.test_channels()}
