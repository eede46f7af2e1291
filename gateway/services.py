"""The composition root: every service of the gateway, built from ``Settings`` in one place.

    Services.open(settings)    open the store (and nothing else that does I/O), build the rest
    services.start()           background work: cache broadcast listener, usage flushes, gauge
    services.close()           flush usage, close everything opened or started, in order

Each backend comes from its table, keyed by the URL's scheme, and is imported only when chosen:

    store     settings.store   gateway.store.DRIVERS      sqlite / postgresql (asyncpg)
    shared    settings.cache   gateway.cache.SHARED       memory (NullShared) / redis
    limiter   settings.cache   gateway.ratelimit.LIMITERS memory / redis

Optional services, built (and imported) only when configured:

    assertions  settings.identity_assertion  gateway.assertion.Assertions (keys read in open)
    legacy      settings.legacy_tokens       gateway.imports.legacy.LegacyVerifier (pipeline)

A ``redis://`` cache and limiter run on one ``RedisClient`` (one pool, one health view), made
here on first use and closed here (the class for the URL's topology: ``redis_client.CLIENTS``;
``serve`` first runs ``check_cache``). ``serve`` (proxy + admin listeners), the CLI (store and
authority only, no background work) and an in-process middleware all build the same object.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import TYPE_CHECKING

from gateway.authority import TokenAuthority, utcnow
from gateway.cache import LocalCache, SharedCache, TokenCache, make_shared
from gateway.config import Settings
from gateway.errors import StoreUnavailable
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.ratelimit import RateLimiter, make_limiter
from gateway.routes import Router
from gateway.store import STATUSES, SqlStore, open_store
from gateway.usage import UsageRecorder

if TYPE_CHECKING:
    from gateway.assertion import Assertions
    from gateway.imports.legacy import LegacyVerifier
    from gateway.redis_client import RedisClient

TOKEN_GAUGE_INTERVAL_S = 30


class Services:
    """The store, the caches, the limiter, the authority, usage, metrics, router and pipeline.

    Built by ``open`` (or directly on an opened store, as tests do); owns every long-lived
    resource it made: ``close`` releases them all.
    """

    def __init__(self, settings: Settings, store: SqlStore, metrics: Metrics | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics if metrics is not None else Metrics()
        self.clock = clock
        self._redis: dict[str, RedisClient] = {}
        self.shared: SharedCache = make_shared(settings.cache, self._redis_for)
        self.cache = TokenCache(LocalCache(settings.local_cache_ttl_s), self.shared)
        self.limiter: RateLimiter = make_limiter(settings.cache, self._redis_for)
        self.authority = TokenAuthority(store, settings, clock, invalidate=self.cache.invalidate)
        self.usage = UsageRecorder(store, settings.usage_flush_interval_s, self.metrics, clock)
        self.router = Router(settings)
        self.legacy: LegacyVerifier | None = None
        if settings.legacy_tokens:
            from gateway.imports.legacy import LegacyVerifier  # bcrypt only when configured

            cache = self.cache
            self.legacy = LegacyVerifier(
                settings.legacy_tokens, store, settings.pepper, clock=clock,
                # through the token cache, like authgate's own tokens (hits, misses, revocation)
                lookup=lambda key: cache.lookup(key, store.get_by_hash),
                forget=cache.invalidate)
        self.pipeline = Pipeline(settings, self.router, self.cache, store, self.authority,
                                 self.limiter, self.usage, self.metrics, clock,
                                 legacy=self.legacy)
        self.assertions: Assertions | None = None
        if settings.identity_assertion is not None:
            from gateway.assertion import Assertions  # PyNaCl only when configured

            ia = settings.identity_assertion
            self.assertions = Assertions(ia.ttl_s, ia.audience, clock=(
                time.time if clock is utcnow else lambda: clock().timestamp()))
        self._started = False
        self._gauge_task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, settings: Settings, metrics: Metrics | None = None,
                   clock: Callable[[], datetime] = utcnow) -> Services:
        """Open the store (SQLite migrates itself) and build everything on it; read the
        identity-assertion signing keys (creating the first) when configured."""
        store = await open_store(settings.store)
        try:
            services = cls(settings, store, metrics, clock)
            if services.assertions is not None:
                await services.assertions.start(store, background=False)
            if services.legacy is not None:
                await services.legacy.start()  # the imported bcrypt prefixes
            return services
        except BaseException:
            await store.close()
            raise

    @classmethod
    @contextlib.asynccontextmanager
    async def opened(cls, settings: Settings, *, background: bool = False,
                     metrics: Metrics | None = None,
                     clock: Callable[[], datetime] = utcnow) -> AsyncIterator[Services]:
        """``open`` (and ``start`` when ``background``), closed on the way out."""
        services = await cls.open(settings, metrics, clock)
        try:
            if background:
                services.start()
            yield services
        finally:
            await services.close()

    def _redis_for(self, url: str) -> RedisClient:
        """The process's Redis client for ``url``: one, whoever asks (cache and limiter)."""
        client = self._redis.get(url)
        if client is None:
            from gateway.redis_client import make_redis  # the topology's class, by scheme

            client = self._redis[url] = make_redis(url)
            client.on_error = self.metrics.redis_errors.inc
        return client

    async def check_cache(self) -> None:
        """``serve``'s start: a cluster or sentinel cache URL that cannot work at all (no node
        answers, no such master) stops it with ConfigError naming ``cache``."""
        for client in self._redis.values():
            await client.check()

    def start(self) -> None:
        """Background work of a serving process (the CLI runs none of it)."""
        if self._started:
            return
        self._started = True
        self.cache.start()
        self.usage.start()
        if self.assertions is not None:
            self.assertions.start_refresh()  # keys re-read every REFRESH_S (rotations)
        self._gauge_task = asyncio.create_task(self._refresh_token_gauge())

    async def close(self) -> None:
        """Flush usage and close everything (graceful shutdown: nothing counted is lost)."""
        if self._gauge_task is not None:
            self._gauge_task.cancel()
            await asyncio.gather(self._gauge_task, return_exceptions=True)
        try:
            await self.usage.stop()
        finally:
            if self.assertions is not None:
                await self.assertions.close()
            if self.legacy is not None:
                await self.legacy.close()
            await self.cache.close()
            await self.limiter.close()
            await self.shared.close()
            for client in self._redis.values():
                await client.close()
            await self.store.close()

    async def _refresh_token_gauge(self) -> None:
        while True:
            with contextlib.suppress(StoreUnavailable):
                stats = await self.store.stats(self.clock(), top=1)
                for status in STATUSES:
                    self.metrics.tokens.labels(status).set(getattr(stats, status))
            await asyncio.sleep(TOKEN_GAUGE_INTERVAL_S)
