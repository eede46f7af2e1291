"""Named limits and usage credits (SPEC §13): the values, their checks, and the credit keeper.

Named limits: a token's ``rate_limit`` may be a list ``[{"name", "limit", "window_s"}, ...]``;
a request must pass all of them (with the route's limit, in one limiter call).

Credits: ``{"remaining": N, "refill": {"amount": A, "interval": "day" | "month"} | null}``. Each
admitted request costs 1. A refill happens at 00:00 UTC (daily) or on the 1st at 00:00 UTC
(monthly) and sets the balance to ``amount`` (it does not add up).

How a balance is kept, exact and never over-granted (see ``CreditKeeper``):

    store      credits_remaining: the balance not yet handed out, and the period it belongs to
    counter    the allowance handed out (a *lease*, taken from the store in one write), in the
               limiter: in process (memory://) or one Redis hash shared by every replica,
               checked and decremented in the same atomic call (Lua script) as the limits

A lease is taken from the store before a credit of it is spent, so a crash (of a replica, or a
Redis that loses its data) loses at most the unspent part of one lease and never grants a
credit twice. A change of the credits by the API starts a new *generation*: a new counter key,
and leases of the old generation cannot be taken any more.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from gateway.config import RateLimit, parse_rate_limit
from gateway.errors import InvalidInput

if TYPE_CHECKING:
    from gateway.ratelimit import LimitResult, Limits

Interval = Literal["day", "month"]
INTERVALS: tuple[Interval, ...] = ("day", "month")
MAX_NAMED = 8
MAX_CREDITS = 10**12  # fits the store's BIGINT and a double's exact integers (Lua)
MAX_LEASE = 100
MAX_TRIES = 100  # leases one request may wait for before it is refused (crowds only)
NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_CLI_NAMED_RE = re.compile(r"\s*([^=\s]+)\s*=\s*(.+)")


@dataclass(frozen=True, slots=True)
class NamedLimit:
    name: str
    limit: RateLimit

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.limit.as_dict()}

    def __str__(self) -> str:
        return f"{self.name}={self.limit}"


@dataclass(frozen=True, slots=True)
class Credits:
    remaining: int
    refill_amount: int | None = None
    refill_interval: Interval | None = None
    period: int = 0  # the refill period ``remaining`` belongs to (see ``period_of``)
    generation: int = 0  # bumped by every change through the API

    def as_dict(self) -> dict[str, Any]:
        refill = None if self.refill_amount is None else {
            "amount": self.refill_amount, "interval": self.refill_interval}
        return {"remaining": self.remaining, "refill": refill}

    def __str__(self) -> str:
        refill = f", refill {self.refill_amount}/{self.refill_interval}" \
            if self.refill_amount is not None else ""
        return f"{self.remaining} remaining{refill}"


# --- refill periods --------------------------------------------------------------------------


def period_of(interval: Interval | None, now: datetime) -> int:
    """The refill period ``now`` lies in: days since year 1 (daily), months since year 0
    (monthly); 0 without a refill (the balance never comes back)."""
    if interval == "day":
        return (now.astimezone(UTC).date().toordinal())
    if interval == "month":
        utc = now.astimezone(UTC)
        return utc.year * 12 + utc.month - 1
    return 0


def next_refill(interval: Interval | None, now: datetime) -> datetime | None:
    """The next refill after ``now`` (00:00 UTC; the 1st of the month for monthly)."""
    utc = now.astimezone(UTC)
    if interval == "day":
        return datetime.fromordinal(utc.date().toordinal() + 1).replace(tzinfo=UTC)
    if interval == "month":
        year, month = divmod(utc.year * 12 + utc.month, 12)
        return datetime(year, month + 1, 1, tzinfo=UTC)
    return None


def lease_size(credits: Credits) -> int:
    """Credits taken from the store at once: a tenth of the balance (or refill), 1 to 100.
    A crash loses at most this many; a token spends with one store write per lease."""
    basis = max(credits.remaining, credits.refill_amount or 0)
    return max(1, min(MAX_LEASE, basis // 10))


# --- checks (API, CLI and authority alike): InvalidInput naming the field ------------------------


def _whole(value: object, field: str, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InvalidInput(field, f"must be a whole number from {minimum} to {maximum}")
    return value


def check_named_limits(value: object, max_rate: int, max_window_s: int) -> tuple[NamedLimit, ...]:
    """A list of ``{"name", "limit", "window_s"}`` (or NamedLimit): 1 to ``MAX_NAMED``, names
    unique and ``[a-z][a-z0-9_-]{0,31}``."""
    if not isinstance(value, list | tuple) or not value:
        raise InvalidInput("rate_limit", "a list of named limits must not be empty")
    if len(value) > MAX_NAMED:
        raise InvalidInput("rate_limit", f"at most {MAX_NAMED} named limits")
    out: list[NamedLimit] = []
    for i, item in enumerate(value):
        if isinstance(item, NamedLimit):
            name, limit = item.name, item.limit
        elif isinstance(item, Mapping) and set(item) == {"name", "limit", "window_s"}:
            name = item["name"]
            try:
                limit = parse_rate_limit({"limit": item["limit"], "window_s": item["window_s"]})
            except ValueError:
                raise InvalidInput(f"rate_limit[{i}]", "limit and window_s must be whole "
                                   "numbers >= 1") from None
        else:
            raise InvalidInput(f"rate_limit[{i}]", 'must be {"name", "limit", "window_s"}')
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise InvalidInput(f"rate_limit[{i}].name",
                               "must match [a-z][a-z0-9_-]{0,31}")
        if any(n.name == name for n in out):
            raise InvalidInput(f"rate_limit[{i}].name", f"duplicate name {name!r}")
        if limit.limit > max_rate or limit.window_s > max_window_s:
            raise InvalidInput(f"rate_limit[{i}]", f"must be at most {max_rate} requests in a "
                                                   f"window of at most {max_window_s}s")
        out.append(NamedLimit(name, limit))
    return tuple(out)


def check_credits(value: object, now: datetime) -> Credits | None:
    """``{"remaining": N, "refill": {"amount": A, "interval": "day" | "month"} | null}``."""
    if value is None:
        return None
    if isinstance(value, Credits):
        return value
    if not isinstance(value, Mapping) or not set(value) <= {"remaining", "refill"} \
            or "remaining" not in value:
        raise InvalidInput("credits", 'must be {"remaining": N, "refill": {...} or null}')
    remaining = _whole(value["remaining"], "credits.remaining", 0, MAX_CREDITS)
    refill = value.get("refill")
    if refill is None:
        return Credits(remaining)
    if not isinstance(refill, Mapping) or set(refill) != {"amount", "interval"}:
        raise InvalidInput("credits.refill", 'must be {"amount": N, "interval": "day" | '
                                             '"month"} or null')
    amount = _whole(refill["amount"], "credits.refill.amount", 1, MAX_CREDITS)
    interval = refill["interval"]
    if interval not in INTERVALS:
        raise InvalidInput("credits.refill.interval", "must be day or month")
    return Credits(remaining, amount, interval, period_of(interval, now))


# --- CLI forms ---------------------------------------------------------------------------------


def parse_cli_limits(texts: Sequence[str]) -> RateLimit | list[dict[str, Any]]:
    """``--rate-limit 100/minute`` (one) or ``--rate-limit burst=10/second --rate-limit
    hourly=1000/hour`` (named, each ``NAME=N/unit``). Raises ValueError naming what is wrong."""
    if len(texts) == 1 and "=" not in texts[0]:
        return parse_rate_limit(texts[0])
    out = []
    for text in texts:
        m = _CLI_NAMED_RE.fullmatch(text)
        if m is None:
            raise ValueError(f"{text!r}: several limits must each be NAME=N/unit, "
                             "e.g. burst=10/second")
        out.append({"name": m.group(1), **parse_rate_limit(m.group(2)).as_dict()})
    return out


def parse_refill(text: str) -> dict[str, Any]:
    """``--refill 1000/month`` -> ``{"amount": 1000, "interval": "month"}``."""
    amount, sep, interval = text.strip().partition("/")
    if not sep or not amount.isdigit() or int(amount) < 1 or interval not in INTERVALS:
        raise ValueError(f"{text!r} is not a refill like 1000/month (N/day or N/month, N >= 1)")
    return {"amount": int(amount), "interval": interval}


# --- the keeper: leases from the store, exhaustion remembered ---------------------------------


class CreditStore(Protocol):
    async def take_credits(self, token_id: str, generation: int, period: int,
                           want: int) -> int: ...


class CreditCounter(Protocol):
    async def add_credits(self, key: str, period: int, amount: int) -> None: ...


class QuotaLimiter(CreditCounter, Protocol):
    async def hit_quota(self, limits: Limits, credit: str | None,
                        period: int) -> LimitResult: ...


def counter_key(token_id: str, credits: Credits) -> str:
    """The counter's key: the token id as a Redis Cluster hash tag, so it shares a slot with
    the token's limit keys; the generation, so a change through the API starts afresh."""
    return f"{{{token_id}}}:{credits.generation}"


