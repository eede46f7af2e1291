"""Replays and revokes are recorded once, on SQLite and PostgreSQL (issue 9, finding 6).

A rotated-out token presented after its grace used to write a ``token_replay_detected`` row and
a revoke transaction on every presentation; a revoke whose clock read came before another's
revoked (and audited) the token twice. Both stores now write once, however often and from how
many processes the same thing happens.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from gateway.authority import Actor, TokenAuthority
from gateway.store import make_store

CLI = Actor("cli:tester")
GATEWAY = Actor("gateway", "10.0.0.9")


# `store` in a signature empties the database first; the tests open their own connections too.


async def _replayable(authority, clock):
    old, _ = await authority.create(CLI, subject="alice", name="ci")
    new, _, _ = await authority.rotate(CLI, old.id, 60)
    clock.advance(seconds=61)
    return old, new, await authority.get(old.id)


async def test_fifty_presentations_of_a_replayed_token_write_one_event(authority, clock):
    old, new, stale = await _replayable(authority, clock)
    # the gateway may hold the record as it was before the first replay (a cache): every
    # presentation is judged a replay, but only the first writes
    for _ in range(50):
        assert await authority.check_replay(stale, GATEWAY)
    events, _ = await authority.events(type="token_replay_detected")
    assert len(events) == 1 and events[0].token_id == old.id
    assert events[0].details["revoked"] == 1
    assert (await authority.get(new.id)).status(clock()) == "revoked"
    fresh = await authority.get(old.id)
    assert fresh.revoked_reason == "replay detected" and not fresh.is_replay(clock())
    assert [e.type for e in (await authority.events())[0]].count("family_revoked") == 0


async def test_concurrent_replays_from_two_processes_write_one_event(store, store_url, settings,
                                                                     clock):
    stores = [make_store(store_url) for _ in range(2)]
    for s in stores:
        await s.open()
        await s.migrate()
    try:
        auths = [TokenAuthority(s, settings, clock=clock) for s in stores]
        old, _new, stale = await _replayable(auths[0], clock)
        await asyncio.gather(*(auths[i % 2].check_replay(stale, GATEWAY) for i in range(50)))
        events, _ = await auths[1].events(type="token_replay_detected")
        assert len(events) == 1
        family, _ = await auths[1].list(family=old.family)
        assert {r.status(clock()) for r in family} == {"revoked"}
    finally:
        for s in stores:
            await s.close()


async def test_a_revoke_is_recorded_once_whatever_the_clocks_say(store, store_url, settings,
                                                                 clock):
    """Two replicas whose clocks differ by a second revoke the same token: the later revoke
    (with the earlier clock) changes nothing, as a repeated revoke never does."""
    stores = [make_store(store_url) for _ in range(2)]
    for s in stores:
        await s.open()
        await s.migrate()
    try:
        ahead = TokenAuthority(stores[0], settings, clock=lambda: clock() + timedelta(seconds=1))
        behind = TokenAuthority(stores[1], settings, clock=clock)
        record, _ = await ahead.create(CLI, subject="alice", name="ci")
        first = await ahead.revoke(CLI, record.id, "leaked")
        again = await behind.revoke(CLI, record.id, "other")
        assert (again.revoked_at, again.revoked_reason) == (first.revoked_at, "leaked")
        other, _ = await ahead.create(CLI, subject="bob", name="ci")
        assert await ahead.revoke_subject(CLI, "bob") == 1
        assert await behind.revoke_subject(CLI, "bob") == 0
        types = [e.type for e in (await behind.events())[0]]
        assert types.count("token_revoked") == 1
        assert (await behind.get(other.id)).revoked_reason == "revoked"
    finally:
        for s in stores:
            await s.close()


async def test_a_self_service_family_revoke_touches_its_subject_only(authority):
    mine, _ = await authority.create(CLI, subject="alice", name="a")
    assert await authority.revoke_family(CLI, mine.family, subject="bob") == 0
    assert await authority.revoke_family(CLI, mine.family, subject="alice") == 1
