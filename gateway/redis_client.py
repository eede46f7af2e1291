"""The one Redis connection of a process: its pool, its health and its scripts.

Imported only when a Redis cache is configured (the driver with it). One class per topology
behind one interface, chosen by the URL's scheme in ``CLIENTS`` (``make_redis``):

    redis://, rediss://   RedisClient          one server (redis-py ``Redis``, blocking pool;
                                               the limiter's scripts: ``lean_scripts``)
    redis+cluster://      ClusterRedisClient   redis-py ``RedisCluster`` (any seed nodes)
    redis+sentinel://     SentinelRedisClient  redis-py ``Sentinel.master_for`` (follows failover)

The shared token cache (``cache.RedisShared``) and the shared limiter (``ratelimit.RedisLimiter``)
both run on one ``RedisClient``: one pool, and one view of whether Redis is up. While it is down
(a failed call marks it so for ``backoff_s``) neither asks it: lookups go to the store and limits
are kept per replica. Redis errors never reach callers.

One server also has ``lean_scripts`` (gateway/redis_scripts.py): one pipelined connection of
its own for the per-request limiter scripts, off redis-py (its failures count as this client's).
The cluster and sentinel clients have none (None): their scripts go through redis-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from gateway.errors import ConfigError
from gateway.redis_scripts import ScriptPipe
from gateway.redis_urls import parse_topology

log = logging.getLogger("authgate.cache")

# What "Redis failed" looks like (RedisClusterException: e.g. no node reachable at all).
ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)
CHECK_ERRORS: tuple[type[Exception], ...] = (*ERRORS, TimeoutError)
CONNECT_TIMEOUT_S = 0.5
SOCKET_TIMEOUT_S = 1.0
CHECK_TIMEOUT_S = 10.0  # serve's start-up check of a cluster or sentinel URL, at most


def script_id(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()  # noqa: S324 - Redis's script id


class RedisClient:
    """One Redis server. ``client`` is the redis-py client every caller uses (commands,
    pipelines of plain commands and of scripts, ``publish``); what differs between topologies
    is behind the methods here: ``subscription``, ``check`` and ``close``."""

    # The per-request scripts' own pipelined connection; set by this class's ``_connect``
    # only: the topologies that override it keep their scripts on redis-py.
    lean_scripts: ScriptPipe | None = None

    def __init__(self, url: str, max_connections: int = 512, backoff_s: float = 1.0) -> None:
        self.client: Any = self._connect(url, max_connections)
        self._backoff_s = backoff_s
        self._down_until = 0.0
        self.on_error: Callable[[], None] = lambda: None

    def _connect(self, url: str, max_connections: int) -> Any:
        # A blocking pool waits for a free connection instead of raising at high concurrency.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=2,
            socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S,
            health_check_interval=30)
        self.lean_scripts = ScriptPipe(
            pool, self._mark_down, lambda: self.on_error(),
            connect_timeout_s=CONNECT_TIMEOUT_S, reply_timeout_s=SOCKET_TIMEOUT_S)
        return aioredis.Redis(connection_pool=pool)

    async def check(self) -> None:
        """At ``serve``'s start: raise ConfigError naming ``cache`` when the URL cannot work at
        all. One server may simply be down for now: the gateway starts degraded instead."""

    @contextlib.asynccontextmanager
    async def subscription(self, channel: str) -> AsyncIterator[Any]:
        """A pub/sub connection subscribed to ``channel`` (redis-py's PubSub), closed after."""
        async with self.client.pubsub() as pubsub:
            await pubsub.subscribe(channel)
            yield pubsub

    def healthy(self) -> bool:
        return time.monotonic() >= self._down_until

    async def call(self, awaitable: Awaitable[Any]) -> Any:
        """Await a Redis command; on failure mark Redis down for a moment and return None."""
        try:
            return await awaitable
        except ERRORS as e:
            self._mark_down(type(e).__name__)
            return None

    def _mark_down(self, why: str) -> None:
        """A failed call: Redis is not asked for ``backoff_s`` (``why`` names no secret)."""
        if self.healthy():
            log.warning("redis unavailable (%s); serving from the store", why)
        self._down_until = time.monotonic() + self._backoff_s
        self.on_error()

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
        pipeline; the script is (re)loaded only when Redis says it lacks it. Through
        ``execute_command``: a cluster pipeline refuses the ``evalsha`` method (a script's keys
        might span slots; ours share one hash tag) but routes the command by its first key,
        one pipeline per node."""
        if len(calls) == 1:  # the usual batch at low load: a pipeline object costs ~50 us CPU
            keys, args = calls[0]
            return [await self.script(script, sha, keys, *args)]
        for attempt in (1, 2):
            async with self.client.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
                try:
                    return list(await pipe.execute())
                except NoScriptError:
                    if attempt == 2:
                        raise
                    await self.client.script_load(script)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self.lean_scripts is not None:
            await self.lean_scripts.close()
        await self.client.aclose()
        await self.client.connection_pool.disconnect()


class ClusterRedisClient(RedisClient):
    """Redis Cluster through redis-py's ``RedisCluster``: keys go to the node owning their slot
    (every key of one script call carries the same ``{hash tag}``, so it is one slot).

    The invalidation broadcast is classic PUBLISH/SUBSCRIBE, which a cluster forwards to every
    node: a replica subscribes on any one node and a publish through any node reaches it. The
    subscription moves to the next node when its node fails (``subscription`` rotates), so any
    live node serves. Sharded pub/sub (SPUBLISH) would bind the one channel to one shard, and lose
    the broadcast whenever that shard is down.
    """

    def _connect(self, url: str, max_connections: int) -> Any:
        from redis.asyncio.cluster import ClusterNode, RedisCluster
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        t = parse_topology(url)
        self._seeds = ", ".join(f"{h}:{p}" for h, p in t.nodes)
        self._next_node = 0

        # One retry (after redis-py refreshes the slot map: a moved slot, a failover), no
        # backoff: this is a cache, and a request waiting on a broken cluster is worse than one
        # served from the store. (redis-py's default retries 3 times with backoff: ~4 s.)
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in t.nodes], username=t.username,
            password=t.password, max_connections=max_connections,
            retry=Retry(NoBackoff(), 1), health_check_interval=30,
            socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S)

    async def check(self) -> None:
        try:
            await asyncio.wait_for(self.client.initialize(), CHECK_TIMEOUT_S)
        except CHECK_ERRORS as e:
            raise ConfigError([f"cache: no Redis Cluster node answered at {self._seeds} "
                               f"({type(e).__name__})"]) from None

    @contextlib.asynccontextmanager
    async def subscription(self, channel: str) -> AsyncIterator[Any]:
        await self.client.initialize()  # the node list (once; again after a failure)
        nodes = self.client.get_nodes()
        self._next_node += 1  # each new subscription on the next node: a dead one is left
        async with self.client.pubsub(node=nodes[self._next_node % len(nodes)]) as pubsub:
            await pubsub.subscribe(channel)
            yield pubsub

    async def close(self) -> None:
        await self.client.aclose()  # every node's connections


class SentinelRedisClient(RedisClient):
    """The master a set of sentinels names, through redis-py's ``Sentinel.master_for``: every
    new connection asks the sentinels where the master is, so after a failover the gateway
    follows it once its old connections fail."""

    def _connect(self, url: str, max_connections: int) -> Any:
        from redis.asyncio.sentinel import Sentinel

        t = parse_topology(url)
        assert t.master is not None  # parse_topology requires it
        self._master, self._sentinels_text = t.master, ", ".join(f"{h}:{p}" for h, p in t.nodes)
        timeouts: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT_S,
                                    "socket_timeout": SOCKET_TIMEOUT_S}
        self.sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(t.nodes), sentinel_kwargs=dict(timeouts))
        # (Sentinel's pool cannot block; it is left unbounded rather than failing at a cap.)
        return self.sentinel.master_for(
            t.master, db=t.db, username=t.username, password=t.password,
            health_check_interval=30, **timeouts)

    async def check(self) -> None:
        from redis.asyncio.sentinel import MasterNotFoundError

        try:
            await asyncio.wait_for(self.sentinel.discover_master(self._master), CHECK_TIMEOUT_S)
        except CHECK_ERRORS as e:
            answered = False
            for sentinel in self.sentinel.sentinels:
                try:
                    answered = answered or bool(await sentinel.ping())
                except ERRORS:
                    pass
            why = (f"no sentinel at {self._sentinels_text} names a master {self._master!r}"
                   if answered and isinstance(e, MasterNotFoundError) else
                   f"no sentinel answered at {self._sentinels_text} ({type(e).__name__})")
            raise ConfigError([f"cache: {why}"]) from None

    async def close(self) -> None:
        await super().close()
        for sentinel in self.sentinel.sentinels:
            await sentinel.aclose()


# One table: the cache URL's scheme -> the client class for that topology.
CLIENTS: dict[str, type[RedisClient]] = {
    "redis": RedisClient,
    "rediss": RedisClient,
    "redis+cluster": ClusterRedisClient,
    "redis+sentinel": SentinelRedisClient,
}


def make_redis(url: str) -> RedisClient:
    return CLIENTS[url.split("://", 1)[0]](url)