class CreditKeeper:
    """Refills a counter from the store when the limiter finds it empty: one store write per
    lease, one at a time per counter in this process; a balance found empty in the store is
    remembered until its next period (or generation), so an exhausted token costs no store
    work per request."""

    MAX_EXHAUSTED = 10_000

    def __init__(self, store: CreditStore, counter: CreditCounter) -> None:
        self._store = store
        self._counter = counter
        self._inflight: dict[str, asyncio.Future[bool]] = {}
        self._exhausted: dict[str, int] = {}  # counter key -> period found empty

    async def refill(self, token_id: str, credits: Credits, key: str, period: int) -> bool:
        """Move one lease from the store into the counter ``key``; False when the store has
        none left for this period (the caller refuses with credits_exhausted)."""
        if self._exhausted.get(key) == period:
            return False
        running = self._inflight.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            got = await self._store.take_credits(token_id, credits.generation, period,
                                                 lease_size(credits))
            if got > 0:
                await self._counter.add_credits(key, period, got)
            else:
                if len(self._exhausted) >= self.MAX_EXHAUSTED:
                    self._exhausted.clear()
                self._exhausted[key] = period
            future.set_result(got > 0)
            return got > 0
        except asyncio.CancelledError:  # this request went away: the waiters try themselves
            future.set_result(True)
            raise
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: waiters re-raise it, no "never retrieved" warning
            raise
        finally:
            del self._inflight[key]


async def charge(limiter: QuotaLimiter, keeper: CreditKeeper, token_id: str, limits: Limits,
                 credits: Credits | None, now: datetime) -> LimitResult:
    """Every limit, then one credit, in one atomic limiter call; a counter found empty is
    refilled with one lease from the store and the call repeated. ``result.short``: the
    credits are used up (nothing was charged). Raises StoreUnavailable from a lease."""
    key = counter_key(token_id, credits) if credits is not None else None
    period = period_of(credits.refill_interval, now) if credits is not None else 0
    result = await limiter.hit_quota(limits, key, period)
    # Refused for credits only when the store has none left: each turn of this loop took a
    # lease (others may spend it first), and the leases of a balance are finite.
    for _ in range(MAX_TRIES):
        if not result.short or credits is None or key is None:
            break
        if not await keeper.refill(token_id, credits, key, period):
            break
        result = await limiter.hit_quota(limits, key, period)
    return result


def retry_after_s(credits: Credits, now: datetime) -> int | None:
    """Seconds until the next refill (None without one: waiting does not help)."""
    at = next_refill(credits.refill_interval, now)
    return None if at is None else max(1, math.ceil((at - now).total_seconds()))
