"""The usage flush against real stores: a value a store cannot hold (PostgreSQL refuses NUL in
text) costs that row only, and the flushing goes on (SPEC §8: events are stored within
usage_flush_interval_s + 1 s while the store is up; nothing else is lost)."""

from __future__ import annotations

import asyncio

from gateway.metrics import Metrics
from gateway.store import EventFilter, SqlStore
from gateway.usage import UsageRecorder
from tests.conftest import Clock


async def _types(store: SqlStore) -> list[tuple[str, str | None]]:
    events = await store.list_events(EventFilter(type="auth_failed"), 100)
    return sorted((e.details["reason"], e.ip) for e in events)


async def test_a_row_the_store_refuses_costs_that_row_only(store: SqlStore, clock: Clock) -> None:
    usage = UsageRecorder(store, 0.05, Metrics(), clock)
    usage.event("auth_failed", "unknown", "10.0.0.1")
    usage.event("auth_failed", "malformed", "10.0.0.2", token_id="tok_bad\x00id")
    usage.event("auth_failed", "revoked", "10.0.0.3")
    await usage.flush()  # must not raise
    stored = await _types(store)
    assert ("unknown", "10.0.0.1") in stored and ("revoked", "10.0.0.3") in stored
    if store.dialect == "postgresql":  # refused there (SQLite holds it): dropped, not retried
        assert ("malformed", "10.0.0.2") not in stored
    assert await usage.flush() == 0 and not usage._events  # nothing left to retry forever


async def test_the_flush_loop_outlives_a_refused_batch(store: SqlStore, clock: Clock) -> None:
    usage = UsageRecorder(store, 0.05, Metrics(), clock)
    usage.start()
    try:
        usage.event("auth_failed", "malformed", "10.0.0.2", token_id="tok_bad\x00id")
        await asyncio.sleep(0.3)
        usage.event("auth_failed", "expired", "10.0.0.4")  # after the refused one
        for _ in range(40):
            await asyncio.sleep(0.05)
            if ("expired", "10.0.0.4") in await _types(store):
                break
        assert ("expired", "10.0.0.4") in await _types(store)
    finally:
        await usage.stop()
