"""Every lifecycle operation, run against SQLite and the real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from gateway.authority import Actor, TokenAuthority, public_record
from gateway.config import RateLimit, Settings
from gateway.errors import InvalidInput, NotFound, Refused
from gateway.store import SqlStore, Usage, make_store

CLI = Actor("cli:tester")


async def test_create_stores_only_the_hash_and_returns_the_secret_once(authority, store):
    record, secret = await authority.create(
        CLI, subject="alice", name="ci", scopes=["read"], rate_limit="100/minute",
        metadata={"team": "infra"}, expires_in="30d")
    assert secret.startswith("agt_") and record.hint == secret[:8]
    stored = await store.get_token(record.id)
    assert stored == record
    assert stored.token_hash == authority.hash(secret) and secret not in repr(stored)
    assert await store.get_by_hash(authority.hash(secret)) == record
    assert record.rate_limit == RateLimit(100, 60)
    assert record.expires_at == authority.clock() + timedelta(days=30)
    data = public_record(record, authority.clock())
    assert data["status"] == "active" and "token_hash" not in data
    assert data["created_at"].endswith("Z")


async def test_role_adds_its_default_scopes(authority):
    record, _ = await authority.create(CLI, subject="a", name="n", role="writer", scopes=["x"])
    assert record.scopes == ("read", "write", "x")


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"role": "nope"}, "role"),
    ({"scopes": ["bad scope"]}, "scopes"),
    ({"expires_in": "banana"}, "expires_in"),
    ({"expires_in": 0}, "expires_in"),
    ({"rate_limit": "-5/minute"}, "rate_limit"),
    ({"rate_limit": "5/fortnight"}, "rate_limit"),
    ({"subject": ""}, "subject"),
    ({"name": "x" * 201}, "name"),
    ({"name": "a\x00b"}, "name"),
    ({"metadata": {"k": "v" * 5000}}, "metadata"),
    ({"metadata": ["not", "an", "object"]}, "metadata"),
])
async def test_bad_input_is_refused_and_writes_nothing(authority, store, kwargs, field):
    args = {"subject": "alice", "name": "ci"} | kwargs
    with pytest.raises(InvalidInput) as e:
        await authority.create(CLI, **args)
    assert e.value.field == field
    assert (await authority.list())[0] == []
    assert (await authority.events())[0] == []


async def test_unknown_id_is_not_found(authority):
    for call in (authority.get("tok_nope"), authority.revoke(CLI, "tok_nope"),
                 authority.rotate(CLI, "tok_nope"), authority.delete(CLI, "tok_nope"),
                 authority.update(CLI, "tok_nope", name="x")):
        with pytest.raises(NotFound):
            await call


async def test_revoke_is_idempotent_and_audited_once(authority, clock):
    record, _ = await authority.create(CLI, subject="alice", name="ci")
    clock.advance(seconds=5)
    revoked = await authority.revoke(CLI, record.id, "leaked")
    assert revoked.status(clock()) == "revoked" and revoked.revoked_reason == "leaked"
    clock.advance(seconds=5)
    again = await authority.revoke(CLI, record.id, "other")
    assert again.revoked_at == revoked.revoked_at and again.revoked_reason == "leaked"
    types = [e.type for e in (await authority.events(token_id=record.id))[0]]
    assert types == ["token_revoked", "token_created"]


async def test_list_filters_and_newest_first(authority, clock):
    a, _ = await authority.create(CLI, subject="alice", name="1")
    b, _ = await authority.create(CLI, subject="bob", name="2", expires_in=60)
    c, _ = await authority.create(CLI, subject="alice", name="3")
    await authority.revoke(CLI, c.id)
    clock.advance(seconds=61)
    ids = lambda page: [r.id for r in page[0]]  # noqa: E731
    assert ids(await authority.list()) == [c.id, b.id, a.id]
    assert ids(await authority.list(subject="alice")) == [c.id, a.id]
    assert ids(await authority.list(status="active")) == [a.id]
    assert ids(await authority.list(status="expired")) == [b.id]
    assert ids(await authority.list(status="revoked")) == [c.id]
    with pytest.raises(InvalidInput):
        await authority.list(status="bogus")
    for bad in (0, -1, 501, True):
        with pytest.raises(InvalidInput):
            await authority.list(limit=bad)
    with pytest.raises(InvalidInput):
        await authority.list(cursor="garbage!")


async def test_cursor_pagination_survives_concurrent_inserts(authority):
    created = [(await authority.create(CLI, subject="p", name=str(i)))[0].id for i in range(25)]
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = await authority.list(subject="p", limit=7, cursor=cursor)
        seen += [r.id for r in page]
        await authority.create(CLI, subject="p", name="late")  # lands before the cursor
        if cursor is None:
            break
    assert seen == list(reversed(created))


async def test_update_changes_fields_and_is_audited(authority, clock):
    record, _ = await authority.create(CLI, subject="alice", name="ci", scopes=["read"])
    updated = await authority.update(
        CLI, record.id, name="renamed", scopes=["read", "write"], rate_limit="5/second",
        metadata={"a": 1}, expires_at=clock() + timedelta(hours=1))
    assert (updated.name, updated.scopes) == ("renamed", ("read", "write"))
    assert updated.rate_limit == RateLimit(5, 1) and updated.metadata == {"a": 1}
    assert updated.expires_at == clock() + timedelta(hours=1)
    cleared = await authority.update(CLI, record.id, rate_limit=None, expires_at=None)
    assert cleared.rate_limit is None and cleared.expires_at is None
    with pytest.raises(InvalidInput):
        await authority.update(CLI, record.id, subject="mallory")
    with pytest.raises(InvalidInput):
        await authority.update(CLI, record.id, expires_at=clock() - timedelta(seconds=1))
    assert (await authority.get(record.id)).name == "renamed"
    assert [e.type for e in (await authority.events(type="token_updated"))[0]] == [
        "token_updated", "token_updated"]


async def test_rotation_keeps_family_and_old_secret_works_during_grace(authority, store, clock):
    old, old_secret = await authority.create(CLI, subject="alice", name="ci", expires_in="30d")
    clock.advance(days=1)
    new, new_secret, rotated = await authority.rotate(CLI, old.id, "1h")
    assert new.family == old.family and new.rotated_from == old.id and new_secret != old_secret
    assert new.expires_at == clock() + timedelta(days=30)  # same lifetime length
    assert rotated.grace_until == clock() + timedelta(hours=1)
    assert rotated.status(clock()) == "active"
    assert public_record(rotated, clock())["grace_until"] is not None
    assert await store.get_by_hash(authority.hash(new_secret)) == new
    clock.advance(minutes=59)
    assert not await authority.check_replay(await authority.get(old.id), CLI)
    clock.advance(minutes=2)
    assert (await authority.get(old.id)).status(clock()) == "revoked"


async def test_replay_after_grace_revokes_the_family(authority, clock):
    old, _ = await authority.create(CLI, subject="alice", name="ci")
    new, _, _ = await authority.rotate(CLI, old.id, 60)
    clock.advance(seconds=61)
    assert await authority.check_replay(await authority.get(old.id), Actor("gateway", "10.0.0.9"))
    assert (await authority.get(new.id)).status(clock()) == "revoked"
    events, _ = await authority.events(type="token_replay_detected")
    assert len(events) == 1 and events[0].token_id == old.id and events[0].ip == "10.0.0.9"
    assert events[0].details["revoked"] == 1
    # A token revoked by hand is not a replay.
    other, _ = await authority.create(CLI, subject="bob", name="x")
    await authority.revoke(CLI, other.id)
    assert not await authority.check_replay(await authority.get(other.id), CLI)


@pytest.mark.parametrize("state", ["revoked", "expired", "rotated"])
async def test_rotation_is_refused_for_unusable_tokens(authority, clock, state):
    record, _ = await authority.create(CLI, subject="alice", name="ci", expires_in=10)
    if state == "revoked":
        await authority.revoke(CLI, record.id)
    elif state == "expired":
        clock.advance(seconds=11)
    else:
        await authority.rotate(CLI, record.id)
    with pytest.raises(Refused, match=state):
        await authority.rotate(CLI, record.id)
    for bad in ("-1s", "banana", 31 * 86400):
        with pytest.raises(InvalidInput):
            await authority.rotate(CLI, record.id, bad)


async def test_two_concurrent_rotations_yield_exactly_one_successor(store_url, settings, clock):
    stores = [make_store(store_url) for _ in range(2)]
    for s in stores:
        await s.open()
        await s.migrate()
    try:
        auths = [TokenAuthority(s, settings, clock=clock) for s in stores]
        record, _ = await auths[0].create(CLI, subject="alice", name="ci")
        for _ in range(5):
            results = await asyncio.gather(*(a.rotate(CLI, record.id) for a in auths),
                                           return_exceptions=True)
            winners = [r for r in results if not isinstance(r, BaseException)]
            assert len(winners) == 1, results
            assert all(isinstance(r, Refused) for r in results if isinstance(r, BaseException))
            family, _ = await auths[0].list(family=record.family)
            assert len([r for r in family if r.rotated_from == record.id]) == 1
            record = winners[0][0]
    finally:
        for s in stores:
            await s.close()


async def test_fifty_concurrent_creates_and_revokes_count_and_audit_each_once(authority):
    made = await asyncio.gather(*(authority.create(CLI, subject=f"s{i % 5}", name=str(i))
                                  for i in range(50)))
    assert len({r.id for r, _ in made}) == 50
    await asyncio.gather(*(authority.revoke(CLI, r.id, "bulk") for r, _ in made[:25]),
                         *(authority.revoke(CLI, r.id, "again") for r, _ in made[:25]))
    stats = await authority.stats()
    assert (stats.active, stats.revoked) == (25, 25)
    assert len((await authority.events(type="token_revoked", limit=500))[0]) == 25


async def test_bulk_revokes_by_subject_family_or_all_count_what_they_changed(authority, clock):
    _a1, _ = await authority.create(CLI, subject="alice", name="1")
    _a2, _ = await authority.create(CLI, subject="alice", name="2")
    b1, _ = await authority.create(CLI, subject="bob", name="3")
    c1, _ = await authority.create(CLI, subject="carol", name="4")
    _new, _, _ = await authority.rotate(CLI, c1.id)
    assert await authority.revoke_subject(CLI, "alice", "offboarded") == 2
    assert await authority.revoke_subject(CLI, "alice") == 0
    assert await authority.revoke_family(CLI, c1.family) == 2  # old (in grace) + new
    assert (await authority.get(b1.id)).status(clock()) == "active"
    assert await authority.revoke_all(CLI, "incident") == 1
    assert (await authority.stats()).active == 0
    types = [e.type for e in (await authority.events())[0]][:4]
    assert types == ["all_tokens_revoked", "family_revoked", "subject_tokens_revoked",
                     "subject_tokens_revoked"]
    subject_event = (await authority.events(type="subject_tokens_revoked"))[0][-1]
    assert subject_event.subject == "alice" and subject_event.details["revoked"] == 2


async def test_delete_removes_the_record_and_is_audited(authority, store):
    record, secret = await authority.create(CLI, subject="alice", name="ci")
    await authority.delete(CLI, record.id)
    assert await store.get_by_hash(authority.hash(secret)) is None
    with pytest.raises(NotFound):
        await authority.get(record.id)
    assert (await authority.events(token_id=record.id))[0][0].type == "token_deleted"


async def test_cleanup_deletes_only_long_dead_records(authority, clock):
    _keep, _ = await authority.create(CLI, subject="a", name="live")
    old_rev, _ = await authority.create(CLI, subject="a", name="old-revoked")
    _old_exp, _ = await authority.create(CLI, subject="a", name="old-expired", expires_in="1d")
    await authority.revoke(CLI, old_rev.id)
    clock.advance(days=20)
    recent, _ = await authority.create(CLI, subject="a", name="recent-revoked")
    await authority.revoke(CLI, recent.id)
    clock.advance(days=15)
    assert await authority.cleanup(CLI, "30d") == 2
    assert {r.name for r in (await authority.list())[0]} == {"live", "recent-revoked"}
    assert (await authority.events(type="tokens_cleaned_up"))[0][0].details["deleted"] == 2
    with pytest.raises(InvalidInput):
        await authority.cleanup(CLI, "banana")


async def test_usage_per_day_and_recent_addresses(authority, store, clock):
    record, _ = await authority.create(CLI, subject="a", name="b")
    day1 = clock.now
    await store.record_usage([Usage(record.id, 3, day1, "10.0.0.1", {day1.date(): 3},
                                    {"10.0.0.1": [day1, 2], "10.0.0.2": [day1, 1]})])
    clock.advance(days=2)
    day3 = clock.now
    await store.record_usage([Usage(record.id, 1, day3, "10.0.0.1", {day3.date(): 1},
                                    {"10.0.0.1": [day3, 1]})])
    per_day, ips = await authority.usage(record.id, days=3)
    assert per_day == [(day1.date(), 3), ((day1 + timedelta(days=1)).date(), 0),
                       (day3.date(), 1)]
    assert ips == [("10.0.0.1", day3, 3), ("10.0.0.2", day1, 1)]
    clock.advance(days=1)
    await authority.cleanup(CLI, "2d")  # the record stays; the stale address goes
    assert [ip for ip, _, _ in (await authority.usage(record.id))[1]] == ["10.0.0.1"]
    await authority.delete(CLI, record.id)  # deleting a record deletes its usage too
    per_day, ips = await authority.usage(record.id)
    assert ips == [] and all(n == 0 for _, n in per_day)


async def test_stats_count_each_status_recent_creations_and_top_active_subjects(authority, clock):
    for i in range(3):
        await authority.create(CLI, subject="alice", name=str(i))
    bob, _ = await authority.create(CLI, subject="bob", name="b")
    _gone, _ = await authority.create(CLI, subject="bob", name="c", expires_in=5)
    await authority.revoke(CLI, bob.id)
    clock.advance(seconds=6)
    s = await authority.stats()
    assert (s.active, s.revoked, s.expired, s.total) == (3, 1, 1, 5)
    assert s.created_24h == 5 and s.used_24h == 0
    assert s.top_subjects == [("alice", 3)]
    clock.advance(days=2)
    assert (await authority.stats()).created_24h == 0


async def test_events_filter_by_subject_time_and_type_and_page_newest_first(authority, clock):
    a, _ = await authority.create(CLI, subject="alice", name="1")
    clock.advance(hours=1)
    since = clock()
    b, _ = await authority.create(CLI, subject="bob", name="2")
    await authority.revoke(Actor("admin:tok_x", "127.0.0.1", "curl/8"), b.id)
    assert [e.token_id for e in (await authority.events(subject="alice"))[0]] == [a.id]
    assert len((await authority.events(since=since))[0]) == 2
    revoked = (await authority.events(type="token_revoked"))[0][0]
    assert (revoked.actor, revoked.ip, revoked.user_agent) == ("admin:tok_x", "127.0.0.1",
                                                              "curl/8")
    page1, cursor = await authority.events(limit=2)
    page2, end = await authority.events(limit=2, cursor=cursor)
    assert end is None and len(page1) == 2 and len(page2) == 1
    assert page1[0].id > page1[1].id > page2[0].id


async def test_migrate_is_idempotent(store):
    assert await store.migrate() == []
    assert await store.migrate() == []


async def test_pepper_changes_the_stored_hash(store, clock):
    one = TokenAuthority(store, Settings(pepper="one"), clock=clock)
    two = TokenAuthority(store, Settings(pepper="two"), clock=clock)
    _, secret = await one.create(CLI, subject="a", name="b")
    assert await store.get_by_hash(one.hash(secret)) is not None
    assert await store.get_by_hash(two.hash(secret)) is None


async def test_sql_injection_strings_are_just_data(authority):
    evil = "x'; DROP TABLE tokens; --"
    record, _ = await authority.create(CLI, subject=evil, name=evil)
    assert (await authority.list(subject=evil))[0][0].id == record.id
    assert await authority.revoke_subject(CLI, evil) == 1


async def test_store_unavailable_is_translated(tmp_path):
    from gateway.errors import StoreUnavailable

    store: SqlStore = make_store("postgresql://postgres@127.0.0.1:1/nowhere")
    with pytest.raises(StoreUnavailable):
        await store.open()
    missing = make_store(f"sqlite:///{tmp_path}/no/such/dir/x.db")
    with pytest.raises(StoreUnavailable):
        await missing.open()
