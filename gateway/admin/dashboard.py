"""What the admin page's dashboard reads beyond /v1/stats: requests by outcome per hour
(``GET /v1/stats/outcomes``, admin only)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from gateway.admin import models as m
from gateway.admin.access import require_admin
from gateway.admin.api import CallerDep, audit_read, caller, known_query
from gateway.admin.deps import AuthorityDep, StoreDep
from gateway.outcomes import MAX_HOURS, hourly


class OutcomeHour(BaseModel):
    hour: datetime
    outcomes: dict[str, int]


class OutcomesOut(BaseModel):
    hours: list[OutcomeHour]


router = APIRouter(prefix="/v1", responses=m.ERRORS,
                   dependencies=[Depends(caller), Depends(known_query), Depends(audit_read)])


@router.get("/stats/outcomes", response_model=OutcomesOut, tags=["analytics"])
async def outcomes(who: CallerDep, auth: AuthorityDep, store: StoreDep,
                   hours: Annotated[int, Query(ge=1, le=MAX_HOURS)] = 24) -> dict[str, Any]:
    """Requests by outcome (`ok` or the refusal reason) per UTC hour, the last `hours` hours
    oldest first, the current hour included; summed over replicas, written with the usage
    batches (so up to `usage_flush_interval_s` behind)."""
    require_admin(who)
    return {"hours": await hourly(store, auth.clock().astimezone(UTC), hours)}
