"""Token caches: an in-process LRU in front of a shared cache in front of the store.

- ``LocalCache``: bounded LRU with TTL (``local_cache_ttl_s``), positive and negative entries.
- ``RedisShared``: the shared layer for ``redis://`` (positive and short negative entries), and
  the revocation broadcast: a change publishes the affected hashes, and every replica drops them
  from its LRU. A replica that misses a broadcast trusts its entry for at most the local TTL, and
  clears its LRU when its subscription comes back after an outage.
- With ``memory://`` the LRU is the one in-process store; there is no shared layer.

Redis errors never reach callers: the layer reports itself unhealthy for a moment and lookups go
to the store (fail open to the store, never to "allow").
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.config import RateLimit
from gateway.store import Revoked, TokenRecord

log = logging.getLogger("authgate.cache")

MISS = object()  # distinct from None, which is a cached "no such token"
CHANNEL = "authgate:invalidate"
NEGATIVE_TTL_S = 2.0
SHARED_TTL_S = 300


class LocalCache:
    def __init__(self, ttl_s: float, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._data: OrderedDict[str, tuple[float, TokenRecord | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> Any:
        item = self._data.get(key)
        if item is None:
            return MISS
        if item[0] <= self._clock():
            del self._data[key]
            return MISS
        self._data.move_to_end(key)
        return item[1]

    def put(self, key: str, record: TokenRecord | None) -> None:
        ttl = self.ttl_s if record is not None else min(self.ttl_s, NEGATIVE_TTL_S)
        self._data[key] = (self._clock() + ttl, record)
        self._data.move_to_end(key)
        if len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def drop(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()


# --- records as JSON for the shared cache ------------------------------------------------------

_TIMES = ("created_at", "expires_at", "last_used_at", "revoked_at", "grace_until")


def record_to_json(r: TokenRecord) -> str:
    data = {f: getattr(r, f) for f in TokenRecord.__dataclass_fields__}
    for f in _TIMES:
        data[f] = data[f].isoformat() if data[f] else None
    data["rate_limit"] = r.rate_limit.as_dict() if r.rate_limit else None
    data["metadata"] = dict(r.metadata)
    return json.dumps(data)


def record_from_json(text: str | bytes) -> TokenRecord:
    data = json.loads(text)
    for f in _TIMES:
        data[f] = datetime.fromisoformat(data[f]) if data[f] else None
    data["scopes"] = tuple(data["scopes"])
    data["rate_limit"] = RateLimit(**data["rate_limit"]) if data["rate_limit"] else None
    return TokenRecord(**data)


class RedisShared:
    """The Redis client, its health, the shared token cache and the invalidation channel."""

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
        except (RedisError, OSError) as e:
            if self.healthy():
                log.warning("redis unavailable (%s); serving from the store", type(e).__name__)
            self._down_until = time.monotonic() + self._backoff_s
            self.on_error()
            return None

    async def ping(self) -> bool:
        return bool(await self.call(self.client.ping()))

    async def get(self, key: str) -> Any:
        if not self.healthy():
            return MISS
        raw = await self.call(self.client.get(f"authgate:tok:{key}"))
        if raw is None:
            return MISS
        return None if raw == b"-" else record_from_json(raw)

    async def put(self, key: str, record: TokenRecord | None) -> None:
        if self.healthy():
            value = record_to_json(record) if record is not None else "-"
            ttl = SHARED_TTL_S if record is not None else NEGATIVE_TTL_S
            await self.call(self.client.set(f"authgate:tok:{key}", value, px=int(ttl * 1000)))

    async def delete_and_publish(self, keys: Sequence[str] | None) -> None:
        async def run() -> None:
            async with self.client.pipeline(transaction=False) as pipe:
                if keys:
                    pipe.delete(*(f"authgate:tok:{k}" for k in keys))
                pipe.publish(CHANNEL, json.dumps(list(keys) if keys is not None else "*"))
                await pipe.execute()
        if keys is None:
            await self.call(self._delete_all())
        await self.call(run())

    async def _delete_all(self) -> None:
        async for key in self.client.scan_iter(match="authgate:tok:*", count=1000):
            await self.client.delete(key)

    async def listen(self, on_message: Callable[[list[str] | None], None]) -> None:
        """Follow the invalidation channel forever, reconnecting; run as a background task."""
        lost = False
        while True:
            try:
                async with self.client.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    if lost:  # broadcasts may have been missed: forget everything local
                        on_message(None)
                        lost = False
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            keys = json.loads(message["data"])
                            on_message(None if keys == "*" else keys)
            except (RedisError, OSError):
                lost = True
                await asyncio.sleep(0.5)

    async def close(self) -> None:
        await self.client.aclose()
        await self.client.connection_pool.disconnect()


class TokenCache:
    """LRU -> shared -> loader, and invalidation across replicas."""

    def __init__(self, local: LocalCache, shared: RedisShared | None) -> None:
        self.local = local
        self.shared = shared
        self._listener: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.shared is not None:
            self._listener = asyncio.create_task(self.shared.listen(self._on_broadcast))

    def _on_broadcast(self, keys: list[str] | None) -> None:
        self.local.clear() if keys is None else self.local.drop(keys)

    async def lookup(self, key: str, load: Callable[[str], Awaitable[TokenRecord | None]],
                     hit: Callable[[str], None] = lambda layer: None) -> TokenRecord | None:
        record = self.local.get(key)
        if record is not MISS:
            hit("local")
            return record
        if self.shared is not None:
            record = await self.shared.get(key)
            if record is not MISS:
                hit("shared")
                self.local.put(key, record)
                return record
        hit("store")
        record = await load(key)
        self.local.put(key, record)
        if self.shared is not None:
            await self.shared.put(key, record)
        return record

    async def invalidate(self, revoked: Sequence[Revoked] | None) -> None:
        keys = None if revoked is None else [r.token_hash for r in revoked]
        self._on_broadcast(keys)
        if self.shared is not None:
            await self.shared.delete_and_publish(keys)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
