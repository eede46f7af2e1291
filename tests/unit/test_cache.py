"""The in-process token cache and the record's JSON form (shared cache, broadcast). Pure logic;
the memory and Redis backends are held to one contract in tests/contract/test_cache.py."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.cache import MISS, LocalCache, record_from_json, record_to_json
from gateway.config import RateLimit
from gateway.store import TokenRecord

RECORD = TokenRecord(id="tok_1", subject="alice", name="ci", scopes=("read", "x:*"),
                     family="fam_1", token_hash="h", hint="agt_abcd",
                     created_at=datetime(2026, 1, 1, tzinfo=UTC), rate_limit=RateLimit(5, 60),
                     metadata={"k": "v"})


def test_the_local_cache_is_bounded_and_negative_entries_expire_first():
    now = [0.0]
    cache = LocalCache(ttl_s=5, max_entries=3, clock=lambda: now[0])
    for i in range(5):
        cache.put(str(i), RECORD)
    assert len(cache) == 3 and cache.get("0") is MISS and cache.get("4") is RECORD
    cache.put("neg", None)
    assert cache.get("neg") is None
    now[0] = 2.5  # negative entries are short-lived
    assert cache.get("neg") is MISS and cache.get("4") is RECORD
    now[0] = 6
    assert cache.get("4") is MISS


def test_a_record_survives_its_json_form():
    assert record_from_json(record_to_json(RECORD)) == RECORD
