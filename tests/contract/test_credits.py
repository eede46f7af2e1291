"""Usage credits (SPEC §13) over every pair of backends: the limiter's counter (memory, real
Redis shared by two replicas) and the store's balance (SQLite, PostgreSQL).

What a user would notice: exactly C requests admitted with C credits however many arrive at
once and on however many replicas; a refused request (rate limit or credits) costs nothing; the
balance comes back at the refill; a restart (or a Redis that lost its data) never hands out a
credit twice.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from gateway.authority import Actor
from gateway.cache import RedisShared
from gateway.config import RateLimit
from gateway.credits import CreditKeeper, charge, counter_key, lease_size, period_of
from gateway.ratelimit import MemoryLimiter, RedisLimiter

REDIS_URL = os.environ.get("AUTHGATE_TEST_REDIS", "redis://127.0.0.1:6379/9")
ADMIN = Actor("test")


@pytest.fixture(params=["memory", "redis"])
async def replicas(request):
    """Two limiters sharing state, as two replicas would (memory: one process, one limiter)."""
    if request.param == "memory":
        m = MemoryLimiter()
        yield m, m
        return
    r = aioredis.from_url(REDIS_URL)
    await r.flushdb()
    await r.script_flush()
    await r.aclose()
    shared = [RedisShared(REDIS_URL), RedisShared(REDIS_URL)]
    yield RedisLimiter(shared[0]), RedisLimiter(shared[1])
    for s in shared:
        await s.close()


async def _token(authority, credits, rate_limit=None):
    record, _ = await authority.create(ADMIN, subject="s", name="n", rate_limit=rate_limit,
                                       credits=credits)
    return record


async def _balance(store, token_id):
    return (await store.get_token(token_id)).credits.remaining


async def test_concurrent_requests_on_two_replicas_admit_exactly_the_credits(
        replicas, store, authority, clock):
    record = await _token(authority, {"remaining": 37, "refill": None})
    keepers = [CreditKeeper(store, limiter) for limiter in replicas]
    now = clock()

    async def one(i):
        limiter = replicas[i % 2]
        return await charge(limiter, keepers[i % 2], record.id, [], record.credits, now)

    results = await asyncio.gather(*(one(i) for i in range(120)))
    assert sum(r.admitted for r in results) == 37
    refused = [r for r in results if not r.admitted]
    assert all(r.short for r in refused)  # refused for credits, not a limit
    assert await _balance(store, record.id) == 0
    # and nothing more later, on either replica
    again = await charge(replicas[1], keepers[1], record.id, [], record.credits, now)
    assert not again.admitted and again.short


async def test_a_request_refused_by_a_rate_limit_costs_no_credit(replicas, store, authority,
                                                                 clock):
    record = await _token(authority, {"remaining": 10, "refill": None})
    keeper = CreditKeeper(store, replicas[0])
    limits = [(f"t:{{{record.id}}}", RateLimit(2, 3600))]
    got = [await charge(replicas[0], keeper, record.id, limits, record.credits, clock())
           for _ in range(5)]
    assert [g.admitted for g in got] == [True, True, False, False, False]
    assert not any(g.short for g in got)  # refused by the limit, with the limit's Retry-After
    assert got[2].retry_after_s > 0
    # 8 credits are left: with no limit in the way, exactly 8 more are admitted
    more = [await charge(replicas[0], keeper, record.id, [], record.credits, clock())
            for _ in range(10)]
    assert sum(m.admitted for m in more) == 8


async def test_a_request_refused_for_credits_charges_no_limit(replicas, store, authority, clock):
    record = await _token(authority, {"remaining": 1, "refill": None})
    keeper = CreditKeeper(store, replicas[0])
    limits = [(f"t:{{{record.id}}}", RateLimit(3, 3600))]
    first = await charge(replicas[0], keeper, record.id, limits, record.credits, clock())
    assert first.admitted and first.parts[0][0] == 2 and first.parts[0][1] in (1200, 1201)
    for _ in range(3):
        refused = await charge(replicas[0], keeper, record.id, limits, record.credits, clock())
        assert refused.short and not refused.admitted
        assert refused.parts[0][0] == 2  # the limit still has 2: nothing was charged


async def test_refill_restores_the_amount_at_the_next_period(replicas, store, authority, clock):
    clock.now = datetime(2026, 3, 31, 23, 59, tzinfo=UTC)
    record = await _token(authority, {"remaining": 3, "refill": {"amount": 5,
                                                                 "interval": "month"}})
    keeper = CreditKeeper(store, replicas[0])
    march = [await charge(replicas[0], keeper, record.id, [], record.credits, clock())
             for _ in range(5)]
    assert sum(r.admitted for r in march) == 3
    clock.now = datetime(2026, 4, 1, 0, 0, 1, tzinfo=UTC)  # the 1st, 00:00 UTC: refilled
    april = [await charge(replicas[0], keeper, record.id, [], record.credits, clock())
             for _ in range(8)]
    assert sum(r.admitted for r in april) == 5  # set to the amount, not added to what was left
    assert period_of("month", clock()) == period_of("month", datetime(2026, 3, 31,
                                                                     tzinfo=UTC)) + 1


async def test_a_replica_with_a_late_clock_gets_no_second_refill(replicas, store, authority,
                                                                 clock):
    clock.now = datetime(2026, 4, 30, 23, 59, 50, tzinfo=UTC)
    record = await _token(authority, {"remaining": 0, "refill": {"amount": 4,
                                                                 "interval": "day"}})
    assert not (await charge(replicas[0], CreditKeeper(store, replicas[0]), record.id, [],
                             record.credits, clock())).admitted  # nothing before midnight
    clock.now = datetime(2026, 5, 1, 0, 0, 5, tzinfo=UTC)
    keeper = CreditKeeper(store, replicas[0])
    today = [await charge(replicas[0], keeper, record.id, [], record.credits, clock())
             for _ in range(6)]
    assert sum(r.admitted for r in today) == 4
    late = datetime(2026, 4, 30, 23, 59, 59, tzinfo=UTC)  # another replica, 6 s behind
    other = CreditKeeper(store, replicas[1])
    behind = [await charge(replicas[1], other, record.id, [], record.credits, late)
              for _ in range(3)]
    assert not any(r.admitted for r in behind)


async def test_restart_keeps_the_balance_and_never_grants_a_credit_twice(
        replicas, store, authority, clock):
    record = await _token(authority, {"remaining": 50, "refill": None})
    keeper = CreditKeeper(store, replicas[0])
    spent = [await charge(replicas[0], keeper, record.id, [], record.credits, clock())
             for _ in range(12)]
    assert all(r.admitted for r in spent)
    # The restart: a fresh process (memory) or a Redis that lost its data.
    if isinstance(replicas[0], RedisLimiter):
        r = aioredis.from_url(REDIS_URL)
        await r.flushdb()
        await r.aclose()
        fresh = replicas[1]
    else:
        fresh = MemoryLimiter()
    after = CreditKeeper(store, fresh)
    admitted = sum([(await charge(fresh, after, record.id, [], record.credits, clock())).admitted
                    for _ in range(60)])
    lease = lease_size(record.credits)
    assert 50 - 12 - lease <= admitted <= 50 - 12  # at most one lease lost, never more granted


async def test_a_new_balance_through_the_api_starts_a_new_counter(replicas, store, authority,
                                                                  clock):
    record = await _token(authority, {"remaining": 2, "refill": None})
    keeper = CreditKeeper(store, replicas[0])
    used = [await charge(replicas[0], keeper, record.id, [], record.credits, clock())
            for _ in range(3)]
    assert [u.admitted for u in used] == [True, True, False]
    topped = await authority.update(ADMIN, record.id, credits={"remaining": 3, "refill": None})
    assert topped.credits.generation == record.credits.generation + 1
    assert counter_key(record.id, topped.credits) != counter_key(record.id, record.credits)
    again = [await charge(replicas[0], keeper, record.id, [], topped.credits, clock())
             for _ in range(4)]
    assert [a.admitted for a in again] == [True, True, True, False]
    # the old generation's record (a stale cache) can take nothing from the new balance
    stale = await charge(replicas[1], CreditKeeper(store, replicas[1]), record.id, [],
                         record.credits, clock())
    assert not stale.admitted


async def test_rotation_moves_the_balance_to_the_successor(store, authority, clock):
    limiter = MemoryLimiter()
    record = await _token(authority, {"remaining": 30, "refill": {"amount": 30,
                                                                  "interval": "day"}})
    keeper = CreditKeeper(store, limiter)
    for _ in range(5):
        assert (await charge(limiter, keeper, record.id, [], record.credits, clock())).admitted
    successor, _, _ = await authority.rotate(ADMIN, record.id)
    stored = await store.get_token(successor.id)
    old = await store.get_token(record.id)
    # what the old token had not leased out moves; the old one keeps only its open lease
    lease = lease_size(record.credits)  # 3: five requests took two leases
    assert stored.credits.remaining == 30 - 2 * lease
    assert stored.credits.refill_amount == 30
    assert old.credits.remaining == 0 and old.credits.refill_amount is None
    new_keeper = CreditKeeper(store, limiter)
    admitted = sum([(await charge(limiter, new_keeper, successor.id, [], stored.credits,
                                  clock())).admitted for _ in range(40)])
    assert admitted == stored.credits.remaining


async def test_store_unreachable_during_a_lease_is_an_error_not_a_grant(store, authority,
                                                                        clock):
    from gateway.errors import StoreUnavailable

    record = await _token(authority, {"remaining": 5, "refill": None})
    await store.close()
    limiter = MemoryLimiter()
    with pytest.raises(StoreUnavailable):
        await charge(limiter, CreditKeeper(store, limiter), record.id, [], record.credits,
                     clock())


async def test_a_lease_abandoned_by_a_cancelled_request_leaves_the_waiters_working(store,
                                                                                   authority,
                                                                                   clock):
    record = await _token(authority, {"remaining": 4, "refill": None})
    limiter = MemoryLimiter()
    keeper = CreditKeeper(store, limiter)
    gate = asyncio.Event()
    take = store.take_credits

    async def slow_take(*args):
        await gate.wait()
        return await take(*args)

    store.take_credits = slow_take
    first = asyncio.create_task(charge(limiter, keeper, record.id, [], record.credits, clock()))
    await asyncio.sleep(0.05)
    waiter = asyncio.create_task(charge(limiter, keeper, record.id, [], record.credits, clock()))
    await asyncio.sleep(0.05)
    first.cancel()  # the client left while its request held the lease call
    gate.set()
    assert (await waiter).admitted
    with pytest.raises(asyncio.CancelledError):
        await first
