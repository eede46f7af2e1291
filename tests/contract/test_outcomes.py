"""Requests by outcome per hour (gateway.outcomes) over SQLite and the real PostgreSQL: what the
counters gained is written under the flush's hour, summed over replicas, kept while the store is
down, and read back as a dense window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.errors import OUTCOMES
from gateway.metrics import Metrics
from gateway.outcomes import MAX_HOURS, OutcomeCounts, hour_of, hourly
from tests.conftest import Clock

H0 = datetime(2026, 11, 30, 10, tzinfo=UTC)


async def test_rows_add_up_per_hour_and_outcome_and_read_back_from_since(store):
    await store.record_outcomes([(H0, "ok", 3), (H0, "invalid_token", 1)])
    await store.record_outcomes([(H0, "ok", 2), (H0 + timedelta(hours=1), "ok", 7)])
    assert await store.outcome_counts(H0) == [
        (H0, "invalid_token", 1), (H0, "ok", 5), (H0 + timedelta(hours=1), "ok", 7)]
    assert await store.outcome_counts(H0 + timedelta(hours=1)) == [
        (H0 + timedelta(hours=1), "ok", 7)]
    await store.record_outcomes([])  # an empty batch is harmless


async def test_prune_drops_hours_before_the_cut_only(store):
    await store.record_outcomes([(H0 - timedelta(hours=2), "ok", 1), (H0, "ok", 1)])
    await store.record_outcomes([(H0, "ok", 1)], prune_before=H0)
    assert await store.outcome_counts(H0 - timedelta(days=1)) == [(H0, "ok", 2)]


async def test_counter_growth_is_filed_under_the_flush_hour_and_replicas_add_up(store):
    clock = Clock()
    clock.now = H0 + timedelta(minutes=59)
    a, b = Metrics(), Metrics()
    ca, cb = OutcomeCounts(store, a, clock), OutcomeCounts(store, b, clock)
    for _ in range(3):
        a.outcome["ok"].inc()
    a.outcome["rate_limited"].inc()
    b.outcome["ok"].inc()
    await ca.flush()
    await cb.flush()
    await ca.flush()  # nothing new: nothing added
    a.outcome["ok"].inc()
    clock.advance(minutes=2)  # the next hour
    await ca.flush()
    assert await store.outcome_counts(H0) == [
        (H0, "ok", 4), (H0, "rate_limited", 1), (H0 + timedelta(hours=1), "ok", 1)]


async def test_counts_survive_a_store_outage_and_are_written_once_it_is_back(store):
    clock = Clock()
    clock.now = H0
    metrics = Metrics()
    counts = OutcomeCounts(store, metrics, clock)
    metrics.outcome["no_credential"].inc(2)
    await store.close()
    await counts.flush()  # StoreUnavailable: kept
    metrics.outcome["no_credential"].inc()
    await counts.flush()  # still down: both batches kept, nothing counted twice
    await store.open()
    await counts.flush()
    assert await store.outcome_counts(H0) == [(H0, "no_credential", 3)]


async def test_old_hours_are_pruned_once_per_hour(store):
    old = H0 - timedelta(hours=MAX_HOURS + 1)
    await store.record_outcomes([(old, "ok", 1), (H0 - timedelta(hours=5), "ok", 1)])
    clock = Clock()
    clock.now = H0
    await OutcomeCounts(store, Metrics(), clock).flush()  # nothing counted, still prunes
    assert await store.outcome_counts(old) == [(H0 - timedelta(hours=5), "ok", 1)]


async def test_the_window_lists_every_hour_and_every_outcome(store):
    now = H0 + timedelta(minutes=30)
    await store.record_outcomes([(H0, "ok", 5), (H0 - timedelta(hours=2), "invalid_token", 2),
                                 (H0 - timedelta(hours=3), "ok", 9),  # before the window
                                 (H0, "credits_exhausted", 1)])  # an outcome of a newer replica
    hours = await hourly(store, now, 3)
    assert [h["hour"] for h in hours] == [H0 - timedelta(hours=2), H0 - timedelta(hours=1), H0]
    assert hours[0]["outcomes"] == {**dict.fromkeys(OUTCOMES, 0), "invalid_token": 2}
    assert hours[1]["outcomes"] == dict.fromkeys(OUTCOMES, 0)
    assert hours[2]["outcomes"] == {**dict.fromkeys(OUTCOMES, 0), "ok": 5,
                                    "credits_exhausted": 1}
    assert hour_of(now) == H0
