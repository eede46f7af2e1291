"""The TokenStore protocol itself, on SQLite and the real PostgreSQL: what each method promises
when called directly (test_authority.py drives most of them through the authority's checks).

Every method is one transaction: a call that changes nothing writes no audit event.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from gateway.config import RateLimit
from gateway.errors import StoreUnavailable
from gateway.store import (
    Event,
    EventFilter,
    Revoked,
    SqlStore,
    TokenFilter,
    TokenRecord,
    Usage,
    make_store,
)

NOW = datetime.now(UTC).replace(microsecond=123456)


def token(n: int, *, subject: str = "alice", family: str | None = None,
          created_at: datetime = NOW, **kw: object) -> TokenRecord:
    fields: dict[str, object] = {"scopes": ("read",)} | kw
    return TokenRecord(id=f"tok_{n}", subject=subject, name=f"t{n}", family=family or f"fam_{n}",
                       token_hash=f"hash_{n}", hint="agt_abcd", created_at=created_at,
                       **fields)  # type: ignore[arg-type]


def event(type_: str = "test", at: datetime = NOW, **kw: object) -> Event:
    return Event(type=type_, actor="cli:tester", at=at, **kw)  # type: ignore[arg-type]


async def insert(store: SqlStore, *records: TokenRecord) -> None:
    for r in records:
        await store.insert_token(r, event("token_created", token_id=r.id, subject=r.subject))


async def types(store: SqlStore) -> list[str]:
    return [e.type for e in await store.list_events(EventFilter(), 500)]


async def other_store(url: str) -> SqlStore:
    """A second connection (pool) to the same database: another replica."""
    s = make_store(url)
    await s.open()
    return s


# --- lifecycle ---------------------------------------------------------------------------------


async def test_ping_answers_while_open_and_a_closed_store_is_unavailable(store_url):
    s = make_store(store_url)
    await s.open()
    await s.migrate()
    await s.ping()
    await s.close()
    with pytest.raises(StoreUnavailable):
        await s.ping()
    await s.close()  # closing twice is harmless


# --- values round-trip exactly -------------------------------------------------------------------


async def test_a_record_reads_back_as_written_times_json_and_limits_included(store):
    record = token(1, scopes=("read", "x:*"), rate_limit=RateLimit(5, 60),
                   metadata={"team": "infra", "list": [1, 2.5, True, None, "é"],
                             "nested": {"a": {"b": "c"}}, "big": 2**53 + 1},
                   expires_at=NOW + timedelta(days=3, microseconds=7))
    await insert(store, record)
    stored = await store.get_token(record.id)
    assert stored == record
    assert stored.created_at.utcoffset() == timedelta(0)
    assert await store.get_by_hash(record.token_hash) == record


async def test_unknown_ids_and_hashes_read_as_none(store):
    assert await store.get_token("tok_nope") is None
    assert await store.get_by_hash("nope") is None


# --- changes that find nothing write nothing ---------------------------------------------------


async def test_changes_to_an_unknown_token_return_none_and_write_no_event(store):
    assert await store.update_token("tok_nope", {"name": "x"}, event()) is None
    assert await store.revoke_token("tok_nope", "r", event()) == (None, False)
    assert await store.delete_token("tok_nope", event()) is None
    assert await store.rotate_token("tok_nope", token(2), NOW, event()) is None
    assert await store.get_token("tok_2") is None  # the successor was not inserted either
    assert await types(store) == []


async def test_update_sets_and_clears_each_changeable_field(store):
    await insert(store, token(1, rate_limit=RateLimit(5, 60), expires_at=NOW + timedelta(days=1)))
    updated = await store.update_token("tok_1", {
        "name": "renamed", "scopes": ("a", "b"), "metadata": {"k": [1]},
        "rate_limit": None, "expires_at": None}, event("token_updated"))
    assert updated is not None
    assert (updated.name, updated.scopes, updated.metadata) == ("renamed", ("a", "b"), {"k": [1]})
    assert updated.rate_limit is None and updated.expires_at is None
    assert await store.get_token("tok_1") == updated
    with pytest.raises(KeyError):
        await store.update_token("tok_1", {"subject": "mallory"}, event())
    assert await types(store) == ["token_updated", "token_created"]


async def test_a_refused_rotation_inserts_no_successor(store):
    await insert(store, token(1, expires_at=NOW - timedelta(seconds=1)))
    assert await store.rotate_token("tok_1", token(2, family="fam_1"), NOW + timedelta(hours=1),
                                    event("token_rotated")) is None
    assert await store.get_token("tok_2") is None
    assert await types(store) == ["token_created"]


# --- bulk revokes ------------------------------------------------------------------------------


async def test_revoke_many_returns_what_caches_must_drop_and_skips_the_unusable(store):
    await insert(store, token(1), token(2), token(3, expires_at=NOW - timedelta(seconds=1)),
                 token(4, subject="bob"))
    await store.revoke_token("tok_2", "by hand", event("token_revoked", at=NOW))
    done = await store.revoke_many(TokenFilter(subject="alice"), "offboarded",
                                   event("subject_tokens_revoked", at=NOW + timedelta(seconds=1)))
    assert done == [Revoked("tok_1", "hash_1")]  # not the revoked one, not the expired one
    assert (await store.get_token("tok_4")).revoked_at is None
    events = await store.list_events(EventFilter(type="subject_tokens_revoked"), 10)
    assert events[0].details["revoked"] == 1
    # Nothing left to revoke: an empty list, and still one audit event saying so.
    assert await store.revoke_many(TokenFilter(subject="alice"), "again", event("again")) == []
    assert (await store.list_events(EventFilter(type="again"), 10))[0].details["revoked"] == 0


async def test_revoke_many_ignores_a_status_filter(store):
    """What may be revoked is fixed (active, or in a rotation grace): a status in the filter
    cannot widen or narrow it."""
    await insert(store, token(1), token(2))
    done = await store.revoke_many(TokenFilter(status="expired"), "all", event())
    assert sorted(r.id for r in done) == ["tok_1", "tok_2"]


async def _rotated_family(store: SqlStore) -> None:
    """tok_1 rotated out to tok_2 at NOW - 2h with a one-hour grace (ended at NOW - 1h)."""
    rotated_at = NOW - timedelta(hours=2)
    await insert(store, token(1, family="fam", created_at=rotated_at - timedelta(days=1)))
    successor = token(2, family="fam", created_at=rotated_at, rotated_from="tok_1")
    assert await store.rotate_token("tok_1", successor, rotated_at + timedelta(hours=1),
                                    event("token_rotated", at=rotated_at)) is not None


async def test_revoke_replayed_claims_the_family_once_and_returns_every_member(store):
    await _rotated_family(store)
    done = await store.revoke_replayed("fam", "replay detected", event("token_replay_detected"))
    assert done == [Revoked("tok_1", "hash_1"), Revoked("tok_2", "hash_2")]
    assert {(await store.get_token(t)).revoked_reason for t in ("tok_1", "tok_2")} == {
        "replay detected"}
    assert await store.revoke_replayed("fam", "replay detected", event("again")) is None
    assert "again" not in await types(store)


async def test_revoke_replayed_finds_nothing_in_a_family_not_rotated_or_still_in_grace(store):
    await insert(store, token(1, family="plain"))
    assert await store.revoke_replayed("plain", "replay detected", event()) is None
    assert await store.revoke_replayed("nope", "replay detected", event()) is None
    in_grace = NOW + timedelta(hours=1)
    assert await store.rotate_token("tok_1", token(2, family="plain"), in_grace,
                                    event("token_rotated")) is not None
    assert await store.revoke_replayed("plain", "replay detected", event("replay")) is None
    assert (await store.get_token("tok_2")).revoked_at is None
    assert await types(store) == ["token_rotated", "token_created"]


async def test_concurrent_revoke_replayed_on_two_replicas_has_exactly_one_winner(store,
                                                                                store_url):
    await _rotated_family(store)
    replicas = [store, await other_store(store_url)]
    try:
        results = await asyncio.gather(*(
            replicas[i % 2].revoke_replayed("fam", "replay detected",
                                            event("token_replay_detected"))
            for i in range(20)))
    finally:
        await replicas[1].close()
    winners = [r for r in results if r is not None]
    assert len(winners) == 1 and {r.id for r in winners[0]} == {"tok_1", "tok_2"}
    assert (await types(store)).count("token_replay_detected") == 1


# --- cleanup -----------------------------------------------------------------------------------


async def test_cleanup_counts_what_it_deleted_and_drops_their_usage(store):
    old = NOW - timedelta(days=40)
    await insert(store, token(1, expires_at=old), token(2))
    await store.record_usage([Usage("tok_1", 1, old, "10.0.0.1", {old.date(): 1},
                                    {"10.0.0.1": [old, 1]})])
    assert await store.cleanup(NOW - timedelta(days=30), event("tokens_cleaned_up")) == 1
    assert await store.get_token("tok_1") is None and await store.get_token("tok_2") is not None
    assert await store.daily_usage("tok_1", old.date()) == []
    assert await store.recent_ips("tok_1") == []
    assert await store.cleanup(NOW - timedelta(days=30), event("tokens_cleaned_up")) == 0
    cleaned = await store.list_events(EventFilter(type="tokens_cleaned_up"), 10)
    assert [e.details["deleted"] for e in cleaned] == [0, 1]  # audited even when nothing went


# --- stats -------------------------------------------------------------------------------------


async def test_stats_of_an_empty_store_are_zero(store):
    s = await store.stats(NOW)
    assert (s.total, s.active, s.revoked, s.expired, s.created_24h, s.used_24h) == (0,) * 6
    assert s.top_subjects == []


async def test_stats_top_subjects_are_bounded_and_ordered_by_count_then_name(store):
    await insert(store, token(1, subject="carol"), token(2, subject="bob"),
                 token(3, subject="alice"), token(4, subject="bob"),
                 token(5, subject="dave", created_at=NOW - timedelta(days=2)))
    await store.record_usage([Usage("tok_1", 1, NOW, None)])
    s = await store.stats(NOW, top=3)
    assert s.top_subjects == [("bob", 2), ("alice", 1), ("carol", 1)]
    assert (s.created_24h, s.used_24h) == (4, 1)


# --- usage -------------------------------------------------------------------------------------


async def test_usage_batches_add_up_and_an_older_batch_never_moves_last_use_back(store):
    await insert(store, token(1))
    later, earlier = NOW + timedelta(minutes=5), NOW
    await store.record_usage([Usage("tok_1", 2, later, "10.0.0.2", {later.date(): 2},
                                    {"10.0.0.2": [later, 2]})])
    await store.record_usage([Usage("tok_1", 3, earlier, "10.0.0.1", {earlier.date(): 3},
                                    {"10.0.0.2": [earlier, 3]})])  # a retried, older batch
    record = await store.get_token("tok_1")
    assert (record.usage_count, record.last_used_at, record.last_used_ip) == (5, later,
                                                                             "10.0.0.2")
    assert await store.recent_ips("tok_1") == [("10.0.0.2", later, 5)]
    assert sum(n for _, n in await store.daily_usage("tok_1", earlier.date())) == 5


async def test_usage_and_its_events_are_written_together_and_an_empty_batch_is_harmless(store):
    await insert(store, token(1))
    await store.record_usage([])
    await store.record_usage([], [event("auth_failed", details={"count": 3, "reason": "x"})])
    failed = await store.list_events(EventFilter(type="auth_failed"), 10)
    assert [e.details for e in failed] == [{"count": 3, "reason": "x"}]


async def test_daily_usage_starts_at_since_oldest_first(store):
    await insert(store, token(1))
    days = [NOW - timedelta(days=d) for d in (3, 2, 1, 0)]
    await store.record_usage([Usage("tok_1", 4, NOW, None, {d.date(): i + 1
                                                            for i, d in enumerate(days)})])
    assert await store.daily_usage("tok_1", days[1].date()) == [
        (days[1].date(), 2), (days[2].date(), 3), (days[3].date(), 4)]


async def test_recent_ips_are_newest_first_then_by_address_and_bounded(store):
    await insert(store, token(1))
    seen = {"10.0.0.3": [NOW, 1], "10.0.0.1": [NOW, 1],
            "10.0.0.2": [NOW - timedelta(hours=1), 1], "::1": [NOW - timedelta(hours=2), 1]}
    await store.record_usage([Usage("tok_1", 4, NOW, "10.0.0.3", {}, seen)])
    assert [ip for ip, _, _ in await store.recent_ips("tok_1", 3)] == [
        "10.0.0.1", "10.0.0.3", "10.0.0.2"]
    assert len(await store.recent_ips("tok_1", 10)) == 4


# --- pages -------------------------------------------------------------------------------------


async def test_token_pages_are_newest_first_and_before_seq_is_exclusive(store):
    await insert(store, *(token(n) for n in range(5)))
    everything = await store.list_tokens(TokenFilter(), NOW, 10)
    assert [r.id for r in everything] == [f"tok_{n}" for n in (4, 3, 2, 1, 0)]
    seqs = [r.seq for r in everything]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == 5
    assert [r.id for r in await store.list_tokens(TokenFilter(), NOW, 2, seqs[1])] == [
        "tok_2", "tok_1"]
    assert await store.list_tokens(TokenFilter(), NOW, 10, seqs[-1]) == []  # past the oldest
    assert await store.list_tokens(TokenFilter(), NOW, 10, 0) == []
    assert len(await store.list_tokens(TokenFilter(), NOW, 10, 2**63 - 1)) == 5  # the cap
    await store.delete_token("tok_3", event())
    assert [r.id for r in await store.list_tokens(TokenFilter(), NOW, 10, seqs[1])] == [
        "tok_2", "tok_1", "tok_0"]  # a cursor whose row is gone still pages on


async def test_event_pages_filter_by_each_field_and_before_id_is_exclusive(store):
    await store.insert_events([])  # nothing to write: no transaction, no error
    await store.insert_events([
        event("a", at=NOW - timedelta(hours=2), token_id="tok_1", subject="alice",
              details={"n": 1}),
        event("b", at=NOW - timedelta(hours=1), token_id="tok_2", subject="bob",
              ip="10.0.0.1", user_agent="curl/8"),
        event("a", at=NOW, token_id="tok_2", subject="bob"),
    ])
    every = await store.list_events(EventFilter(), 10)
    ids = [e.id for e in every]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 3
    assert [e.type for e in every] == ["a", "b", "a"]
    assert every[2].details == {"n": 1} and every[2].at == NOW - timedelta(hours=2)
    assert (every[1].ip, every[1].user_agent) == ("10.0.0.1", "curl/8")
    assert len(await store.list_events(EventFilter(type="a"), 10)) == 2
    assert len(await store.list_events(EventFilter(subject="bob", type="a"), 10)) == 1
    assert len(await store.list_events(EventFilter(token_id="tok_2"), 10)) == 2
    since = await store.list_events(EventFilter(since=NOW - timedelta(hours=1)), 10)
    assert [e.type for e in since] == ["a", "b"]  # since is inclusive
    assert [e.id for e in await store.list_events(EventFilter(), 10, ids[0])] == ids[1:]
    assert await store.list_events(EventFilter(), 10, ids[-1]) == []
    assert len(await store.list_events(EventFilter(), 1)) == 1
