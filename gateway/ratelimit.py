"""Rate limiters: GCRA with a burst of N, per key, several limits checked atomically together.

``RedisLimiter`` runs gateway/lua/gcra.lua (one round trip; all replicas share the state) and
falls back to a per-replica ``MemoryLimiter`` while Redis is unreachable. Which one: the cache
URL's scheme, from ``LIMITERS`` (``memory://`` -> in process, ``redis://``, ``rediss://``,
``redis+cluster://``, ``redis+sentinel://`` -> Redis).

Keys carry a Redis Cluster hash tag: every key of one atomic call (one script) holds the same
``{...}``, the token id (``t:{id}``, ``r:2:{id}``) or the client address (``ip:0:{addr}``,
``fail:{addr}``), so a call's keys share one slot on a cluster. Other scripts over the same
keys (e.g. credits) follow the same convention.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Protocol

from gateway.config import RateLimit

if TYPE_CHECKING:
    from gateway.cache import RedisShared
    from gateway.redis_client import RedisClient

Limits = Sequence[tuple[str, RateLimit]]  # (key, limit) pairs, all must admit


@dataclass(slots=True)  # not frozen: one is built per request, and frozen init costs ~1 us more
class LimitResult:
    admitted: bool
    limit: RateLimit  # the policy the headers describe: the refusing one, else the tightest
    remaining: int
    reset_s: int  # seconds until the quota is whole again
    retry_after_s: int  # 0 when admitted
    index: int = 0  # position in the limits passed of the policy above (which one refused)
    # Quota calls only (named limits, credits; SPEC §13): each limit's (remaining, reset_s);
    # short = refused because the credit counter is empty (nothing was charged); credits = the
    # counter's allowance left (-1: no credits); named = (name, limit, remaining, reset_s) of
    # each named limit, for the headers (the pipeline fills it in).
    parts: tuple[tuple[int, int], ...] = ()
    short: bool = False
    credits: int = -1
    named: tuple[tuple[str, RateLimit, int, int], ...] = ()


class RateLimiter(Protocol):
    async def hit(self, limits: Limits) -> LimitResult: ...
    async def close(self) -> None: ...
    async def hit_quota(self, limits: Limits, credit: str | None,
                        period: int) -> LimitResult: ...
    async def add_credits(self, key: str, period: int, amount: int) -> None: ...


def _result(admitted: bool, limits: Limits, index: int, remaining: float, reset_ms: float,
            retry_ms: float) -> LimitResult:
    return LimitResult(admitted, limits[index][1], max(0, int(remaining)),
                       math.ceil(reset_ms / 1000), math.ceil(retry_ms / 1000), index)


class MemoryLimiter:
    """In-process GCRA: exact for one replica.

    State per key: ``[TAT, burst tolerance]`` in ms (tolerance = window - window/quota). A key
    whose TAT has passed behaves exactly like a key never seen, so it may go: each new key
    sweeps ``SWEEP_STEP`` entries of a snapshot of the keys, and a fresh snapshot is taken
    when the last one is used up. Every key is looked at once per ~len/SWEEP_STEP new keys, so
    memory stays within about 4/3 of the keys still live (or ``SWEEP_FROM`` keys, if more),
    at amortised O(1) per new key and no cost at all for a known key. Past ``max_keys`` the
    sweep also gives up live keys that are under their limit (their client may get the rest
    of one burst again); a key that is over its limit is never dropped, so it stays limited.
    """

    SWEEP_STEP = 4
    # Below this many keys nothing is swept: the memory is small either way, and a lightly used
    # token (its TAT passed between two hits) would otherwise pay a sweep on every hit.
    SWEEP_FROM = 1024

    def __init__(self, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._state: dict[str, list[float]] = {}
        self._max_keys = max_keys
        self._sweep_from = min(self.SWEEP_FROM, max_keys)
        self._clock = clock
        self._sweep_keys: list[str] = []
        self._sweep_at = 0
        self._credits: dict[str, list[int]] = {}  # counter key -> [allowance, period]

    def __len__(self) -> int:
        return len(self._state)

    def _sweep(self, now: float) -> None:
        keys, at = self._sweep_keys, self._sweep_at
        if at >= len(keys):
            keys = self._sweep_keys = list(self._state)
            at = 0
        state, full = self._state, len(self._state) > self._max_keys
        end = min(at + self.SWEEP_STEP, len(keys))
        for i in range(at, end):
            entry = state.get(keys[i])
            # expired (TAT passed), or, over the cap, not over its limit (next hit admitted)
            if entry is not None and (entry[0] <= now or (full and entry[0] - entry[1] <= now)):
                del state[keys[i]]
        self._sweep_at = end

    async def hit(self, limits: Limits) -> LimitResult:
        return self.hit_now(limits)

    def hit_now(self, limits: Limits) -> LimitResult:
        now = self._clock() * 1000
        state = self._state
        new_tats: list[float] = []
        worst, worst_wait = -1, 0.0
        for i, (key, limit) in enumerate(limits):
            window = limit.window_s * 1000
            entry = state.get(key)
            tat = entry[0] if entry is not None and entry[0] > now else now
            new_tat = tat + window / limit.limit
            wait = new_tat - window - now  # > 0: this limit refuses for that long
            if wait > worst_wait:
                worst, worst_wait = i, wait
            new_tats.append(new_tat)
        if worst >= 0:
            entry = state.get(limits[worst][0])
            tat = entry[0] if entry is not None and entry[0] > now else now
            return _result(False, limits, worst, 0, tat - now, worst_wait)
        # One result, for the tightest limit (fewest remaining; the first on a tie).
        tight, tight_remaining, tight_reset, grew = 0, math.inf, 0.0, False
        for i, (key, limit) in enumerate(limits):
            new_tat = new_tats[i]
            window = limit.window_s * 1000
            interval = window / limit.limit
            entry = state.get(key)
            if entry is None:
                state[key] = [new_tat, window - interval]
                grew = True
            else:  # in place: no allocation for a known key
                entry[0] = new_tat
                entry[1] = window - interval
            remaining = math.floor((window - (new_tat - now)) / interval + 1e-9)
            if remaining < tight_remaining:
                tight, tight_remaining, tight_reset = i, remaining, new_tat - now
        if grew and len(state) > self._sweep_from:
            self._sweep(now)
        return _result(True, limits, tight, tight_remaining, tight_reset, 0)

    # --- named limits and credits (SPEC §13; gateway/credits.py), as gateway/lua/quota.lua ---

    async def hit_quota(self, limits: Limits, credit: str | None, period: int) -> LimitResult:
        return self.hit_quota_now(limits, credit, period)

    def hit_quota_now(self, limits: Limits, credit: str | None, period: int) -> LimitResult:
        """All limits, then one credit of the counter ``credit`` (None: no credits); nothing
        is charged unless both admit. Every limit's remaining and reset in ``parts``."""
        now = self._clock() * 1000
        state = self._state
        tats = []
        worst, worst_wait = -1, 0.0
        for i, (key, limit) in enumerate(limits):
            entry = state.get(key)
            tat = entry[0] if entry is not None and entry[0] > now else now
            tats.append(tat)
            wait = tat + limit.window_s * 1000 / limit.limit - limit.window_s * 1000 - now
            if wait > worst_wait:
                worst, worst_wait = i, wait
        if worst >= 0:
            parts = _parts(limits, tats, now)
            return LimitResult(False, limits[worst][1], 0, math.ceil((tats[worst] - now) / 1000),
                               math.ceil(worst_wait / 1000), worst, parts)
        allowance = -1
        if credit is not None:
            counter = self._credits.get(credit)
            if counter is None or counter[1] < period or counter[0] <= 0:
                return _quota_result(False, limits, _parts(limits, tats, now), short=True,
                                     credits=0)
            counter[0] -= 1
            allowance = int(counter[0])
        grew = False
        for i, (key, limit) in enumerate(limits):
            window = limit.window_s * 1000
            tats[i] += window / limit.limit
            entry = state.get(key)
            if entry is None:
                state[key] = [tats[i], window - window / limit.limit]
                grew = True
            else:
                entry[0], entry[1] = tats[i], window - window / limit.limit
        if grew and len(state) > self._sweep_from:
            self._sweep(now)
        return _quota_result(True, limits, _parts(limits, tats, now), credits=allowance)

    async def add_credits(self, key: str, period: int, amount: int) -> None:
        counter = self._credits.get(key)
        if counter is None or counter[1] < period:
            if len(self._credits) >= self._max_keys:  # a lost lease, never a granted one
                self._credits.clear()
            self._credits[key] = [amount, period]
        else:
            counter[0] = max(0, counter[0]) + amount

    async def close(self) -> None:
        pass


