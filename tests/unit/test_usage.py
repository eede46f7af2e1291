"""The usage aggregate kept between flushes: counts, days and client addresses (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.metrics import Metrics
from gateway.usage import MAX_IPS_PER_FLUSH, UsageRecorder


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
