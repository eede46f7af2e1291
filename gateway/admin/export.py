"""CSV export of the token list and the audit log, streamed page by page (bounded memory).

Cells that a spreadsheet would run as a formula (leading ``= + - @``, tab or CR) are prefixed
with ``'``: names and subjects are user-supplied, and an export is often opened in Excel.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse

from gateway.config import RateLimit

TOKEN_COLUMNS = ("id", "subject", "name", "status", "scopes", "family", "hint", "rate_limit",
                 "metadata", "created_at", "expires_at", "last_used_at", "last_used_ip",
                 "usage_count", "revoked_at", "revoked_reason", "rotated_from", "grace_until",
                 "credits_remaining", "credits_refill")
EVENT_COLUMNS = ("id", "at", "type", "token_id", "subject", "actor", "ip", "user_agent",
                 "details")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def wants_csv(request: Request, format: str | None) -> bool:
    if format is not None:
        return format == "csv"
    return "text/csv" in request.headers.get("accept", "")


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        value = " ".join(map(str, value))
    elif isinstance(value, dict):
        value = json.dumps(value, sort_keys=True) if value else ""
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _rate(value: Any) -> Any:
    if isinstance(value, list):  # named limits: "burst=10/second hourly=1000/hour"
        return " ".join(f"{v['name']}={RateLimit(v['limit'], v['window_s'])}" for v in value)
    return str(RateLimit(**value)) if isinstance(value, dict) else value  # "100/minute"


def _credit_cells(credits: dict[str, Any] | None) -> dict[str, Any]:
    """The record's ``credits`` as two cells: the balance, and the refill as "1000/month"."""
    if not credits:
        return {"credits_remaining": None, "credits_refill": None}
    refill = credits["refill"]
    return {"credits_remaining": credits["remaining"],
            "credits_refill": f"{refill['amount']}/{refill['interval']}" if refill else None}


async def _lines(rows: AsyncIterator[dict[str, Any]], columns: tuple[str, ...]
                 ) -> AsyncIterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    count = 0
    async for row in rows:
        if "rate_limit" in row:
            row = {**row, "rate_limit": _rate(row["rate_limit"])}
        if "credits" in row:
            row = {**row, **_credit_cells(row["credits"])}
        writer.writerow([cell(row.get(c)) for c in columns])
        count += 1
        if count % 200 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def csv_response(rows: AsyncIterator[dict[str, Any]], columns: tuple[str, ...],
                 filename: str) -> StreamingResponse:
    return StreamingResponse(_lines(rows, columns), media_type="text/csv; charset=utf-8",
                             headers={"content-disposition": f'attachment; filename="{filename}"'})
