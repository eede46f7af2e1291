"""The one Redis connection of a process: its pool, its health and its scripts.

Imported only when a ``redis://`` / ``rediss://`` cache is configured (the driver with it). The
shared token cache (``cache.RedisShared``) and the shared limiter (``ratelimit.RedisLimiter``)
both run on one ``RedisClient``: one pool, and one view of whether Redis is up. While it is down
(a failed call marks it so for ``backoff_s``) neither asks it: lookups go to the store and limits
are kept per replica. Redis errors never reach callers.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

log = logging.getLogger("authgate.cache")

ERRORS: tuple[type[Exception], ...] = (RedisError, OSError)  # what "Redis failed" looks like


def script_id(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()  # noqa: S324 - Redis's script id


class RedisClient:
    def __init__(self, url: str, max_connections: int = 512, backoff_s: float = 1.0) -> None:
        # A blocking pool waits for a free connection instead of raising at high concurrency.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=2, socket_connect_timeout=0.5,
            socket_timeout=1.0, health_check_interval=30)
        self.client = aioredis.Redis(connection_pool=pool)
        self._backoff_s = backoff_s
        self._down_until = 0.0
        self.on_error: Callable[[], None] = lambda: None

    def healthy(self) -> bool:
        return time.monotonic() >= self._down_until

    async def call(self, awaitable: Awaitable[Any]) -> Any:
        """Await a Redis command; on failure mark Redis down for a moment and return None."""
        try:
            return await awaitable
        except ERRORS as e:
            if self.healthy():
                log.warning("redis unavailable (%s); serving from the store", type(e).__name__)
            self._down_until = time.monotonic() + self._backoff_s
            self.on_error()
            return None

    async def ping(self) -> bool:
        return bool(await self.call(self.client.ping()))

    async def script(self, script: str, sha: str, keys: Sequence[str], *args: Any) -> Any:
        """EVALSHA, loading the script only when Redis lacks it (one round trip as a rule)."""
        try:
            return await self.client.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.client.eval(script, len(keys), *keys, *args)

    async def scripts(self, script: str, sha: str,
                      calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[Any]:
        """Run one script for each (keys, args) in one pipeline (one checkout, one write, one
        read). Plain EVALSHA: redis-py's Script objects add a SCRIPT EXISTS round trip to every
        pipeline; the script is (re)loaded only when Redis says it lacks it."""
        if len(calls) == 1:  # the usual batch at low load: a pipeline object costs ~50 us CPU
            keys, args = calls[0]
            return [await self.script(script, sha, keys, *args)]
        for attempt in (1, 2):
            async with self.client.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    pipe.evalsha(sha, len(keys), *keys, *args)
                try:
                    return await pipe.execute()
                except NoScriptError:
                    if attempt == 2:
                        raise
                    await self.client.script_load(script)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self.client.aclose()
        await self.client.connection_pool.disconnect()