def _parts(limits: Limits, tats: list[float], now: float) -> tuple[tuple[int, int], ...]:
    out = []
    for (_, limit), tat in zip(limits, tats, strict=True):
        window = limit.window_s * 1000
        remaining = math.floor((window - (tat - now)) / (window / limit.limit) + 1e-9)
        out.append((max(0, remaining), math.ceil((tat - now) / 1000)))
    return tuple(out)


def _quota_result(admitted: bool, limits: Limits, parts: tuple[tuple[int, int], ...], *,
                  short: bool = False, credits: int = -1) -> LimitResult:
    """The tightest limit (fewest remaining, the first on a tie) describes the result; with no
    limits at all (credits only) an empty policy."""
    if not limits:
        return LimitResult(admitted, _NO_LIMIT, 0, 0, 0, -1, (), short, credits)
    tight = min(range(len(parts)), key=lambda i: parts[i][0])
    return LimitResult(admitted, limits[tight][1], parts[tight][0], parts[tight][1], 0, tight,
                       parts, short, credits)


_NO_LIMIT = RateLimit(1, 1)  # placeholder policy of a credits-only result (index -1)


_SCRIPT = resources.files("gateway").joinpath("lua", "gcra.lua").read_text("utf-8")
_QUOTA = resources.files("gateway").joinpath("lua", "quota.lua").read_text("utf-8")
_ADD = resources.files("gateway").joinpath("lua", "credits_add.lua").read_text("utf-8")


