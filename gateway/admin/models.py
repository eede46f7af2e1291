"""The admin API's request and response models: the single source of ``/openapi.json``.

Requests refuse unknown fields (422) and carry the same limits the authority enforces, so the
schema tells clients (and the API fuzzer) what is valid. Responses are validated on the way out,
so the document cannot drift from what the server sends.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
)

from gateway.credits import MAX_CREDITS, MAX_NAMED
from gateway.values import (
    MAX_GRACE_S,
    MAX_LIFETIME_S,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_PAGE,
    MAX_RATE,
    MAX_TEXT,
    MAX_WINDOW_S,
)


def _utc(value: datetime) -> datetime:
    """Normalise to UTC here, so an offset that cannot be expressed in UTC is a 422, not a 500."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range") from None


def _not_a_number(value: object) -> object:
    """A time is RFC 3339 text: a bare number (which pydantic reads as a Unix timestamp) is
    a type error, as it is for ``since``."""
    if isinstance(value, int | float):
        raise ValueError("must be an RFC 3339 time with an offset, not a number")
    return value


def _true(value: bool) -> bool:
    if value is not True:
        raise ValueError("must be true")
    return value


def _since(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise ValueError("is not a date or an RFC 3339 time") from None
    return _utc(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))


UtcDatetime = Annotated[AwareDatetime, BeforeValidator(_not_a_number), AfterValidator(_utc)]
# A whole UTC day (2026-01-01, as the CLI's --since) or an RFC 3339 time with its offset; not a
# bare number, which pydantic would otherwise read as a Unix timestamp.
Since = Annotated[str, Field(pattern=(
    r"^\d{4}-\d{2}-\d{2}([Tt]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([Zz]|[+-]\d{2}:\d{2}))?$")),
    AfterValidator(_since)]
# Integers in bodies are strict: true/false or "5" are type errors, not 1/0/5.
Int = Annotated[int, Field(strict=True)]
# Non-empty, no control characters (C0, DEL, C1) or line separators (the authority also
# refuses whitespace-only text and lone surrogates).
_PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]+$"
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT, pattern=_PRINTABLE)]
Reason = Annotated[str, Field(min_length=1, max_length=500, pattern=_PRINTABLE)]
Scope = Annotated[str, Field(max_length=128, pattern=(
    r"^(\*|[A-Za-z0-9._/-]+(:[A-Za-z0-9._/-]+)*(:\*)?)$"))]
RateText = Annotated[str, Field(pattern=r"^\d{1,10}/(second|minute|hour|day)$",
                                examples=["100/minute"], description=f"N <= {MAX_RATE}")]
