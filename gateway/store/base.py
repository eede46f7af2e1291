"""The token store's vocabulary: records, events and the TokenStore protocol.

Every method is one transaction: it either happens whole (with its audit event) or not at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any, Literal, Protocol

from gateway.config import RateLimit
from gateway.credits import Credits, NamedLimit

Status = Literal["active", "revoked", "expired"]
STATUSES: tuple[Status, ...] = ("active", "revoked", "expired")


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: str
    subject: str
    name: str
    scopes: tuple[str, ...]
    family: str
    token_hash: str
    hint: str
    created_at: datetime
    rate_limit: RateLimit | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    last_used_ip: str | None = None
    usage_count: int = 0
    revoked_at: datetime | None = None  # may lie in the future: end of a rotation's grace
    revoked_reason: str | None = None
    rotated_from: str | None = None
    grace_until: datetime | None = None  # set once the token has been rotated out
    seq: int = field(default=0, compare=False)  # store position, for cursors
    # An imported token (SPEC §10): how its source system hashed it (sanctum | sha256 | bcrypt)
    # and that hash; None for authgate's own tokens.
    legacy_kind: str | None = None
    legacy_hash: str | None = None
    # Its subject is suspended (SPEC §7): read with the record (get_by_hash joins subjects), so
    # a cached copy carries it and the revocation bound covers suspension too.
    suspended: bool = False
    # SPEC §13: named limits (instead of rate_limit when set) and usage credits.
    named_limits: tuple[NamedLimit, ...] = ()
    credits: Credits | None = None

    def is_revoked(self, now: datetime) -> bool:
        return self.revoked_at is not None and self.revoked_at <= now

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def status(self, now: datetime) -> Status:
        if self.is_revoked(now):
            return "revoked"
        return "expired" if self.is_expired(now) else "active"

    def is_replay(self, now: datetime) -> bool:
        """Presented after its rotation grace ended: a copy of a secret that was replaced."""
        return (self.grace_until is not None and self.grace_until <= now
                and self.revoked_reason == ROTATED)


ROTATED = "rotated"
REPLAYED = "replay detected"  # a rotated-out token's reason once its replay was handled


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    actor: str
    at: datetime
    token_id: str | None = None
    subject: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    id: int | None = None

    def with_details(self, **extra: Any) -> Event:
        return replace(self, details={**self.details, **extra})


@dataclass(frozen=True, slots=True)
class TokenFilter:
    subject: str | None = None
    status: Status | None = None
    family: str | None = None
    expires_before: datetime | None = None  # an expiry set and before this time


@dataclass(frozen=True, slots=True)
class EventFilter:
    token_id: str | None = None
    subject: str | None = None
    type: str | None = None
    since: datetime | None = None


@dataclass(frozen=True, slots=True)
class Revoked:
    """A token a bulk revoke changed: enough for callers to drop it from caches."""
    id: str
    token_hash: str


@dataclass(frozen=True, slots=True)
class Suspension:
    """A suspended subject (SPEC §7): every token of it is refused until it is resumed."""
    subject: str
    suspended_at: datetime
    reason: str | None
    actor: str


@dataclass(frozen=True, slots=True)
class Stats:
    active: int
    revoked: int
    expired: int
    created_24h: int
    used_24h: int
    top_subjects: list[tuple[str, int]]

    @property
    def total(self) -> int:
        return self.active + self.revoked + self.expired


@dataclass(slots=True)
class Usage:
    """One token's requests since the last flush."""
    token_id: str
    count: int
    last_used_at: datetime
    last_used_ip: str | None
    per_day: dict[date, int] = field(default_factory=dict)
    ips: dict[str, list[Any]] = field(default_factory=dict)  # ip -> [last seen, count]


@dataclass(frozen=True, slots=True)
class LegacyImport:
    """One imported token: its record, plus for a bcrypt token the prefix it carries and the
    candidate key the gateway looks it up by until its first match."""
    record: TokenRecord
    prefix: str | None = None
    key: str | None = None


