"""The usage aggregate kept between flushes: counts, days and client addresses (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.metrics import Metrics
from gateway.usage import MAX_EVENT_KEYS, MAX_IPS_PER_FLUSH, UsageRecorder


def recorder() -> UsageRecorder:
    return UsageRecorder(store=None, interval_s=1, metrics=Metrics(),  # type: ignore[arg-type]
                         clock=lambda: datetime.now(UTC))


def test_addresses_are_counted_with_their_last_time_and_bounded_per_flush():
    rec = recorder()
    t0 = datetime(2026, 11, 23, 12, tzinfo=UTC)
    for i in range(3):
        rec.hit("tok_a", "10.0.0.1", t0 + timedelta(seconds=i))
    for i in range(MAX_IPS_PER_FLUSH + 10):
        rec.hit("tok_a", f"10.1.0.{i}", t0)
    [usage], _ = rec._take()
    assert usage.count == 3 + MAX_IPS_PER_FLUSH + 10
    assert len(usage.ips) == MAX_IPS_PER_FLUSH
    assert usage.ips["10.0.0.1"] == [t0 + timedelta(seconds=2), 3]


def test_a_failed_flush_merges_its_addresses_back():
    rec = recorder()
    t0 = datetime(2026, 11, 23, 12, tzinfo=UTC)
    rec.hit("tok_a", "10.0.0.1", t0)
    batch = rec._take()
    rec.hit("tok_a", "10.0.0.1", t0 + timedelta(minutes=1))
    rec.hit("tok_a", "10.0.0.2", t0)
    rec._put_back(*batch)
    [usage], _ = rec._take()
    assert usage.count == 3
    assert usage.ips == {"10.0.0.1": [t0 + timedelta(minutes=1), 2], "10.0.0.2": [t0, 1]}


def test_events_are_bounded_per_batch_and_overflow_keeps_its_count():
    rec = recorder()
    extra = 250
    for i in range(MAX_EVENT_KEYS + extra):
        rec.event("auth_failed", "unknown", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    rec.event("auth_failed", "unknown", "10.0.0.0")  # a kept key still counts in place
    rec.event("rate_limited", "client_ip", "192.0.2.1")  # past the cap: folded by its type
    assert len(rec._events) == MAX_EVENT_KEYS
    _, events = rec._take()
    folded = [e for e in events if e.details.get("folded")]
    assert {(e.type, e.details["reason"], e.details["count"], e.ip, e.token_id) for e in folded} \
        == {("auth_failed", "unknown", extra, None, None), ("rate_limited", "client_ip", 1, None,
                                                            None)}
    assert sum(e.details["count"] for e in events) == MAX_EVENT_KEYS + extra + 2
    kept = next(e for e in events if e.ip == "10.0.0.0")
    assert kept.details["count"] == 2
    assert rec._metrics.registry.get_sample_value("authgate_events_folded_total") == extra + 1


def test_events_stay_bounded_while_the_store_is_down():
    rec = recorder()
    total = 0
    for batch in range(3):  # three failed flushes, each putting its batch back
        for i in range(MAX_EVENT_KEYS):
            rec.event("auth_failed", "unknown", f"b{batch}-{i}")
            total += 1
        usage, events = rec._take()
        rec._put_back(usage, events)
        assert len(rec._events) <= MAX_EVENT_KEYS and len(rec._folded) == (batch > 0)
    _, events = rec._take()
    assert len(events) == MAX_EVENT_KEYS + 1
    assert sum(e.details["count"] for e in events) == total
