"""The limiter contract, on the in-process limiter and on the real Redis (Lua GCRA)."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.cache import RedisShared
from gateway.config import RateLimit
from gateway.ratelimit import MemoryLimiter, RedisLimiter
from tests.redis_topologies import TOPOLOGIES, flushed_url


@pytest.fixture(params=["memory", *TOPOLOGIES])
async def limiters(request):
    """Two limiters sharing state, as two replicas would (memory: one process, one limiter);
    on one Redis server, a Redis Cluster or a Sentinel-managed master."""
    if request.param == "memory":
        m = MemoryLimiter()
        yield m, m
        return
    # flushed, scripts too: as after a Redis restart, the limiter must load its script again
    url = await flushed_url(request, request.param)
    shared = [RedisShared(url), RedisShared(url)]
    failures: list[int] = []
    for s in shared:  # the per-replica fallback must not be what passed the test
        s.redis.on_error = lambda: failures.append(1)
    yield RedisLimiter(shared[0]), RedisLimiter(shared[1])
    for s in shared:
        await s.close()
    assert not failures, "Redis failed during the test: the fallback answered"


async def test_burst_of_n_then_refusal_with_retry_after(limiters):
    a, _ = limiters
    limit = RateLimit(5, 60)
    results = [await a.hit([("k1", limit)]) for _ in range(7)]
    assert [r.admitted for r in results] == [True] * 5 + [False] * 2
    assert [r.remaining for r in results[:5]] == [4, 3, 2, 1, 0]
    assert 11 <= results[5].retry_after_s <= 13  # one request frees up every 12 s
    assert results[0].reset_s in (12, 13)


async def test_concurrent_hits_from_two_replicas_never_exceed_the_limit(limiters):
    a, b = limiters
    limit = RateLimit(25, 60)
    results = await asyncio.gather(*((a, b)[i % 2].hit([("shared", limit)]) for i in range(200)))
    assert sum(r.admitted for r in results) == 25


async def test_all_limits_must_admit_and_none_is_charged_on_refusal(limiters):
    a, _ = limiters
    token, route = RateLimit(10, 60), RateLimit(2, 60)
    # one hash tag for every key of one call (one slot on a cluster), as the pipeline does
    got = [await a.hit([("t:{id1}", token), ("r:0:{id1}", route)]) for _ in range(3)]
    assert [g.admitted for g in got] == [True, True, False]
    assert got[2].limit == route  # the refusing policy is the one reported
    # the refused hit did not charge the token's own limit: 8 remain for other routes
    other = [await a.hit([("t:{id1}", token)]) for _ in range(9)]
    assert sum(o.admitted for o in other) == 8


async def test_window_refills(limiters):
    a, _ = limiters
    limit = RateLimit(2, 1)
    assert [(await a.hit([("w", limit)])).admitted for _ in range(3)] == [True, True, False]
    await asyncio.sleep(1.05)
    assert (await a.hit([("w", limit)])).admitted


async def test_redis_unreachable_falls_back_to_per_replica_limits():
    shared = RedisShared("redis://127.0.0.1:1/0")
    limiter = RedisLimiter(shared)
    results = [await limiter.hit([("x", RateLimit(2, 60))]) for _ in range(3)]
    assert [r.admitted for r in results] == [True, True, False]
    assert not shared.healthy()
    await shared.close()


# --- the in-process limiter's memory: expiry instead of eviction -------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_memory_limiter_forgets_idle_keys_without_waiting_for_a_cap():
    clock = FakeClock()
    m = MemoryLimiter(clock=clock)
    for i in range(5000):
        m.hit_now([(f"old{i}", RateLimit(10, 1))])
    clock.now += 2  # every old key's TAT has passed: its state says nothing any more
    for i in range(5000):
        m.hit_now([(f"new{i}", RateLimit(10, 1))])
    assert len(m) < 5500, len(m)


def test_memory_limiter_never_gives_up_a_key_over_its_limit():
    clock = FakeClock()
    m = MemoryLimiter(max_keys=1000, clock=clock)
    victim = [("victim", RateLimit(1, 3600))]
    assert m.hit_now(victim).admitted and not m.hit_now(victim).admitted
    for i in range(20_000):  # far past the cap, every key live (under its limit)
        m.hit_now([(f"k{i}", RateLimit(100, 3600))])
    assert not m.hit_now(victim).admitted  # still limited
    assert len(m) <= 1500, len(m)  # live keys under their limit were given up instead


def _insert(m: MemoryLimiter, prefix: str, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        m.hit_now([(f"{prefix}{i}", RateLimit(100, 3600))])
    return time.perf_counter() - started


def test_memory_limiter_inserting_past_the_cap_stays_cheap():
    """Relative, not absolute: new keys past the cap cost about what new keys cost below it
    (the old limiter rebuilt its whole dict for each one: ~1,000x here)."""
    cap, n = 20_000, 5000
    below, past = [], []
    for _ in range(3):  # best of three: the machine is shared
        below.append(_insert(MemoryLimiter(max_keys=cap, clock=FakeClock()), "k", n))
        full = MemoryLimiter(max_keys=cap, clock=FakeClock())
        _insert(full, "fill", cap)
        past.append(_insert(full, "k", n))
    ratio = min(past) / min(below)
    print(f"new key below the cap {min(below) / n * 1e6:.2f} us, past it "
          f"{min(past) / n * 1e6:.2f} us (x{ratio:.2f})")
    assert ratio < 10


# --- named limits (SPEC §13): hit_quota, the call tokens with named limits or credits use -------


async def test_named_limits_all_must_admit_and_each_reports_its_own_state(limiters):
    a, _ = limiters
    burst, hourly = RateLimit(3, 1), RateLimit(5, 3600)
    limits = [("t:{tok}:burst", burst), ("t:{tok}:hourly", hourly)]
    first = await a.hit_quota(limits, None, 0)
    assert first.admitted and first.credits == -1
    assert first.parts[0][0] == 2 and first.parts[1][0] == 4
    assert first.limit == burst and first.remaining == 2  # the tightest: fewest remaining
    got = [await a.hit_quota(limits, None, 0) for _ in range(3)]
    assert [g.admitted for g in got] == [True, True, False]
    assert got[2].limit == burst and got[2].index == 0 and got[2].retry_after_s >= 1
    assert got[2].parts[1][0] == 2  # the refused request charged the hourly limit nothing
    await asyncio.sleep(1.1)  # the burst window passes; the hourly limit holds 2 more
    later = [await a.hit_quota(limits, None, 0) for _ in range(3)]
    assert [g.admitted for g in later] == [True, True, False]
    assert later[2].limit == hourly and later[2].index == 1
    assert later[2].retry_after_s > 600  # one hourly request frees up every 12 minutes


async def test_named_limits_are_exact_across_two_replicas(limiters):
    a, b = limiters
    limits = [("t:{x}:burst", RateLimit(1000, 60)), ("t:{x}:daily", RateLimit(17, 86400))]
    results = await asyncio.gather(*((a, b)[i % 2].hit_quota(limits, None, 0)
                                     for i in range(150)))
    assert sum(r.admitted for r in results) == 17


async def test_an_empty_credit_counter_refuses_and_charges_no_limit(limiters):
    a, b = limiters
    limits = [("t:{c}", RateLimit(10, 60))]
    empty = await a.hit_quota(limits, "{c}:0", 7)
    assert not empty.admitted and empty.short and empty.parts[0][0] == 10
    await b.add_credits("{c}:0", 7, 2)  # a lease, put in by the other replica
    got = [await (a, b)[i % 2].hit_quota(limits, "{c}:0", 7) for i in range(3)]
    assert [g.admitted for g in got] == [True, True, False]
    assert [g.credits for g in got] == [1, 0, 0] and got[2].short
    assert got[2].parts[0][0] == 8  # two charged, the refused one not
    # a new period: what the counter held for the old one is gone
    await a.add_credits("{c}:0", 7, 5)
    assert not (await a.hit_quota(limits, "{c}:0", 8)).admitted