class RedisLimiter:
    """Shared GCRA in Redis. While Redis is unreachable, limits are per replica (MemoryLimiter).

    On one server (``redis://``, ``rediss://``) each hit is written at once to the client's
    ``lean_scripts`` connection (gateway/redis_scripts.py: pipelined, no batching task). On a
    cluster or a sentinel-managed master, hits that arrive in the same event-loop turn go to
    Redis as one redis-py pipeline (one connection checkout, one write, one read). Either way
    each script still runs atomically on its own, so the limit holds exactly.
    """

    def __init__(self, redis: RedisClient | RedisShared,
                 fallback: MemoryLimiter | None = None) -> None:
        from gateway.cache import RedisShared

        # The client owns the connection and its health (a RedisShared lends its own).
        self._redis = redis.redis if isinstance(redis, RedisShared) else redis
        self._sha = hashlib.sha1(_SCRIPT.encode()).hexdigest()  # noqa: S324 - Redis's script id
        self._fallback = fallback or MemoryLimiter()
        self._batch: list[tuple[list[str], list[int], asyncio.Future[list[int] | None]]] = []
        self._tasks: set[asyncio.Task[None]] = set()  # strong references while batches run
        self._quota_batch: list[tuple[list[str], list[int],
                                      asyncio.Future[list[int] | None]]] = []

    async def hit(self, limits: Limits) -> LimitResult:
        if not self._redis.healthy():
            return self._fallback.hit_now(limits)
        keys = [f"authgate:rl:{key}" for key, _ in limits]
        args = [n for _, limit in limits for n in (limit.limit, limit.window_s)]
        lean = self._redis.lean_scripts
        if lean is not None:
            reply = await lean.run(_SCRIPT, self._sha, keys, args)
        else:
            loop = asyncio.get_running_loop()
            future: asyncio.Future[list[int] | None] = loop.create_future()
            if not self._batch:
                loop.call_soon(self._send_batch)
            self._batch.append((keys, args, future))
            reply = await future
        if reply is None:  # Redis failed just now
            return self._fallback.hit_now(limits)
        admitted, idx, remaining, reset_ms, retry_ms = (int(x) for x in reply)
        return _result(bool(admitted), limits, idx - 1, remaining, reset_ms, retry_ms)

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.get_running_loop().create_task(self._run_batch(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_batch(self, batch: list[tuple[list[str], list[int],
                                                 asyncio.Future[list[int] | None]]]) -> None:
        calls = [(keys, args) for keys, args, _ in batch]
        replies = await self._redis.call(self._redis.scripts(_SCRIPT, self._sha, calls))
        for i, (_, _, future) in enumerate(batch):
            if not future.done():
                future.set_result(replies[i] if replies is not None else None)

    # --- named limits and credits (SPEC §13): gateway/lua/quota.lua, one round trip ----------

    async def hit_quota(self, limits: Limits, credit: str | None, period: int) -> LimitResult:
        if not self._redis.healthy():
            return self._fallback.hit_quota_now(limits, credit, period)
        keys = [f"authgate:rl:{key}" for key, _ in limits]
        args: list[int] = [len(limits)]
        args += [n for _, limit in limits for n in (limit.limit, limit.window_s)]
        if credit is not None:
            keys.append(f"authgate:cr:{credit}")
            args.append(period)
        lean = self._redis.lean_scripts
        if lean is not None:
            reply = await lean.run(_QUOTA, _QUOTA_SHA, keys, args)
        else:
            loop = asyncio.get_running_loop()
            future: asyncio.Future[list[int] | None] = loop.create_future()
            if not self._quota_batch:  # batched as hit() is: one pipeline per event-loop turn
                loop.call_soon(self._send_quota_batch)
            self._quota_batch.append((keys, args, future))
            reply = await future
        if reply is None:  # Redis failed just now
            return self._fallback.hit_quota_now(limits, credit, period)
        admitted, idx, remaining, reset_ms, retry_ms, short, allowance, *rest = (
            int(x) for x in reply)
        parts = tuple((rest[2 * i], math.ceil(rest[2 * i + 1] / 1000))
                      for i in range(len(limits)))
        if not limits:
            return _quota_result(bool(admitted), limits, parts, short=bool(short),
                                 credits=allowance)
        return LimitResult(bool(admitted), limits[idx - 1][1], max(0, remaining),
                           math.ceil(reset_ms / 1000), math.ceil(retry_ms / 1000), idx - 1,
                           parts, bool(short), allowance)

    def _send_quota_batch(self) -> None:
        batch, self._quota_batch = self._quota_batch, []
        task = asyncio.get_running_loop().create_task(self._run_quota_batch(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_quota_batch(self, batch: list[tuple[list[str], list[int],
                                                       asyncio.Future[list[int] | None]]]
                               ) -> None:
        calls = [(keys, args) for keys, args, _ in batch]
        replies = await self._redis.call(self._redis.scripts(_QUOTA, _QUOTA_SHA, calls))
        for i, (_, _, future) in enumerate(batch):
            if not future.done():
                future.set_result(replies[i] if replies is not None else None)

    async def add_credits(self, key: str, period: int, amount: int) -> None:
        """Put a lease into the shared counter; while Redis is down, into this replica's. When
        the call fails the lease is lost (the safe side: it may have been added)."""
        if not self._redis.healthy():
            await self._fallback.add_credits(key, period, amount)
            return
        await self._redis.call(self._redis.script(
            _ADD, _ADD_SHA, [f"authgate:cr:{key}"], period, amount))

    async def close(self) -> None:
        pass


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()  # noqa: S324 - Redis's script id


_QUOTA_SHA, _ADD_SHA = _sha(_QUOTA), _sha(_ADD)


# One table: the cache URL's scheme -> the limiter. ``redis_for(url)`` hands out the process's
# Redis client for a URL (the shared cache gets the same one).
RedisFor = Callable[[str], "RedisClient"]
LIMITERS: dict[str, Callable[[str, RedisFor], RateLimiter]] = {
    "memory": lambda url, redis_for: MemoryLimiter(),
    "redis": lambda url, redis_for: RedisLimiter(redis_for(url)),
    "rediss": lambda url, redis_for: RedisLimiter(redis_for(url)),
    "redis+cluster": lambda url, redis_for: RedisLimiter(redis_for(url)),
    "redis+sentinel": lambda url, redis_for: RedisLimiter(redis_for(url)),
}


def make_limiter(url: str, redis_for: RedisFor) -> RateLimiter:
    scheme = url.split("://", 1)[0]
    try:
        return LIMITERS[scheme](url, redis_for)
    except KeyError:
        raise ValueError(f"unsupported limiter URL scheme {scheme!r}") from None