class LegacyStore(Protocol):
    """What imports and the legacy verifier need beyond TokenStore (gateway/imports/)."""
    async def import_tokens(self, kind: str, tokens: Sequence[LegacyImport], event: Event,
                            max_per_key: int | None = None) -> tuple[int, int]: ...
    async def legacy_prefixes(self) -> list[str]: ...
    async def legacy_candidates(self, keys: Sequence[str], now: datetime,
                                limit: int) -> list[TokenRecord]: ...
    async def legacy_rehash(self, token_id: str, token_hash: str) -> TokenRecord | None: ...
    async def get_by_hash(self, token_hash: str) -> TokenRecord | None: ...


class TokenStore(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def migrate(self) -> list[str]: ...
    async def ping(self) -> None: ...

    async def insert_token(self, record: TokenRecord, event: Event) -> None: ...
    async def get_token(self, token_id: str) -> TokenRecord | None: ...
    async def get_by_hash(self, token_hash: str) -> TokenRecord | None: ...
    async def list_tokens(self, flt: TokenFilter, now: datetime, limit: int,
                          before_seq: int | None = None) -> list[TokenRecord]: ...
    async def update_token(self, token_id: str, changes: Mapping[str, Any],
                           event: Event) -> TokenRecord | None: ...
    async def revoke_token(self, token_id: str, reason: str,
                           event: Event) -> tuple[TokenRecord | None, bool]: ...
    async def revoke_many(self, flt: TokenFilter, reason: str, event: Event) -> list[Revoked]: ...
    async def revoke_replayed(self, family: str, reason: str,
                              event: Event) -> list[Revoked] | None: ...
    async def delete_token(self, token_id: str, event: Event) -> TokenRecord | None: ...
    async def rotate_token(self, old_id: str, successor: TokenRecord, grace_until: datetime,
                           event: Event) -> TokenRecord | None: ...
    async def cleanup(self, before: datetime, event: Event) -> int: ...
    async def stats(self, now: datetime, top: int = 10) -> Stats: ...
    async def insert_events(self, events: Sequence[Event]) -> None: ...
    async def record_usage(self, usage: Sequence[Usage], events: Sequence[Event] = ()) -> None: ...
    async def daily_usage(self, token_id: str, since: date) -> list[tuple[date, int]]: ...
    async def recent_ips(self, token_id: str, limit: int = 10) -> list[tuple[str, datetime, int]]:
        ...
    async def list_events(self, flt: EventFilter, limit: int,
                          before_id: int | None = None) -> list[Event]: ...
    async def record_outcomes(self, rows: Sequence[tuple[datetime, str, int]],
                              prune_before: datetime | None = None) -> None: ...
    async def outcome_counts(self, since: datetime) -> list[tuple[datetime, str, int]]: ...

    # Subjects (SPEC §7 suspension, §3 creation_limit): gateway/subjects.py.
    async def insert_token_limited(self, record: TokenRecord, event: Event, limit: RateLimit,
                                   refused: Event) -> float | None: ...
    async def rotate_token_limited(self, old_id: str, successor: TokenRecord,
                                   grace_until: datetime, event: Event, limit: RateLimit,
                                   refused: Event) -> tuple[TokenRecord | None, float | None]:
        ...
    async def suspend_subject(self, subject: str, reason: str | None,
                              event: Event) -> tuple[Suspension | None, bool, list[Revoked]]: ...
    async def resume_subject(self, subject: str,
                             event: Event) -> tuple[bool, list[Revoked]]: ...
    async def get_suspension(self, subject: str) -> Suspension | None: ...
    async def count_subject_tokens(self, subject: str, now: datetime) -> int: ...
    async def list_suspended(self, limit: int,
                             after: tuple[datetime, str] | None = None) -> list[Suspension]: ...
    async def take_credits(self, token_id: str, generation: int, period: int,
                           want: int) -> int: ...
