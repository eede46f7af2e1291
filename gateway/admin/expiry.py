"""The ``expires_before`` filter of ``GET /v1/tokens`` (the dashboard's "expiring within 30
days"): an RFC 3339 time, a UTC date, or a duration from now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import AfterValidator, Field

from gateway.config import parse_duration
from gateway.values import MAX_LIFETIME_S


def _expires_before(value: str) -> datetime | timedelta:
    """``30d`` / ``12h`` / seconds (from now), or a date or RFC 3339 time (as ``since``)."""
    try:
        seconds = parse_duration(value)
    except ValueError:
        return _time(value)
    if seconds > MAX_LIFETIME_S:
        raise ValueError(f"is longer than {MAX_LIFETIME_S} seconds")
    return timedelta(seconds=seconds)


def _time(value: str) -> datetime:
    bad = "is not a duration (30d, 12h, seconds), a date or an RFC 3339 time with its offset"
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise ValueError(bad) from None
    if parsed.tzinfo is None:
        if len(value) != 10:  # a bare date is a UTC day; a bare time is ambiguous
            raise ValueError(bad)
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range") from None


ExpiresBefore = Annotated[str, Field(max_length=40, description=(
    "Tokens expiring before this time: an RFC 3339 time, a date, or a duration from now "
    "(30d, 12h, seconds)")), AfterValidator(_expires_before)]


def expiry_cut(value: object, now: datetime) -> datetime | None:
    """The parameter as validated (typed ``str`` for FastAPI) -> the cut-off time."""
    if isinstance(value, timedelta):
        return now + value
    return value if isinstance(value, datetime) else None
