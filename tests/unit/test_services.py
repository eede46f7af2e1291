"""The composition root's lifecycle on SQLite + memory: open builds without background work,
start is once, close flushes what was counted and releases the store, whether or not started."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.authority import Actor
from gateway.cache import NULL_SHARED
from gateway.config import Settings
from gateway.ratelimit import MemoryLimiter
from gateway.services import Services
from gateway.store import open_store


def settings(tmp_path: Path) -> Settings:
    return Settings(store=f"sqlite:///{tmp_path}/s.db", pepper="unit")


async def test_open_builds_every_service_on_one_store_and_starts_nothing(tmp_path: Path) -> None:
    services = await Services.open(settings(tmp_path))
    try:
        assert services.shared is NULL_SHARED and services.cache.shared is NULL_SHARED
        assert isinstance(services.limiter, MemoryLimiter)
        assert services.pipeline.store is services.store is services.authority.store
        assert services.pipeline.limiter is services.limiter
        assert services.pipeline.cache is services.cache
        assert services.pipeline.usage is services.usage
        assert services._gauge_task is None  # the CLI's way: no background work
    finally:
        await services.close()


async def test_start_is_once_and_close_ends_the_background_work(tmp_path: Path) -> None:
    services = await Services.open(settings(tmp_path))
    services.start()
    gauge = services._gauge_task
    services.start()
    assert services._gauge_task is gauge
    await services.close()
    assert gauge is not None and gauge.done()


@pytest.mark.parametrize("background", [False, True])
async def test_close_flushes_usage_counted_in_memory(tmp_path: Path, background: bool) -> None:
    async with Services.opened(settings(tmp_path), background=background) as services:
        record, _ = await services.authority.create(Actor("t"), subject="s", name="n")
        services.usage.hit(record.id, "192.0.2.1", services.clock())
    store = await open_store(settings(tmp_path).store)
    try:
        got = await store.get_token(record.id)
        assert got is not None and got.last_used_at is not None
    finally:
        await store.close()


async def test_a_failed_build_closes_the_store_it_opened(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[bool] = []

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    import gateway.services as module
    from gateway.store.sql import SqlStore

    real_close = SqlStore.close

    async def close(self: SqlStore) -> None:
        closed.append(True)
        await real_close(self)

    monkeypatch.setattr(SqlStore, "close", close)
    monkeypatch.setattr(module, "Router", broken)
    with pytest.raises(RuntimeError, match="boom"):
        await Services.open(settings(tmp_path))
    assert closed == [True]
