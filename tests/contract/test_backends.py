"""The composition root on both backend pairs (SQLite + memory, PostgreSQL + Redis): which
backend each table picks, one Redis client for cache and limiter, a change seen by every
replica's pipeline, readiness, and close releasing everything. In process, no listeners."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.admin import build_admin_app
from gateway.authority import Actor
from gateway.cache import NullShared, RedisShared, make_shared
from gateway.config import RateLimit, Settings
from gateway.errors import Refusal
from gateway.ratelimit import MemoryLimiter, RedisLimiter, make_limiter
from gateway.services import Services
from tests.conftest import open_empty_store

REDIS_URL = os.environ.get("AUTHGATE_TEST_REDIS", "redis://127.0.0.1:6379/9")
PAIRS = {"sqlite+memory": ("sqlite", "memory://"), "postgresql+redis": ("postgresql", REDIS_URL)}
ACTOR = Actor("test")
OpenServices = Callable[..., Any]


@pytest.fixture(params=list(PAIRS))
def pair(request: pytest.FixtureRequest, tmp_path: Any) -> tuple[str, str]:
    kind, cache = PAIRS[request.param]
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/gw.db", cache
    return request.getfixturevalue("pg_database"), cache


@pytest.fixture
async def replicas(pair: tuple[str, str]) -> AsyncIterator[OpenServices]:
    """Open Services (replicas) on one pair, sharing its (emptied) store and cache."""
    store, cache = pair
    await (await open_empty_store(store)).close()
    if cache != "memory://":
        r = aioredis.from_url(cache)
        await r.flushdb()
        await r.aclose()
    opened: list[Services] = []

    async def open_one(**overrides: Any) -> Services:
        settings = Settings(**{"store": store, "cache": cache, "pepper": "contract",
                               "local_cache_ttl_s": 60, **overrides})
        services = await Services.open(settings)
        services.start()
        opened.append(services)
        return services

    yield open_one
    for services in opened:
        await services.close()


async def test_each_table_picks_the_backend_of_the_url(replicas: OpenServices) -> None:
    services = await replicas()
    if services.settings.cache == "memory://":
        assert isinstance(services.shared, NullShared)
        assert isinstance(services.limiter, MemoryLimiter)
    else:
        assert isinstance(services.shared, RedisShared)
        assert isinstance(services.limiter, RedisLimiter)
        # one client, one pool, one view of Redis's health for the cache and the limiter
        assert services.limiter._redis is services.shared.redis
        assert services.shared.redis.client.connection_pool.connection_kwargs["db"] == int(
            REDIS_URL.rsplit("/", 1)[1])
    assert services.store.dialect == services.settings.store.split(":", 1)[0]


async def test_a_revocation_reaches_every_replica_pipeline(replicas: OpenServices) -> None:
    a = await replicas()
    record, secret = await a.authority.create(ACTOR, subject="s", name="n", scopes=["read"])
    assert (await a.pipeline.verify(secret, None)).id == record.id  # now in a's LRU
    if a.settings.cache == "memory://":
        await a.authority.revoke(ACTOR, record.id)
        with pytest.raises(Refusal) as refused:
            await a.pipeline.verify(secret, None)
        assert refused.value.description == "the token has been revoked"
        return
    b = await replicas()
    assert (await b.pipeline.verify(secret, None)).id == record.id  # and in b's
    await a.authority.revoke(ACTOR, record.id)
    for replica in (a, b):  # the broadcast, not the 60 s TTL
        for _ in range(100):
            try:
                await replica.pipeline.verify(secret, None)
            except Refusal as refusal:
                assert refusal.description == "the token has been revoked"
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("a replica kept serving a revoked token from its cache")


async def test_replicas_share_rate_limits_exactly(replicas: OpenServices) -> None:
    a, b = await replicas(), await replicas()
    limit = RateLimit(4, 60)
    results = [await (a, b)[i % 2].limiter.hit([("k", limit)]) for i in range(8)]
    admitted = sum(r.admitted for r in results)
    shared = a.settings.cache != "memory://"
    assert admitted == (4 if shared else 8)  # memory://: each replica limits on its own


async def test_readiness_names_the_backend_that_is_down(replicas: OpenServices) -> None:
    services = await replicas()
    app = build_admin_app(services)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://admin") as client:
        assert (await client.get("/readyz")).json() == {"status": "ok"}
        if services.settings.cache != "memory://":
            down = await replicas(cache="redis://127.0.0.1:1/0")
            async with httpx.AsyncClient(transport=httpx.ASGITransport(
                    app=build_admin_app(down)), base_url="http://admin") as other:
                assert (await other.get("/readyz")).json() == {
                    "status": "degraded", "store": "ok", "cache": "down"}
            assert down.metrics.registry.get_sample_value("authgate_redis_errors_total") >= 1


async def test_close_releases_every_resource(replicas: OpenServices) -> None:
    services = await replicas()
    record, secret = await services.authority.create(ACTOR, subject="s", name="n")
    await services.pipeline.verify(secret, "192.0.2.1")
    services.usage.hit(record.id, "192.0.2.1", services.clock())
    await services.close()
    assert services._gauge_task is not None and services._gauge_task.done()
    for client in services._redis.values():
        assert client.client.connection_pool._in_use_connections == set()
    reopened = await replicas()
    assert (await reopened.authority.get(record.id)).last_used_at is not None  # flushed


def test_an_unknown_scheme_is_refused_by_each_table() -> None:
    for make in (make_shared, make_limiter):
        with pytest.raises(ValueError, match="memcached"):
            make("memcached://x", lambda url: None)
