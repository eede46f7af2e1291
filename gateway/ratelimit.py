"""Rate limiters: GCRA with a burst of N, per key, several limits checked atomically together.

``RedisLimiter`` runs gateway/lua/gcra.lua (one round trip; all replicas share the state) and
falls back to a per-replica ``MemoryLimiter`` while Redis is unreachable.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Protocol

from redis.exceptions import NoScriptError

from gateway.config import RateLimit

Limits = Sequence[tuple[str, RateLimit]]  # (key, limit) pairs, all must admit


@dataclass(frozen=True, slots=True)
class LimitResult:
    admitted: bool
    limit: RateLimit  # the policy the headers describe: the refusing one, else the tightest
    remaining: int
    reset_s: int  # seconds until the quota is whole again
    retry_after_s: int  # 0 when admitted


class RateLimiter(Protocol):
    async def hit(self, limits: Limits) -> LimitResult: ...
    async def close(self) -> None: ...


def _result(admitted: bool, limit: RateLimit, remaining: float, reset_ms: float,
            retry_ms: float) -> LimitResult:
    return LimitResult(admitted, limit, max(0, int(remaining)), math.ceil(reset_ms / 1000),
                       math.ceil(retry_ms / 1000))


class MemoryLimiter:
    """In-process GCRA: exact for one replica. State is one float per key, pruned when idle."""

    def __init__(self, max_keys: int = 100_000, clock=time.monotonic) -> None:
        self._tat: dict[str, float] = {}
        self._max_keys = max_keys
        self._clock = clock

    def _prune(self, now: float) -> None:
        self._tat = {k: v for k, v in self._tat.items() if v > now}
        while len(self._tat) >= self._max_keys:  # still full of live keys: drop the oldest
            self._tat.pop(next(iter(self._tat)))

    async def hit(self, limits: Limits) -> LimitResult:
        return self.hit_now(limits)

    def hit_now(self, limits: Limits) -> LimitResult:
        now = self._clock() * 1000
        if len(self._tat) >= self._max_keys:
            self._prune(now)
        new_tats = []
        worst: tuple[float, int] | None = None
        for i, (key, limit) in enumerate(limits):
            window = limit.window_s * 1000
            tat = max(self._tat.get(key, now), now)
            new_tat = tat + window / limit.limit
            allow_at = new_tat - window
            if now < allow_at and (worst is None or allow_at - now > worst[0]):
                worst = (allow_at - now, i)
            new_tats.append(new_tat)
        if worst is not None:
            key, limit = limits[worst[1]]
            return _result(False, limit, 0, max(self._tat.get(key, now), now) - now, worst[0])
        best: LimitResult | None = None
        for (key, limit), new_tat in zip(limits, new_tats, strict=True):
            self._tat[key] = new_tat
            window = limit.window_s * 1000
            remaining = (window - (new_tat - now)) / (window / limit.limit)
            result = _result(True, limit, math.floor(remaining + 1e-9), new_tat - now, 0)
            if best is None or result.remaining < best.remaining:
                best = result
        assert best is not None
        return best

    async def close(self) -> None:
        pass


_SCRIPT = resources.files("gateway").joinpath("lua", "gcra.lua").read_text("utf-8")


class RedisLimiter:
    """Shared GCRA in Redis. While Redis is unreachable, limits are per replica (MemoryLimiter).

    Hits that arrive in the same event-loop turn go to Redis as one pipeline (one connection
    checkout, one write, one read): each script still runs atomically on its own, so the limit
    holds exactly, and under load the per-request Redis cost is shared by the batch.
    """

    def __init__(self, shared, fallback: MemoryLimiter | None = None) -> None:
        self._shared = shared  # gateway.cache.RedisShared: owns the client and its health
        self._sha = hashlib.sha1(_SCRIPT.encode()).hexdigest()  # noqa: S324 - Redis's script id
        self._fallback = fallback or MemoryLimiter()
        self._batch: list[tuple[list[str], list[int], asyncio.Future[list[int] | None]]] = []
        self._tasks: set[asyncio.Task[None]] = set()  # strong references while batches run

    async def hit(self, limits: Limits) -> LimitResult:
        if not self._shared.healthy():
            return self._fallback.hit_now(limits)
        keys = [f"authgate:rl:{key}" for key, _ in limits]
        args = [n for _, limit in limits for n in (limit.limit, limit.window_s)]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int] | None] = loop.create_future()
        if not self._batch:
            loop.call_soon(self._send_batch)
        self._batch.append((keys, args, future))
        reply = await future
        if reply is None:  # Redis failed just now
            return self._fallback.hit_now(limits)
        admitted, idx, remaining, reset_ms, retry_ms = (int(x) for x in reply)
        return _result(bool(admitted), limits[idx - 1][1], remaining, reset_ms, retry_ms)

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.get_running_loop().create_task(self._run_batch(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_batch(self, batch: list[tuple[list[str], list[int],
                                                 asyncio.Future[list[int] | None]]]) -> None:
        async def run() -> list[list[int]]:
            # Plain EVALSHA: redis-py's Script objects add a SCRIPT EXISTS round trip to
            # every pipeline. The script is (re)loaded only when Redis says it lacks it.
            for attempt in (1, 2):
                async with self._shared.client.pipeline(transaction=False) as pipe:
                    for keys, args, _ in batch:
                        pipe.evalsha(self._sha, len(keys), *keys, *args)
                    try:
                        return await pipe.execute()
                    except NoScriptError:
                        if attempt == 2:
                            raise
                        await self._shared.client.script_load(_SCRIPT)
            raise AssertionError("unreachable")

        replies = await self._shared.call(run())
        for i, (_, _, future) in enumerate(batch):
            if not future.done():
                future.set_result(replies[i] if replies is not None else None)

    async def close(self) -> None:
        pass