DurationText = Annotated[str, Field(pattern=r"^\d{1,9}[smhd]$", examples=["30d"])]
Metadata = Annotated[dict[str, Any], Field(
    description=f"A JSON object of at most {MAX_METADATA_BYTES} bytes and "
                f"{MAX_METADATA_DEPTH} levels of nesting.")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RateLimitIn(_Body):
    limit: Int = Field(ge=1, le=MAX_RATE)
    window_s: Int = Field(ge=1, le=MAX_WINDOW_S)


class NamedLimitIn(_Body):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$", examples=["burst"])]
    limit: Int = Field(ge=1, le=MAX_RATE)
    window_s: Int = Field(ge=1, le=MAX_WINDOW_S)


NamedLimits = Annotated[list[NamedLimitIn], Field(
    min_length=1, max_length=MAX_NAMED,
    description="Named limits (SPEC §13): a request must pass all of them; names unique.")]


def _rate_form(value: object) -> str:
    return "list" if isinstance(value, list) else "text" if isinstance(value, str) else "object"


# One of the three forms, chosen by the JSON type, so an error names the form that was meant
# (``rate_limit.list.1.limit: ...``), not the first of three failed guesses.
RateLimitBody = Annotated[
    Annotated[RateText, Tag("text")] | Annotated[RateLimitIn, Tag("object")]
    | Annotated[NamedLimits, Tag("list")],
    Discriminator(_rate_form)]


class RefillIn(_Body):
    amount: Int = Field(ge=1, le=MAX_CREDITS)
    interval: Literal["day", "month"]


class CreditsIn(_Body):
    remaining: Int = Field(ge=0, le=MAX_CREDITS)
    refill: RefillIn | None = None


class TokenCreate(_Body):
    subject: Text
    name: Text
    scopes: list[Scope] = Field(default_factory=list, max_length=64)
    role: Text | None = None
    expires_in: Annotated[Int, Field(ge=1, le=MAX_LIFETIME_S)] | DurationText | None = Field(
        None, description="Seconds, or a duration like 30d, 12h, 90m, 45s.")
    expires_at: UtcDatetime | None = None
    rate_limit: RateLimitBody | None = None
    metadata: Metadata | None = None
    credits: CreditsIn | None = None


# The default of a field that may be left out but not sent as null (its type has no None):
# only fields sent are applied (``model_fields_set``), so it is never read.
_ABSENT: Any = None


class TokenUpdate(_Body):
    """Only the fields sent change. null means "the default" for rate_limit and "never" for
    expires_at; name, scopes and metadata cannot be null."""
    name: Text = Field(default=_ABSENT)
    scopes: list[Scope] = Field(default=_ABSENT, max_length=64)
    rate_limit: RateLimitBody | None = None
    metadata: Metadata = Field(default=_ABSENT)
    expires_at: UtcDatetime | None = None
    credits: CreditsIn | None = Field(default=None, description=(
        "A new balance (and refill), or null for no credits."))


class RevokeBody(_Body):
    reason: Reason | None = None


class RotateBody(_Body):
    grace_s: Int = Field(default=3600, ge=0, le=MAX_GRACE_S)


class RevokeAllBody(_Body):
    # JSON true only: a lax Literal[True] took 1 and 1.0 for true (and revoked every token).
    confirm: Annotated[StrictBool, AfterValidator(_true)] = Field(
        description="Must be JSON true: every active token is revoked.",
        json_schema_extra={"const": True})
    reason: Reason


class CleanupBody(_Body):
    older_than_s: Int = Field(default=30 * 86400, ge=0, le=MAX_LIFETIME_S)


# --- responses ----------------------------------------------------------------------------


class Error(BaseModel):
    error: str
    error_description: str


class RateLimitOut(BaseModel):
    limit: int
    window_s: int


class NamedLimitOut(BaseModel):
    name: str
    limit: int
    window_s: int


class RefillOut(BaseModel):
    amount: int
    interval: Literal["day", "month"]


class CreditsOut(BaseModel):
    remaining: int
    refill: RefillOut | None


class TokenOut(BaseModel):
    id: str
    subject: str
    name: str
    scopes: list[str]
    family: str
    hint: str
    rate_limit: RateLimitOut | list[NamedLimitOut] | None
    metadata: dict[str, Any]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    last_used_ip: str | None
    usage_count: int
    revoked_at: datetime | None
    revoked_reason: str | None
    rotated_from: str | None
    grace_until: datetime | None
    status: Literal["active", "revoked", "expired"]
    credits: CreditsOut | None = None


class TokenWithSecret(TokenOut):
    token: str = Field(description="The secret: shown once, never stored.")


class TokenPage(BaseModel):
    items: list[TokenOut]
    next_cursor: str | None


class Revoked(BaseModel):
    revoked: int


class Deleted(BaseModel):
    deleted: int


class EventOut(BaseModel):
    id: int
    type: str
    token_id: str | None
    subject: str | None
    actor: str
    ip: str | None
    user_agent: str | None
    at: datetime
    details: dict[str, Any]


class EventPage(BaseModel):
    items: list[EventOut]
    next_cursor: str | None


class SubjectCount(BaseModel):
    subject: str
    active: int


class StatsOut(BaseModel):
    total: int
    active: int
    revoked: int
    expired: int
    created_24h: int
    used_24h: int
    top_subjects: list[SubjectCount]


class DayCount(BaseModel):
    day: date
    requests: int


class IpSeen(BaseModel):
    ip: str
    last_seen_at: datetime
    requests: int


class UsageOut(BaseModel):
    token_id: str
    days: list[DayCount] = Field(description="Requests per UTC day, oldest first.")
    last_ips: list[IpSeen] = Field(description="Addresses seen most recently first.")
    credits: CreditsOut | None = Field(default=None, description=(
        "The usage credits (SPEC §13): the balance not yet handed to the gateway's counters."))


class Introspection(BaseModel):
    """RFC 7662 §2.2; an inactive token is just ``{"active": false}``."""
    active: bool
    scope: str | None = None
    sub: str | None = None
    exp: int | None = None
    iat: int | None = None
    jti: str | None = None
    token_type: str | None = None
    client_id: str | None = None


class Health(BaseModel):
    status: str
    store: str | None = None
    cache: str | None = None


PAGE_LIMIT = Annotated[int, Field(ge=1, le=MAX_PAGE)]


# The error responses the OpenAPI document lists (every one an ``Error`` body).
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Error, "description": text} for code, text in (
        (400, "Malformed request"), (401, "No or invalid credential"),
        (403, "Not allowed for this caller"), (404, "Unknown token"),
        (409, "Refused by the token's state"), (413, "Body too large"),
        (415, "Unsupported media type"), (422, "Invalid field (named in the description)"),
        (429, "Too many refused credentials"), (503, "Store unreachable"))}
