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
    monitor     settings.alerts              gateway.monitor.Watcher (checks, outbox; started
                                             in ``start`` only: the CLI runs it by hand)

A ``redis://`` cache and limiter run on one ``RedisClient`` (one redis-py pool, plus on a single
server the limiter's pipelined script connection, ``gateway.redis_scripts``; one health view), made
here on first use and closed here (the class for the URL's topology: ``redis_client.CLIENTS``;
``serve`` first runs ``check_cache``). ``serve`` (proxy + admin listeners), the CLI (store and
authority only, no background work) and an in-process middleware all build the same object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import TYPE_CHECKING

from gateway import reload
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
    from gateway.access_log import AccessLog
    from gateway.assertion import Assertions
    from gateway.imports.legacy import LegacyVerifier
    from gateway.monitor import Watcher
    from gateway.redis_client import RedisClient

TOKEN_GAUGE_INTERVAL_S = 30
log = logging.getLogger("authgate")


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
        self.monitor: Watcher | None = None
        if settings.alerts is not None:
            self._make_monitor(settings)
        self._started = False
        self._gauge_task: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Task[None]] = set()  # watchers turned off by a reload
        # Called with the new settings after each reload (SIGHUP), e.g. the alerts watcher's.
        self.on_reload: list[Callable[[Settings], object]] = [self._reload_monitor]
        # The access log's writer: made by ``serve`` (gateway.app), not by the CLI or middleware.
        self.access_log: AccessLog | None = None

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
        if self.monitor is not None:
            self.monitor.start()  # the watcher (one replica at a time) and the outbox worker

    async def close(self) -> None:
        """Flush usage and close everything (graceful shutdown: nothing counted is lost)."""
        if self._gauge_task is not None:
            self._gauge_task.cancel()
            await asyncio.gather(self._gauge_task, return_exceptions=True)
        if self.monitor is not None:
            await self.monitor.stop()  # hands the watcher's lease over at once
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)
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

    def _make_monitor(self, settings: Settings) -> Watcher:
        from gateway.monitor import Watcher  # off the request path; nothing when null

        assert settings.alerts is not None
        monitor = self.monitor = Watcher(settings.alerts, self.store, self.authority,
                                         self.metrics, self.clock)
        self.authority.on_replay = monitor.replayed  # raised where it happens
        return monitor

    def _reload_monitor(self, settings: Settings) -> None:
        """``alerts`` on reload: a changed config goes to the running watcher; turned on, a
        watcher starts (in a serving process); turned off, the running one stops (handing its
        lease over) in the background."""
        if settings.alerts is not None:
            if self.monitor is not None:
                self.monitor.reconfigure(settings.alerts)
                return
            monitor = self._make_monitor(settings)
            if self._started:
                monitor.start()
        elif self.monitor is not None:
            monitor, self.monitor = self.monitor, None
            self.authority.on_replay = None
            if self._started:
                task = asyncio.get_running_loop().create_task(monitor.stop())
                self._stopping.add(task)
                task.add_done_callback(self._stopping.discard)

    def reload(self, settings: Settings) -> Settings:
        """Take what a reload may change (``gateway.reload.RELOADABLE``: routes, roles,
        limits, trusted proxies, alerts, the access log) from ``settings``; keep the rest.
        Swaps the router, the pipeline's settings-derived fields and the access log, then calls
        each ``on_reload`` hook with the settings in effect, which it returns. A request in
        flight finishes on what it started with."""
        merged = reload.merged(self.settings, settings)
        router = Router(merged)
        self.settings = merged
        self.router = router
        self.authority.settings = merged  # roles
        self.pipeline.reconfigure(merged, router)
        self.apply_access_log()
        for hook in self.on_reload:
            try:
                hook(merged)
            except Exception as e:  # one failing hook must not keep the others from the news
                log.error("reload: a hook failed (%s: %s)", getattr(hook, "__qualname__", hook),
                          type(e).__name__)
        return merged

    def apply_access_log(self) -> None:
        """Point the pipeline at the access log when ``access_log`` is on (and ``serve`` made
        one)."""
        log = self.access_log
        if log is None:
            return
        if self.settings.access_log:
            log.start()
            self.pipeline.access_log = log
        else:
            self.pipeline.access_log = None

    async def _refresh_token_gauge(self) -> None:
        while True:
            with contextlib.suppress(StoreUnavailable):
                stats = await self.store.stats(self.clock(), top=1)
                for status in STATUSES:
                    self.metrics.tokens.labels(status).set(getattr(stats, status))
            await asyncio.sleep(TOKEN_GAUGE_INTERVAL_S)
