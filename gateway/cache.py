"""Token caches: an in-process LRU in front of a shared cache in front of the store.

- ``LocalCache``: two bounded LRUs, one for records and a small one for "no such token", so a
  flood of unknown tokens never evicts a valid one.
- ``SharedCache``: the shared layer, chosen by the cache URL's scheme from ``SHARED``:
  ``NullShared`` for ``memory://`` (nothing shared), ``RedisShared`` for ``redis://`` (and
  ``rediss://``, ``redis+cluster://``, ``redis+sentinel://``: one interface, see
  ``gateway.redis_client``).
- ``RedisShared``: the shared layer for ``redis://``, and the revocation broadcast: a change
  bumps the token's version mark, deletes its entry and publishes its hash, and every replica
  drops it from its LRU. A replica clears its LRU when its subscription comes back after an
  outage (it may have missed broadcasts).
- With ``memory://`` the LRU is the one in-process cache; there is no shared layer.

The revocation bound (SPEC §3) holds whoever writes, even a writer that never reaches Redis:
every copy, in Redis or in an LRU, dies at its *deadline* = the moment the store read it came
from started + ``local_cache_ttl_s``. A change committed at T is seen by every store read that
starts after T, so every stale copy is gone by T + ttl. Redis entries are written with PX = the
time left to the deadline (measured on the filling host's monotonic clock) and copies taken from
Redis keep its remaining PTTL, so no wall clock is compared across hosts. The broadcast makes the
usual case milliseconds; the version mark keeps a fill that raced a change from writing the old
record back, and a local change counter does the same for the LRU.

Redis errors never reach callers: the layer reports itself unhealthy for a moment and lookups go
to the store (fail open to the store, never to "allow").
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, cast

from gateway.config import RateLimit
from gateway.credits import Credits, NamedLimit
from gateway.store import Revoked, TokenRecord

if TYPE_CHECKING:
    from gateway.redis_client import RedisClient

log = logging.getLogger("authgate.cache")

MISS = object()  # distinct from None, which is a cached "no such token"
CHANNEL = "authgate:invalidate"
NEGATIVE_TTL_S = 2.0
MAX_NEGATIVE = 4096
# A version mark outlives its change by more than any fill can take (a fill with no time left
# to its deadline never writes), so a racing fill always finds it.
VERSION_TTL_S = 60.0


class LocalCache:
    """Bounded LRUs of records and of unknown hashes; each entry expires at its own deadline
    (monotonic seconds), never later than ``ttl_s`` after it was put."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic,
                 max_negative: int = MAX_NEGATIVE) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.max_negative = max_negative
        self.clock = clock
        self._known: OrderedDict[str, tuple[float, TokenRecord]] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._known) + len(self._unknown)

    def ttl_for(self, record: TokenRecord | None) -> float:
        return self.ttl_s if record is not None else min(self.ttl_s, NEGATIVE_TTL_S)

    def get(self, key: str) -> Any:
        item = self._known.get(key)
        if item is not None:
            if item[0] > self.clock():
                self._known.move_to_end(key)
                return item[1]
            del self._known[key]
            return MISS
        expires = self._unknown.get(key)
        if expires is None:
            return MISS
        if expires > self.clock():
            self._unknown.move_to_end(key)
            return None
        del self._unknown[key]
        return MISS

    def put(self, key: str, record: TokenRecord | None, expires: float | None = None) -> None:
        now = self.clock()
        latest = now + self.ttl_for(record)
        expires = latest if expires is None else min(expires, latest)
        if expires <= now:
            return
        if record is None:
            self._known.pop(key, None)
            self._unknown[key] = expires
            self._unknown.move_to_end(key)
            if len(self._unknown) > self.max_negative:
                self._unknown.popitem(last=False)
            return
        self._unknown.pop(key, None)
        self._known[key] = (expires, record)
        self._known.move_to_end(key)
        if len(self._known) > self.max_entries:
            self._known.popitem(last=False)

    def drop(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._known.pop(key, None)
            self._unknown.pop(key, None)

    def clear(self) -> None:
        self._known.clear()
        self._unknown.clear()


# --- records as JSON for the shared cache ------------------------------------------------------

_TIMES = ("created_at", "expires_at", "last_used_at", "revoked_at", "grace_until")


def record_to_json(r: TokenRecord) -> str:
    data = {f: getattr(r, f) for f in TokenRecord.__dataclass_fields__}
    for f in _TIMES:
        data[f] = data[f].isoformat() if data[f] else None
    data["rate_limit"] = r.rate_limit.as_dict() if r.rate_limit else None
    data["metadata"] = dict(r.metadata)
    data["named_limits"] = [n.as_dict() for n in r.named_limits]
    data["credits"] = None if r.credits is None else asdict(r.credits)
    return json.dumps(data)


def record_from_json(text: str | bytes) -> TokenRecord:
    data = json.loads(text)
    for f in _TIMES:
        data[f] = datetime.fromisoformat(data[f]) if data[f] else None
    data["scopes"] = tuple(data["scopes"])
    data["rate_limit"] = RateLimit(**data["rate_limit"]) if data["rate_limit"] else None
    data["named_limits"] = tuple(
        NamedLimit(n["name"], RateLimit(n["limit"], n["window_s"]))
        for n in data.get("named_limits") or ())
    data["credits"] = Credits(**data["credits"]) if data.get("credits") else None
    return TokenRecord(**data)


# --- the shared layer ---------------------------------------------------------------------


class SharedCache(Protocol):
    """What replicas share: a token cache and the invalidation broadcast (see the module
    docstring). ``get`` answers None when it was not asked (unhealthy, or nothing shared)."""

    async def get(self, key: str) -> tuple[Any, float, bytes] | None: ...
    async def fill(self, key: str, record: TokenRecord | None, version: bytes,
                   left_s: float) -> None: ...
    async def delete_and_publish(self, keys: Sequence[str] | None) -> bool: ...
    async def listen(self, on_message: Callable[[list[str] | None], None]) -> None: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


class NullShared:
    """``memory://``: nothing is shared. The LRU is the one cache; a change is "told" at once
    (there is no one else to tell)."""

    async def get(self, key: str) -> tuple[Any, float, bytes] | None:
        return None

    async def fill(self, key: str, record: TokenRecord | None, version: bytes,
                   left_s: float) -> None:
        return None

    async def delete_and_publish(self, keys: Sequence[str] | None) -> bool:
        return True

    async def listen(self, on_message: Callable[[list[str] | None], None]) -> None:
        return None

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


NULL_SHARED = NullShared()

# KEYS[1] the cached record, KEYS[2] its version mark (same hash tag: one slot).
# Returns {value or nil, PTTL of the value (-2: none), version mark ('' if none)}.
_READ = """
local v = redis.call('GET', KEYS[1])
local left = -2
if v then left = redis.call('PTTL', KEYS[1]) end
return {v, left, redis.call('GET', KEYS[2]) or ''}
"""
# ARGV[1] the version mark read before the store read, ARGV[2] the value, ARGV[3] PX.
# A change since that read (the mark moved) means the value may be stale: keep nothing.
_FILL = """
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
_READ_SHA = hashlib.sha1(_READ.encode()).hexdigest()  # noqa: S324 - Redis's script id
_FILL_SHA = hashlib.sha1(_FILL.encode()).hexdigest()  # noqa: S324


def _keys(token_hash: str) -> tuple[str, str]:
    return f"authgate:tok:{{{token_hash}}}", f"authgate:ver:{{{token_hash}}}"


class RedisShared:
    """The shared token cache and the invalidation channel in Redis, on a ``RedisClient``
    (given: shared with the limiter, closed by its owner; or a URL: owned and closed here)."""

    def __init__(self, redis: RedisClient | str) -> None:
        if isinstance(redis, str):
            from gateway.redis_client import make_redis

            redis = make_redis(redis)
            self._owned = True
        else:
            self._owned = False
        self.redis = redis

    def healthy(self) -> bool:
        return self.redis.healthy()

    async def ping(self) -> bool:
        return await self.redis.ping()

    async def get(self, key: str) -> tuple[Any, float, bytes] | None:
        """(record, None for "no such token", or MISS; seconds it has left; version mark), in
        one round trip; None when Redis was not asked (unhealthy) or failed."""
        if not self.redis.healthy():
            return None
        reply = await self.redis.call(self.redis.script(_READ, _READ_SHA, _keys(key)))
        if reply is None:
            return None
        raw, left_ms, version = reply
        if raw is None or left_ms <= 0:  # absent, or (never written so) without an expiry
            return MISS, 0.0, version
        return (None if raw == b"-" else record_from_json(raw)), left_ms / 1000, version

    async def fill(self, key: str, record: TokenRecord | None, version: bytes,
                   left_s: float) -> None:
        """Share a store read for the ``left_s`` seconds left to its deadline, unless the
        token changed since ``version`` was read."""
        px = int(left_s * 1000)
        if px > 0 and self.redis.healthy():
            value = record_to_json(record) if record is not None else "-"
            await self.redis.call(self.redis.script(_FILL, _FILL_SHA, _keys(key), version,
                                                    value, px))

    async def delete_and_publish(self, keys: Sequence[str] | None) -> bool:
        """Bump each token's version mark, delete its entry, tell every replica. False when
        Redis could not be told (other replicas then drop their copies at their deadline)."""
        client = self.redis.client

        async def run() -> bool:
            if keys:
                async with client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        entry, version = _keys(key)
                        pipe.incr(version)  # before the delete: a racing fill lands before
                        pipe.pexpire(version, int(VERSION_TTL_S * 1000))  # it or fails
                        pipe.delete(entry)
                    await pipe.execute()
            # On its own: a cluster pipeline refuses PUBLISH (redis-py); rare (admin actions).
            await client.publish(CHANNEL, json.dumps(list(keys) if keys is not None else "*"))
            return True
        if keys is None:
            await self.redis.call(self._delete_all())
        return bool(await self.redis.call(run()))

    async def _delete_all(self) -> None:
        async for key in self.redis.client.scan_iter(match="authgate:tok:*", count=1000):
            await self.redis.client.delete(key)

    async def listen(self, on_message: Callable[[list[str] | None], None]) -> None:
        """Follow the invalidation channel forever, reconnecting; run as a background task."""
        from gateway.redis_client import ERRORS

        lost = False
        while True:
            try:
                async with self.redis.subscription(CHANNEL) as pubsub:
                    if lost:  # broadcasts may have been missed: forget everything local
                        on_message(None)
                        lost = False
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            keys = json.loads(message["data"])
                            on_message(None if keys == "*" else keys)
            except ERRORS:
                lost = True
                await asyncio.sleep(0.5)

    async def close(self) -> None:
        if self._owned:
            await self.redis.close()


# One table: the cache URL's scheme -> the shared layer. ``redis_for(url)`` hands out the
# process's Redis client for a URL (the limiter gets the same one).
RedisFor = Callable[[str], "RedisClient"]
SHARED: dict[str, Callable[[str, RedisFor], SharedCache]] = {
    "memory": lambda url, redis_for: NULL_SHARED,
    "redis": lambda url, redis_for: RedisShared(redis_for(url)),
    "rediss": lambda url, redis_for: RedisShared(redis_for(url)),
    "redis+cluster": lambda url, redis_for: RedisShared(redis_for(url)),
    "redis+sentinel": lambda url, redis_for: RedisShared(redis_for(url)),
}


def make_shared(url: str, redis_for: RedisFor) -> SharedCache:
    scheme = url.split("://", 1)[0]
    try:
        return SHARED[scheme](url, redis_for)
    except KeyError:
        raise ValueError(f"unsupported cache URL scheme {scheme!r}") from None


CLOSE_WAIT_S = 2.0  # how long close() waits for the broadcast listener to finish cancelling


class TokenCache:
    """LRU -> shared -> loader, and invalidation across replicas."""

    def __init__(self, local: LocalCache, shared: SharedCache | None = None) -> None:
        self.local = local
        self.shared: SharedCache = shared if shared is not None else NULL_SHARED
        self._listener: asyncio.Task[None] | None = None
        # Bumped by every invalidation: a fill that saw it change may hold a stale record.
        self._changes = 0

    def start(self) -> None:
        self._listener = asyncio.create_task(self.shared.listen(self._on_broadcast))

    def _on_broadcast(self, keys: list[str] | None) -> None:
        self._changes += 1
        self.local.clear() if keys is None else self.local.drop(keys)

    async def lookup(self, key: str, load: Callable[[str], Awaitable[TokenRecord | None]],
                     hit: Callable[[str], None] = lambda layer: None) -> TokenRecord | None:
        record: TokenRecord | None
        cached = self.local.get(key)
        if cached is not MISS:
            hit("local")
            return cast("TokenRecord | None", cached)
        changes, version = self._changes, None
        asked = self.local.clock()
        found = await self.shared.get(key)
        if found is not None:  # the shared layer answered (never with memory://)
            cached, left_s, version = found
            if cached is not MISS:
                hit("shared")
                if self._changes == changes:  # the copy dies when the Redis entry does
                    self.local.put(key, cached, asked + left_s)
                return cast("TokenRecord | None", cached)
        hit("store")
        started = self.local.clock()
        record = await load(key)
        if self._changes != changes:  # changed while we read: what we hold may be stale
            return record
        deadline = started + self.local.ttl_for(record)
        self.local.put(key, record, deadline)
        if version is not None:  # read a version mark: may share what it read
            await self.shared.fill(key, record, version, deadline - self.local.clock())
        return record

    async def invalidate(self, revoked: Sequence[Revoked] | None) -> None:
        keys = None if revoked is None else [r.token_hash for r in revoked]
        self._on_broadcast(keys)
        if not await self.shared.delete_and_publish(keys):
            log.warning("change not broadcast (Redis unreachable): every replica sees it "
                        "within local_cache_ttl_s instead of at once")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            # Bounded: a pub/sub connection torn down mid-read has been seen to hang its
            # cancellation (intermittently, in the contract suite); shutdown must go on.
            await asyncio.wait({self._listener}, timeout=CLOSE_WAIT_S)
